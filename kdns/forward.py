"""Upstream forwarding: send a query to an upstream server over UDP (TCP when asked or truncated)."""

from __future__ import annotations

import asyncio
import secrets
import struct

DEFAULT_TIMEOUT = 2.0


class UpstreamError(Exception):
    pass


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, want_id: int):
        self.want_id = want_id
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        # ignore anything that is not the answer to our ID (spoofing / stray packets)
        if len(data) >= 12 and struct.unpack_from("!H", data)[0] == self.want_id and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError(str(exc)))

    def connection_lost(self, exc) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError("socket closed"))


class Upstream:
    """One upstream address. `exchange` returns the upstream's answer with the caller's ID restored."""

    def __init__(self, host: str, port: int = 53, timeout: float = DEFAULT_TIMEOUT):
        self.host = host
        self.port = port
        self.timeout = timeout

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def exchange(self, packet: bytes, tcp: bool = False) -> bytes:
        orig_id = packet[:2]
        qid = secrets.randbelow(65536)
        out = struct.pack("!H", qid) + packet[2:]
        try:
            if tcp:
                reply = await asyncio.wait_for(self._tcp(out), self.timeout)
            else:
                reply = await asyncio.wait_for(self._udp(out, qid), self.timeout)
                if len(reply) >= 4 and reply[2] & 0x02:  # TC: retry over TCP
                    reply = await asyncio.wait_for(self._tcp(out), self.timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(f"upstream {self} timed out after {self.timeout}s") from None
        except OSError as exc:
            raise UpstreamError(f"upstream {self}: {exc}") from None
        if len(reply) < 12 or reply[:2] != struct.pack("!H", qid):
            raise UpstreamError(f"upstream {self} sent a malformed reply")
        return orig_id + reply[2:]

    async def _udp(self, packet: bytes, qid: int) -> bytes:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _OneShot(qid), remote_addr=(self.host, self.port))
        try:
            transport.sendto(packet)
            return await proto.future
        finally:
            transport.close()

    async def _tcp(self, packet: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise UpstreamError(f"upstream {self} closed the TCP connection early") from None
        finally:
            writer.close()


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:53`, `::1` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port

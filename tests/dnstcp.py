"""DNS-over-TCP framing for tests: every message behind a two-byte length (RFC 1035 4.2.2, RFC 7766)."""

from __future__ import annotations

import socket
import struct


def frame(msg: bytes) -> bytes:
    """One message with its length prefix."""
    return struct.pack("!H", len(msg)) + msg


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes from a stream socket; EOFError naming how far it got if the peer closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> bytes:
    """The next length-prefixed message; EOFError if the connection ends before it is complete."""
    return recv_exact(sock, struct.unpack("!H", recv_exact(sock, 2))[0])


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete length-prefixed messages at the start of buf, and the incomplete rest."""
    frames, pos = [], 0
    while pos + 2 <= len(buf):
        size = struct.unpack_from("!H", buf, pos)[0]
        if pos + 2 + size > len(buf):
            break
        frames.append(buf[pos + 2:pos + 2 + size])
        pos += 2 + size
    return frames, buf[pos:]

"""The `hosts` plugin: A/AAAA (and PTR) from an /etc/hosts-style file plus inline Corefile entries.

The file is re-read when it changes (checked every `reload` seconds); a missing file leaves the
inline entries served. A name not in hosts is NXDOMAIN unless `fallthrough` covers it; a name
present with only the other address family is NODATA.
"""

from __future__ import annotations

import ipaddress
import os

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSLabel

from .config import HostsConfig, in_zone
from .log import Logger
from .resolver import Answer


class Hosts:
    def __init__(self, config: HostsConfig, log: Logger):
        self.config = config
        self.log = log
        self.names: dict[str, list[str]] = {}
        self.reverse: dict[str, list[str]] = {}
        self._signature = None
        self.generation = 0
        self.reload(force=True)

    def covers(self, name: str) -> bool:
        return any(in_zone(name, z) for z in self.config.zones)

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed. Returns True when the served data changed."""
        path = self.config.path
        sig = None
        if path:
            try:
                st = os.stat(path)
                sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                sig = None
        if not force and sig == self._signature:
            return False
        self._signature = sig
        entries = list(self.config.entries)
        if path and sig is not None:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    entries.extend(self._parse(fh.read(), path))
            except OSError as exc:
                self.log.error("hosts_unreadable", file=path, error=exc.strerror)
        elif path and path != "/etc/hosts":
            self.log.warning("hosts_missing", file=path, serving="inline entries only")
        names: dict[str, list[str]] = {}
        reverse: dict[str, list[str]] = {}
        for ip, hostnames in entries:
            for name in hostnames:
                if ip not in names.setdefault(name, []):
                    names[name].append(ip)
                if name not in reverse.setdefault(ip, []):
                    reverse[ip].append(name)
        changed = (names, reverse) != (self.names, self.reverse)
        self.names, self.reverse = names, reverse
        if changed:
            self.generation += 1
            self.log.info("hosts_loaded", file=path or "-", names=len(names))
        return changed

    def _parse(self, text: str, path: str) -> list[tuple[str, list[str]]]:
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            try:
                ip = ipaddress.ip_address(parts[0].split("%")[0]).compressed
            except ValueError:
                self.log.warning("hosts_bad_line", file=path, line=lineno, reason=f"not an IP address: {parts[0]!r}")
                continue
            if len(parts) < 2:
                self.log.warning("hosts_bad_line", file=path, line=lineno, reason="no host names")
                continue
            out.append((ip, [p.lower().rstrip(".") for p in parts[1:]]))
        return out

    def lookup(self, name: str, qtype: int) -> Answer | None:
        """An Answer, or None when the name is not ours and fallthrough lets the next plugin try."""
        ttl = self.config.ttl
        owner = DNSLabel(name + ".")
        ips = self.names.get(name)
        ans = Answer(cacheable=False)
        if ips is not None:
            for ip in ips:
                if ":" in ip and qtype in (QTYPE.AAAA, QTYPE.ANY):
                    ans.answer.append(RR(owner, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)))
                elif ":" not in ip and qtype in (QTYPE.A, QTYPE.ANY):
                    ans.answer.append(RR(owner, QTYPE.A, ttl=ttl, rdata=A(ip)))
            return ans  # NODATA when only the other family exists
        if not self.config.no_reverse and name.endswith((".in-addr.arpa", ".ip6.arpa")):
            ip = _reverse_ip(name)
            if ip is not None and ip in self.reverse:
                if qtype in (QTYPE.PTR, QTYPE.ANY):
                    for host in self.reverse[ip]:
                        ans.answer.append(RR(owner, QTYPE.PTR, ttl=ttl, rdata=PTR(DNSLabel(host + "."))))
                return ans
        fall = self.config.fallthrough
        if fall is not None and (not fall or any(in_zone(name, z) for z in fall)):
            return None
        ans.rcode = RCODE.NXDOMAIN
        return ans


def _reverse_ip(name: str) -> str | None:
    labels = name.split(".")
    try:
        if name.endswith(".in-addr.arpa") and len(labels) == 6:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if name.endswith(".ip6.arpa") and len(labels) == 34:
            return ipaddress.IPv6Address(int("".join(reversed(labels[:32])), 16)).compressed
    except ValueError:
        return None
    return None

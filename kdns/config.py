"""Settings: what a kdns process serves, built from a Corefile (CoreDNS syntax) or from CLI flags.

Each supported directive is validated here into a typed dataclass; anything unknown or malformed
is a CorefileError naming file:line:column. Nothing is silently ignored: an option kdns accepts
but that has no effect in its design produces a warning in `Settings.warnings`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import plugins as plugin_registry
from .corefile import CorefileError, Directive, Token, parse
from .corefile import digest as corefile_digest
from .plugins._common import integer as _int
from .plugins._common import nargs as _nargs
from .selectors import LabelSelector, SelectorError, parse_selector

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"


# ------------------------------------------------------------------------------ typed settings


@dataclass
class KubernetesConfig:
    zones: list[str]
    ttl: int = 5
    pods: str = "disabled"
    fallthrough: list[str] | None = None  # None: off; []: every zone of the plugin
    namespaces: frozenset | None = None
    labels: LabelSelector | None = None
    namespace_labels: LabelSelector | None = None
    endpoint_pod_names: bool = False
    noendpoints: bool = False
    ignore_empty_service: bool = False
    zonal: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    endpoint: str | None = None
    tls: tuple[str, str, str] | None = None
    manifests: list[str] = field(default_factory=list)

    def source_key(self) -> tuple:
        """What decides the source: unchanged across a reload -> the running source is kept."""
        return (tuple(self.manifests), self.kubeconfig, self.context, self.endpoint, self.tls,
                self.pods == "verified", self.noendpoints, self.namespaces,
                self.labels.text if self.labels else None,
                self.namespace_labels.text if self.namespace_labels else None, self.endpoint_pod_names)


@dataclass
class ForwardConfig:
    from_zone: str
    to: list[tuple[str, int]]
    to_text: list[str]
    except_zones: list[str] = field(default_factory=list)
    policy: str = "random"
    max_concurrent: int | None = None
    force_tcp: bool = False
    prefer_udp: bool = False
    health_check: float = 0.5
    max_fails: int = 2
    timeout: float = 2.0  # per attempt (CoreDNS read_timeout)
    expire: float = 10.0  # a UDP socket to an upstream takes new queries this long, then a fresh one does


@dataclass
class CacheConfig:
    zones: list[str]
    success_capacity: int = 9984
    success_ttl: int = 3600
    success_minttl: int = 5
    denial_capacity: int = 9984
    denial_ttl: int = 1800
    denial_minttl: int = 5
    servfail_ttl: float = 5.0
    disable_success: list[str] = field(default_factory=list)
    disable_denial: list[str] = field(default_factory=list)
    keepttl: bool = False


@dataclass
class HostsConfig:
    zones: list[str]
    path: str | None = "/etc/hosts"
    entries: list[tuple[str, list[str]]] = field(default_factory=list)  # (ip, names)
    ttl: int = 3600
    no_reverse: bool = False
    reload: float = 5.0
    fallthrough: list[str] | None = None


@dataclass
class AutopathConfig:
    zones: list[str]
    source: str = "@kubernetes"  # or a resolv.conf path


@dataclass
class AclRule:
    action: str  # allow | block | filter | drop
    qtypes: frozenset | None  # None: every type
    networks: tuple | None  # ip_network objects; None: every source


@dataclass
class AclConfig:
    zones: list[str]
    rules: list[AclRule] = field(default_factory=list)

    def verdict(self, name: str, qtype: int, client_ip: str | None) -> str:
        """The first matching rule's action, or "allow" (CoreDNS's acl semantics)."""
        if not any(in_zone(name, z) for z in self.zones):
            return "allow"
        addr = None
        for rule in self.rules:
            if rule.qtypes is not None and qtype not in rule.qtypes:
                continue
            if rule.networks is not None:
                if client_ip is None:
                    continue
                if addr is None:
                    try:
                        addr = ipaddress.ip_address(client_ip.split("%")[0])
                    except ValueError:
                        continue
                    if addr.version == 6 and addr.ipv4_mapped is not None:
                        addr = addr.ipv4_mapped
                if not any(addr in net for net in rule.networks if net.version == addr.version):
                    continue
            return rule.action
        return "allow"


@dataclass
class LogConfig:
    classes: set = field(default_factory=lambda: {"all"})


@dataclass
class BlockConfig:
    """One server block: the zones it serves on one port, and its plugins."""

    zones: list[str]
    port: int
    kubernetes: KubernetesConfig | None = None
    forward: ForwardConfig | None = None
    cache: CacheConfig | None = None
    hosts: HostsConfig | None = None
    autopath: AutopathConfig | None = None
    loadbalance: bool = False
    log: LogConfig | None = None
    errors: bool = False
    loop: bool = False
    acl: AclConfig | None = None
    plugins: dict[str, Any] = field(default_factory=dict)  # directives of kdns/plugins/: name -> settings
    line: int = 0
    path: str = ""  # the file the block is written in (an imported file names itself)

    @property
    def name(self) -> str:
        """CoreDNS's `server` metric label: dns://:53."""
        return f"dns://:{self.port}"


@dataclass
class Settings:
    blocks: list[BlockConfig]
    health: str | None = None
    lameduck: float = 0.0
    ready: str | None = None
    prometheus: str | None = None
    reload: tuple[float, float] | None = None  # (interval, jitter)
    path: str = ""
    digest: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return sorted({b.port for b in self.blocks})

    @property
    def kubernetes(self) -> KubernetesConfig | None:
        for block in self.blocks:
            if block.kubernetes is not None:
                return block.kubernetes
        return None


# ------------------------------------------------------------------------------ value parsing


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Go duration (`5s`, `1m30s`, `500ms`) -> seconds."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"not a duration (such as 5s, 1m, 500ms): {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(text))


def normalize_zone(text: str) -> str:
    zone = text.strip().lower()
    if "://" in zone:
        zone = zone.split("://", 1)[1]
    zone = zone.rstrip(".")
    return zone  # "" is the root


def in_zone(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


def zone_matcher(zones) -> Callable[[str], bool]:
    """`lambda name: any(in_zone(name, z) for z in zones)`, without the loop (zones taken now)."""
    zones = list(zones)
    if "" in zones:
        return lambda name: True
    exact = frozenset(zones)
    suffixes = tuple("." + z for z in zones)
    return lambda name: name in exact or name.endswith(suffixes)


def parse_key(tok: Token, path: str, default_port: int = 53) -> tuple[str, int]:
    text = tok.text
    scheme = "dns"
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme != "dns":
            raise tok.error(f"transport {scheme}:// is not supported (only dns://)")
    port = default_port
    if text.startswith("[") or text.count(":") == 1:
        host, _, port_text = text.rpartition(":")
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 <= int(port_text) < 65536:
            raise tok.error(f"bad port in server block key {tok.text!r}")
        port, text = int(port_text), host
    zone = normalize_zone(text or ".")
    if "/" in zone:
        raise tok.error(f"CIDR server block keys are not supported: {tok.text!r}")
    return zone, port


def _duration(d: Directive, tok: Token, what: str) -> float:
    try:
        return parse_duration(tok.text)
    except ValueError as exc:
        raise d.error(f"{d.name}: {what}: {exc}", tok) from None


def _no_block(d: Directive) -> None:
    if d.has_block and d.block:
        raise d.error(f"{d.name} takes no options block")


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("dns://"):
        text = text[len("dns://"):]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _address(d: Directive, tok: Token) -> str:
    """`:8080`, `127.0.0.1:8181`, `[::1]:9153` -> normalised HOST:PORT."""
    text = tok.text
    try:
        host, port = _hostport(text, -1)
        if port < 0 or port > 65535:
            raise ValueError
    except ValueError:
        raise d.error(f"{d.name}: expected an address like :8080 or 127.0.0.1:8080, got {text!r}", tok) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_resolv_conf(path: str, limit: int = 1 << 16) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) of a resolv.conf. OSError for anything that is not a regular,
    readable text file of sane size."""
    if "\0" in path:
        raise OSError(22, "path contains a NUL byte")
    if not os.path.isfile(path):
        raise OSError(2, "not a regular file")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(27, f"larger than {limit} bytes")
    servers, search = [], []
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            servers.append(parts[1].split("%")[0])
        elif parts[0] in ("search", "domain"):
            search = [normalize_zone(s) for s in parts[1:]]
    return servers, search


# ------------------------------------------------------------------------------ directives


def _kubernetes(d: Directive, block_zones: list[str], warnings: list[str]) -> KubernetesConfig:
    zones = [normalize_zone(t.text) for t in d.args] or list(block_zones)
    for tok, zone in zip(d.args, zones):
        if not any(in_zone(zone, bz) for bz in block_zones):
            raise d.error(f"kubernetes: zone {tok.text!r} is not inside the server block's zones", tok)
    if all(z.endswith(("in-addr.arpa", "ip6.arpa")) for z in zones if z):
        raise d.error("kubernetes: at least one forward zone (such as cluster.local) is required")
    k = KubernetesConfig(zones=zones)
    for opt in d.block:
        vals = opt.args
        if opt.name == "ttl":
            _nargs(opt, 1, 1, "ttl SECONDS")
            k.ttl = _int(opt, vals[0], 0, 3600, "ttl")
        elif opt.name == "pods":
            _nargs(opt, 1, 1, "pods disabled|insecure|verified")
            if vals[0].text not in ("disabled", "insecure", "verified"):
                raise opt.error(f"pods: expected disabled, insecure or verified, got {vals[0].text!r}", vals[0])
            k.pods = vals[0].text
        elif opt.name == "fallthrough":
            k.fallthrough = [normalize_zone(t.text) for t in vals]
        elif opt.name == "namespaces":
            _nargs(opt, 1, None, "namespaces NAMESPACE...")
            k.namespaces = frozenset(t.text for t in vals)
        elif opt.name in ("labels", "namespace_labels"):
            _nargs(opt, 1, None, f"{opt.name} EXPRESSION")
            try:
                selector = parse_selector(" ".join(t.text for t in vals))
            except SelectorError as exc:
                raise opt.error(f"{opt.name}: {exc}", vals[0]) from None
            setattr(k, opt.name, selector)
        elif opt.name == "endpoint_pod_names":
            _nargs(opt, 0, 0, "endpoint_pod_names")
            k.endpoint_pod_names = True
        elif opt.name == "noendpoints":
            _nargs(opt, 0, 0, "noendpoints")
            k.noendpoints = True
        elif opt.name == "zonal":
            _nargs(opt, 0, 0, "zonal")
            k.zonal = True
        elif opt.name == "ignore":
            _nargs(opt, 1, 1, "ignore empty_service")
            if vals[0].text != "empty_service":
                raise opt.error(f"ignore: only empty_service is supported, got {vals[0].text!r}", vals[0])
            k.ignore_empty_service = True
        elif opt.name == "kubeconfig":
            _nargs(opt, 1, 2, "kubeconfig KUBECONFIG [CONTEXT]")
            k.kubeconfig = vals[0].text
            k.context = vals[1].text if len(vals) > 1 else None
        elif opt.name == "endpoint":
            _nargs(opt, 1, 1, "endpoint URL")
            if not re.match(r"^https?://", vals[0].text):
                raise opt.error(f"endpoint: expected an http(s) URL, got {vals[0].text!r}", vals[0])
            k.endpoint = vals[0].text
        elif opt.name == "tls":
            _nargs(opt, 3, 3, "tls CERT KEY CACERT")
            k.tls = (vals[0].text, vals[1].text, vals[2].text)
        elif opt.name == "manifests":
            _nargs(opt, 1, None, "manifests PATH...")
            k.manifests.extend(t.text for t in vals)
        elif opt.name in ("startup_timeout",):
            _nargs(opt, 1, 1, "startup_timeout DURATION")
            _duration(opt, vals[0], "startup_timeout")
            warnings.append(f"{opt.path}:{opt.line}:{opt.col}: kubernetes: startup_timeout has no effect in kdns: "
                            "it serves at once and answers SERVFAIL (never NXDOMAIN) for unknown names until synced")
        else:
            raise opt.error(f"kubernetes: unknown or unsupported option {opt.name!r} (kdns supports: endpoint, tls, "
                            "kubeconfig, namespaces, labels, namespace_labels, pods, endpoint_pod_names, ttl, "
                            "noendpoints, zonal, fallthrough, ignore empty_service, manifests)")
    if k.manifests and (k.kubeconfig or k.endpoint or k.tls):
        raise d.error("kubernetes: manifests cannot be combined with kubeconfig/endpoint/tls")
    return k


def _forward(d: Directive, resolv_conf: str, warnings: list[str]) -> ForwardConfig:
    _nargs(d, 2, None, "forward FROM TO...")
    from_zone = normalize_zone(d.args[0].text)
    to: list[tuple[str, int]] = []
    to_text: list[str] = []
    for tok in d.args[1:]:
        text = tok.text
        if text.startswith("/") or os.path.isfile(text):
            if text == DEFAULT_RESOLV_CONF:
                text = resolv_conf  # --resolv-conf: where "the host's resolv.conf" really is
            try:
                servers, _ = read_resolv_conf(text)
            except OSError as exc:
                raise d.error(f"forward: cannot read {text!r}: {exc.strerror}", tok) from None
            if not servers:
                raise d.error(f"forward: {text} lists no nameserver", tok)
            for server in servers:
                to.append((server, 53))
                to_text.append(f"{server}:53")
            continue
        if text.startswith(("tls://", "https://", "grpc://", "quic://")):
            raise d.error(f"forward: {text.split('://')[0]}:// upstreams are not supported (only dns://)", tok)
        try:
            host, port = _hostport(text, 53)
            ipaddress.ip_address(host)
        except ValueError:
            raise d.error(f"forward: expected an IP address[:port] or a resolv.conf path, got {text!r}", tok) from None
        to.append((host, port))
        to_text.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if len(to) > 15:
        raise d.error(f"forward: at most 15 upstreams, got {len(to)}")
    f = ForwardConfig(from_zone=from_zone, to=to, to_text=to_text)
    for opt in d.block:
        vals = opt.args
        if opt.name == "except":
            _nargs(opt, 1, None, "except IGNORED_NAMES...")
            f.except_zones.extend(normalize_zone(t.text) for t in vals)
        elif opt.name == "policy":
            _nargs(opt, 1, 1, "policy random|round_robin|sequential")
            if vals[0].text not in ("random", "round_robin", "sequential"):
                raise opt.error(f"policy: expected random, round_robin or sequential, got {vals[0].text!r}", vals[0])
            f.policy = vals[0].text
        elif opt.name == "max_concurrent":
            _nargs(opt, 1, 1, "max_concurrent MAX")
            f.max_concurrent = _int(opt, vals[0], 1, 1_000_000, "max_concurrent")
        elif opt.name == "force_tcp":
            _nargs(opt, 0, 0, "force_tcp")
            f.force_tcp = True
        elif opt.name == "prefer_udp":
            _nargs(opt, 0, 0, "prefer_udp")
            f.prefer_udp = True
        elif opt.name == "health_check":
            _nargs(opt, 1, None, "health_check DURATION [no_rec] [domain FQDN]")
            f.health_check = _duration(opt, vals[0], "health_check")
        elif opt.name == "max_fails":
            _nargs(opt, 1, 1, "max_fails INTEGER")
            f.max_fails = _int(opt, vals[0], 0, 1000, "max_fails")
        elif opt.name in ("read_timeout", "timeout"):
            _nargs(opt, 1, 1, f"{opt.name} DURATION")
            f.timeout = _duration(opt, vals[0], opt.name)
        elif opt.name == "expire":
            _nargs(opt, 1, 1, "expire DURATION")
            f.expire = _duration(opt, vals[0], "expire")
        elif opt.name == "max_idle_conns":
            _nargs(opt, 1, 1, "max_idle_conns VALUE")
            warnings.append(f"{opt.path}:{opt.line}:{opt.col}: forward: max_idle_conns has no effect in kdns "
                            "(UDP queries to an upstream share one socket; TCP connections are not pooled)")
        else:
            raise opt.error(f"forward: unknown or unsupported option {opt.name!r} (kdns supports: except, policy, "
                            "max_concurrent, force_tcp, prefer_udp, health_check, max_fails, read_timeout, "
                            "expire, max_idle_conns)")
    if f.force_tcp and f.prefer_udp:
        raise d.error("forward: force_tcp and prefer_udp are mutually exclusive")
    return f


def _cache(d: Directive, block_zones: list[str], warnings: list[str]) -> CacheConfig:
    args = list(d.args)
    c = CacheConfig(zones=list(block_zones))
    if args and args[0].text.isdigit():
        ttl = _int(d, args.pop(0), 0, 86400 * 7, "TTL")
        c.success_ttl = c.denial_ttl = ttl
    if args:
        c.zones = [normalize_zone(t.text) for t in args]
    for opt in d.block:
        vals = opt.args
        if opt.name in ("success", "denial"):
            _nargs(opt, 1, 3, f"{opt.name} CAPACITY [TTL] [MINTTL]")
            setattr(c, f"{opt.name}_capacity", _int(opt, vals[0], 1, 10_000_000, "CAPACITY"))
            if len(vals) > 1:
                setattr(c, f"{opt.name}_ttl", _int(opt, vals[1], 0, 86400 * 7, "TTL"))
            if len(vals) > 2:
                setattr(c, f"{opt.name}_minttl", _int(opt, vals[2], 0, 86400, "MINTTL"))
        elif opt.name == "disable":
            _nargs(opt, 1, None, "disable success|denial [ZONES...]")
            kind = vals[0].text
            if kind not in ("success", "denial"):
                raise opt.error(f"disable: expected success or denial, got {kind!r}", vals[0])
            zones = [normalize_zone(t.text) for t in vals[1:]] or list(c.zones)
            getattr(c, f"disable_{kind}").extend(zones)
        elif opt.name == "servfail":
            _nargs(opt, 1, 1, "servfail DURATION")
            c.servfail_ttl = _duration(opt, vals[0], "servfail")
            if c.servfail_ttl > 300:
                raise opt.error("servfail: at most 5m", vals[0])
        elif opt.name == "keepttl":
            _nargs(opt, 0, 0, "keepttl")
            c.keepttl = True
        else:
            raise opt.error(f"cache: unknown or unsupported option {opt.name!r} (kdns supports: success, denial, "
                            "disable, servfail, keepttl; kdns rejects prefetch and serve_stale)")
    return c


def _hosts(d: Directive, block_zones: list[str]) -> HostsConfig:
    h = HostsConfig(zones=list(block_zones))
    if d.args:
        h.path = d.args[0].text
        if len(d.args) > 1:
            h.zones = [normalize_zone(t.text) for t in d.args[1:]]
    for opt in d.block:
        vals = opt.args
        if opt.name == "ttl":
            _nargs(opt, 1, 1, "ttl SECONDS")
            h.ttl = _int(opt, vals[0], 0, 86400 * 7, "ttl")
        elif opt.name == "no_reverse":
            h.no_reverse = True
        elif opt.name == "reload":
            _nargs(opt, 1, 1, "reload DURATION")
            h.reload = _duration(opt, vals[0], "reload")
        elif opt.name == "fallthrough":
            h.fallthrough = [normalize_zone(t.text) for t in vals]
        else:
            try:
                ip = ipaddress.ip_address(opt.name)
            except ValueError:
                raise opt.error(f"hosts: expected an inline entry 'IP NAME...' or ttl, no_reverse, reload, "
                                f"fallthrough; got {opt.name!r}") from None
            if not vals:
                raise opt.error(f"hosts: entry {opt.name} has no names")
            h.entries.append((ip.compressed, [normalize_zone(t.text) for t in vals]))
    return h


def _autopath(d: Directive, block_zones: list[str]) -> AutopathConfig:
    _nargs(d, 1, None, "autopath [ZONE...] RESOLV-CONF|@kubernetes")
    zones = [normalize_zone(t.text) for t in d.args[:-1]] or list(block_zones)
    return AutopathConfig(zones=zones, source=d.args[-1].text)


def _acl(d: Directive, block_zones: list[str]) -> AclConfig:
    from dnslib import QTYPE, DNSError
    acl = AclConfig(zones=[normalize_zone(t.text) for t in d.args] or list(block_zones))
    if not d.block:
        raise d.error("acl: needs a block of rules: allow|block|filter|drop [type QTYPE...] [net SOURCE...]")
    for opt in d.block:
        if opt.name not in ("allow", "block", "filter", "drop"):
            raise opt.error(f"acl: unknown action {opt.name!r} (expected allow, block, filter or drop)")
        qtypes: set | None = None
        nets: list | None = None
        current = None
        for tok in opt.args:
            if tok.text in ("type", "net"):
                current = tok.text
                if current == "type" and qtypes is None:
                    qtypes = set()
                if current == "net" and nets is None:
                    nets = []
                continue
            if current is None:
                raise opt.error(f"acl: expected 'type' or 'net' before {tok.text!r}", tok)
            if tok.text == "*":
                if current == "type":
                    qtypes = None
                    current = "type*"
                else:
                    nets = None
                    current = "net*"
                continue
            if current == "type":
                try:
                    qtypes.add(int(getattr(QTYPE, tok.text.upper())))
                except (AttributeError, DNSError):
                    raise opt.error(f"acl: unknown query type {tok.text!r}", tok) from None
            elif current == "net":
                try:
                    nets.append(ipaddress.ip_network(tok.text, strict=False))
                except ValueError:
                    raise opt.error(f"acl: not a network (CIDR or address): {tok.text!r}", tok) from None
            else:
                raise opt.error(f"acl: nothing may follow '*', got {tok.text!r}", tok)
        acl.rules.append(AclRule(opt.name, frozenset(qtypes) if qtypes is not None else None,
                                 tuple(nets) if nets is not None else None))
    return acl


def _log(d: Directive) -> LogConfig:
    cfg = LogConfig()
    for opt in d.block:
        if opt.name != "class":
            raise opt.error(f"log: unknown option {opt.name!r} (kdns supports: class)")
        _nargs(opt, 1, None, "class success|denial|error|all...")
        classes = {t.text for t in opt.args}
        bad = classes - {"success", "denial", "error", "all"}
        if bad:
            raise opt.error(f"log: unknown class {sorted(bad)[0]!r}")
        cfg.classes = classes
    if d.args:
        raise d.error("log: names and custom formats are not supported; kdns logs every query in CoreDNS's "
                      "common format (use the class option to filter)")
    return cfg


SUPPORTED = tuple(plugin_registry.names())


def settings_from_corefile(text: str, path: str = "Corefile", resolv_conf: str = DEFAULT_RESOLV_CONF,
                           default_port: int = 53) -> Settings:
    settings = Settings(blocks=[], path=path, digest=corefile_digest(text, path))
    blocks = parse(text, path, settings.warnings)
    seen_keys: dict[tuple[str, int], list[tuple[Token, frozenset]]] = {}
    kubernetes_seen: Directive | None = None
    for sb in blocks:
        keys = [(parse_key(tok, path, default_port), tok) for tok in sb.keys]
        ports = {port for (_, port), _ in keys}
        if len(ports) > 1:
            raise sb.keys[0].error("all keys of one server block must use the same port")
        block = BlockConfig(zones=[z for (z, _), _ in keys], port=ports.pop(), line=sb.line, path=sb.path)
        ctx = plugin_registry.SetupContext(block, settings, resolv_conf)
        once: dict[str, Directive] = {}
        for d in sorted(sb.directives, key=lambda d: d.name != "root"):  # root first: later paths use it
            if d.name in once and d.name not in ("log", "rewrite", "template"):
                raise d.error(f"{d.name} appears twice in this server block (first at line {once[d.name].line})")
            once[d.name] = d
            if d.name == "errors":
                _nargs(d, 0, 0, "errors")
                for opt in d.block:
                    if opt.name != "stacktrace":
                        raise opt.error(f"errors: unsupported option {opt.name!r} (kdns supports: stacktrace)")
                block.errors = True
            elif d.name == "health":
                _nargs(d, 0, 1, "health [ADDRESS]")
                address = _address(d, d.args[0]) if d.args else ":8080"
                lameduck = 0.0
                for opt in d.block:
                    if opt.name != "lameduck":
                        raise opt.error(f"health: unknown option {opt.name!r} (supported: lameduck)")
                    _nargs(opt, 1, 1, "lameduck DURATION")
                    lameduck = _duration(opt, opt.args[0], "lameduck")
                _global(settings, d, "health", address)
                settings.lameduck = max(settings.lameduck, lameduck)
            elif d.name == "ready":
                _nargs(d, 0, 1, "ready [ADDRESS]")
                _no_block(d)
                _global(settings, d, "ready", _address(d, d.args[0]) if d.args else ":8181")
            elif d.name == "prometheus":
                _nargs(d, 0, 1, "prometheus [ADDRESS]")
                _no_block(d)
                _global(settings, d, "prometheus", _address(d, d.args[0]) if d.args else "localhost:9153")
            elif d.name == "reload":
                _nargs(d, 0, 2, "reload [INTERVAL] [JITTER]")
                _no_block(d)
                interval = _duration(d, d.args[0], "interval") if d.args else 30.0
                jitter = _duration(d, d.args[1], "jitter") if len(d.args) > 1 else 15.0
                if interval < 2:
                    raise d.error("reload: the interval must be at least 2s", d.args[0])
                if jitter < 1 and len(d.args) > 1:
                    raise d.error("reload: the jitter must be at least 1s", d.args[1])
                if jitter > interval / 2:
                    jitter = interval / 2
                settings.reload = (interval, jitter)
            elif d.name == "kubernetes":
                block.kubernetes = _kubernetes(d, block.zones, settings.warnings)
                if kubernetes_seen is not None and \
                        block.kubernetes.source_key() != settings.kubernetes.source_key():
                    raise d.error(f"kdns follows one cluster: this kubernetes directive's source settings "
                                  f"differ from the one at line {kubernetes_seen.line}")
                kubernetes_seen = kubernetes_seen or d
            elif d.name == "forward":
                block.forward = _forward(d, resolv_conf, settings.warnings)
            elif d.name == "cache":
                block.cache = _cache(d, block.zones, settings.warnings)
            elif d.name == "hosts":
                block.hosts = _hosts(d, block.zones)
            elif d.name == "autopath":
                block.autopath = _autopath(d, block.zones)
            elif d.name == "loop":
                _nargs(d, 0, 0, "loop")
                _no_block(d)
                block.loop = True
            elif d.name == "loadbalance":
                _nargs(d, 0, 1, "loadbalance [round_robin]")
                if d.args and d.args[0].text != "round_robin":
                    raise d.error(f"loadbalance: only round_robin is supported, got {d.args[0].text!r}", d.args[0])
                block.loadbalance = True
            elif d.name == "log":
                block.log = _log(d)
            elif d.name == "acl":
                block.acl = _acl(d, block.zones)
            elif (module := plugin_registry.module(d.name)) is not None:
                block.plugins[d.name] = module.setup(d, ctx)
            else:
                raise d.error(f"unknown directive {d.name!r} (kdns supports: {', '.join(SUPPORTED)})")
        for name, plugin_settings in block.plugins.items():
            validate = getattr(plugin_registry.module(name), "validate", None)
            if validate is not None:
                validate(plugin_settings, block)
        root = block.plugins.get("root")
        if root is not None and block.hosts is not None and block.hosts.path and not os.path.isabs(block.hosts.path):
            block.hosts.path = os.path.join(root, block.hosts.path)
        _check_keys(seen_keys, keys, block)
        if block.autopath is not None and block.autopath.source == "@kubernetes" and block.kubernetes is None:
            raise once["autopath"].error("autopath @kubernetes needs a kubernetes directive in the same block")
        settings.blocks.append(block)
    _check_listener_ports(settings, blocks)
    return settings


def _check_keys(seen: dict, keys: list, block: BlockConfig) -> None:
    """A zone may be served twice on a port only by blocks bound to different addresses."""
    bind = block.plugins.get("bind")
    addresses = frozenset(bind.addresses) if bind is not None else frozenset()
    for (zone, port), tok in keys:
        for first, other in seen.get((zone, port), []):
            if not addresses or not other or addresses & other:
                raise tok.error(f"zone {zone or '.'} on port {port} is already served by the block at line "
                                f"{first.line}" + (" on the same address" if addresses and other else ""))
        seen.setdefault((zone, port), []).append((tok, addresses))


def _check_listener_ports(settings: Settings, blocks: list) -> None:
    """Two listeners on one port can never start: an error at the directive, as check-config shows it."""
    from .startup import listener_clash
    named = {d.name: d for sb in blocks for d in sb.directives if d.name in ("health", "ready", "prometheus")}
    listeners = [(f"dns://:{port}", "", port) for port in settings.ports]
    for name in ("health", "ready", "prometheus"):
        address = getattr(settings, name)
        if address is not None:
            host, port = _hostport(address, 0)
            listeners.append((name, host.strip("[]"), port))
    clash = listener_clash(listeners)
    if clash is not None:
        name, other, port = clash
        raise named[name].error(f"{name}: port {port} is also used by {other}; give each listener its own port")


def _global(settings: Settings, d: Directive, attr: str, address: str) -> None:
    current = getattr(settings, attr)
    if current is not None and current != address:
        raise d.error(f"{d.name}: already listening on {current} from another server block")
    setattr(settings, attr, address)


def load_corefile(path: str, resolv_conf: str = DEFAULT_RESOLV_CONF, default_port: int = 53) -> Settings:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise CorefileError(path, 0, 0, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CorefileError(path, exc.object[:exc.start].count(b"\n") + 1, 0, "not UTF-8 text") from None
    return settings_from_corefile(text, path, resolv_conf, default_port)

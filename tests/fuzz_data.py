"""Fuzz inputs for kdns's text inputs: Corefiles, YAML manifests, and the webhook's AdmissionReview
bodies, with the checks each parser must pass. Shared by tests/test_fuzz_{corefile,manifests,webhook}.py
(driven by hypothesis through `random.Random`) and perf/fuzz.py.

Every generator is `gen(rng) -> str | bytes`, bounded in size (at most a few hundred KiB).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import socket
import ssl
from typing import Any, Callable

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cluster.yaml")

# ------------------------------------------------------------------------------ shared: values and structure

WEIRD_STRINGS = [
    "", " ", "None", "null", "~", "true", "0", "-1", "65536", "10.96.0.1", "::1", "fd00::1", "10.96.0.1/16",
    "256.1.1.1", "1.2.3", "0x7f000001", "x" * 300, "x" * 5000, "a.b.c", "UPPER", "-leading", "trailing-",
    "kube-system", "default", "kubernetes.io/service-name", "ClusterIP", "None", "ExternalName", "Headless",
    "IPv4", "IPv6", "FQDN", "TCP", "UDP", "SCTP", "tcp", "ÄÖÜ", "ＡＢＣ", "\u202egnp.exe", "😀", "\u0000", "\t",
    "\n", "\r\n", "\\", "'", '"', "{", "}", "[", "]", "*", "&a", "!!python/object", "%", "@", "`", "\ufeff",
    "\u2028", "\x85", "١٢٣", "²", "½", "e\u0301", "..", "/", "..\\..", "${HOME}", "{$HOME}",
]
WEIRD_NUMBERS = [0, 1, -1, 53, 65535, 65536, 99999, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 30, -(2 ** 63),
                 0.5, 1e308, -0.0, float("inf"), float("-inf")]


def weird_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.35:
        return rng.choice(WEIRD_STRINGS)
    if r < 0.55:
        return rng.choice(WEIRD_NUMBERS)
    if r < 0.65:
        return rng.choice([None, True, False])
    if r < 0.75 or depth > 2:
        return rng.choice([[], {}, [None], {"": None}, {"a": 1}, [1, "2"]])
    if r < 0.85:
        return [weird_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(WEIRD_STRINGS): weird_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) into a JSON-like value, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += paths(value, prefix + (i,))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for part in path[:-1]:
        obj = obj[part]
    return obj


def mutate_structure(rng: random.Random, obj: Any, rounds: int | None = None) -> Any:
    """Wrong types at any field path, missing fields, unknown fields, huge numbers, weird unicode,
    lists where objects belong and the reverse, duplicated list items. Returns a mutated deep copy."""
    obj = copy.deepcopy(obj)
    for _ in range(rounds if rounds is not None else rng.randrange(1, 4)):
        candidates = [p for p in paths(obj) if p]
        if not candidates:
            return weird_value(rng)
        path = rng.choice(candidates)
        parent, last = _parent(obj, path), path[-1]
        op = rng.randrange(8)
        if op <= 2:
            parent[last] = weird_value(rng)
        elif op == 3:
            del parent[last]
        elif op == 4 and isinstance(parent, dict):
            parent[rng.choice(WEIRD_STRINGS + ["extra", "spec", "metadata", "kind"])] = weird_value(rng)
        elif op == 5:
            parent[last] = [parent[last]]  # a list where a value belongs
        elif op == 6 and isinstance(parent[last], list) and parent[last]:
            parent[last] = parent[last] * rng.randrange(2, 5)
        elif op == 7 and isinstance(parent[last], list) and parent[last]:
            parent[last] = parent[last][0]  # a value where a list belongs
        else:
            parent[last] = None
    return obj


def mutate_text(rng: random.Random, text: str, specials: list[str]) -> str:
    """Character and line level damage: flips, inserted specials, deleted/duplicated/indented lines, truncation."""
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        pos = rng.randrange(len(text) + 1)
        if op == 0:
            text = text[:pos] + rng.choice(specials) + text[pos:]
        elif op == 1 and text:
            text = text[:pos] + text[pos + rng.randrange(1, 20):]
        elif op == 2 and text:
            pos = min(pos, len(text) - 1)
            text = text[:pos] + chr(ord(text[pos]) ^ (1 << rng.randrange(7))) + text[pos + 1:]
        elif op in (3, 4, 5):
            lines = text.split("\n")
            i = rng.randrange(len(lines))
            if op == 3:
                del lines[i]
            elif op == 4:
                lines.insert(i, lines[rng.randrange(len(lines))])
            else:
                lines[i] = rng.choice([" ", "  ", "\t", "    "]) + lines[i]
            text = "\n".join(lines)
        else:
            text = text[:pos]
    return text


# ------------------------------------------------------------------------------ Corefile


def _kubeadm() -> str:
    try:
        from test_corefile import KUBEADM_BLOCK_CACHE
        return KUBEADM_BLOCK_CACHE
    except ImportError:  # pragma: no cover - running outside tests/
        return ".:53 {\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . /etc/resolv.conf\n}\n"


COREFILES = [
    _kubeadm(),
    _kubeadm().replace("    cache 30 {\n       disable success cluster.local\n       disable denial cluster.local\n"
                       "    }\n", "    cache 30\n"),
    """\
example.org:1053, example.net:1053 {
    forward . 10.1.1.1:5300 {
        policy sequential
    }
}
.:1053 {
    log {
        class denial error
    }
    kubernetes cluster.local {
        pods verified
        namespaces shop data
        labels app in (web,db),tier!=cache
        endpoint_pod_names
        fallthrough
        manifests examples/cluster.yaml
    }
    autopath @kubernetes
    hosts {
        10.0.0.1 a.corp.test b.corp.test
        ttl 60
        fallthrough
    }
    forward . 8.8.8.8 "8.8.4.4:53" [2001:db8::1]:53 {
        except example.com
        max_concurrent 100
        health_check 1s
        max_fails 3
        read_timeout 500ms
        force_tcp
    }
    cache 300 cluster.local {
        success 1000 60 5
        denial 500 30
        servfail 2s
        keepttl
    }
    acl cluster.local {
        block type AXFR IXFR net 10.0.0.0/8
        allow net *
    }
    prometheus 127.0.0.1:9153
    ready [::1]:8181
    health :8080 {
        lameduck 1m30s
    }
    reload 10s 2s
    loadbalance round_robin
    errors
    loop
}
""",
    r"""(snip) {
    errors
}
.:1053 {
    import snip
    bind 127.0.0.1 ::1 {
        except ::1
    }
    kubernetes cluster.local {
        zonal
    }
    k8s_external example.external {
        apex dns
        ttl 10
        headless
    }
    rewrite name exact a.example.org. kubernetes.default.svc.cluster.local.
    rewrite stop {
        name regex (.*)-(us-west-1)\.example\.org {1}.{2}.example.com
        answer name (.*)\.(us-west-1)\.example\.com {1}-{2}.example.org
        answer value (.*)\.example\.com {1}.example.org
    }
    rewrite continue ttl suffix .example.com 10-60
    rewrite rcode exact gone.example.com NXDOMAIN REFUSED
    rewrite cname exact a.example.com. b.example.com.
    rewrite type HINFO A
    rewrite class CH IN
    template IN A tpl.example {
        match ^ip-(?P<a>[0-9]+)[.]tpl[.]example[.]$
        answer "{{ .Name }} 60 IN A 10.0.0.{{ .Group.a }}"
        additional "x.tpl.example. 60 IN TXT \"{{ printf \"%s\" .Remote }}\""
        rcode NOERROR
        fallthrough
    }
    any
    minimal
    local
    nsid kdns
    bufsize 1232
    whoami
    debug
    chaos kdns-x "Author One"
}
""",
]

COREFILE_TOKENS = [
    "{", "}", "{ }", '"', '""', '"a b"', '"unterminated', "#", "# comment", "\\", ",", ".:53,", ".", ".:", ":53",
    ".:53", "dns://.:53", "tls://.:853", "https://.", "grpc://.", "[::1]:53", "[::1", "example.org:99999", ".:-1",
    ".:0", ".:65535", ".:²", ".:١٢", ".:" + "9" * 5000, "10.0.0.0/8:53", "cluster.local", "in-addr.arpa", "ip6.arpa",
    "kubernetes", "forward", "cache", "hosts", "autopath", "log", "errors", "health", "ready", "prometheus", "reload",
    "loadbalance", "loop", "acl", "frobnicate", "rewrite", "file", "multicluster", "zonal", "startup_timeout",
    "pods", "disabled", "insecure", "verified", "ttl", "fallthrough", "namespaces", "labels", "namespace_labels",
    "app=web", "app in (a,b)", "(", ")", "!x", "x notin ()", "endpoint_pod_names", "noendpoints", "ignore",
    "empty_service", "kubeconfig", "endpoint", "https://10.0.0.1:6443", "ftp://x", "tls", "manifests",
    "except", "policy", "random", "round_robin", "sequential", "fastest", "max_concurrent", "force_tcp",
    "prefer_udp", "health_check", "max_fails", "read_timeout", "timeout", "expire", "max_idle_conns",
    "success", "denial", "disable", "servfail", "keepttl", "prefetch", "serve_stale", "no_reverse", "class", "all",
    "error", "lameduck", "stacktrace", "consolidate", "allow", "block", "filter", "drop", "type", "net", "*",
    "A", "AAAA", "NOPE", "10.0.0.0/33", "0", "-1", "1", "30", "3600", "3601", "86400", "1000000000", "1e3", "0x10",
    "²", "١٢", "9" * 5000, "0.5", "5s", "1m30s", "500ms", "1h", "-5s", "5", "s", "1.5.5s", "5µs", "1d",
    "9" * 400 + "s", "1.2.3.4", "1.2.3.4:53", "1.2.3.4:99999", "1.2.3.4:", "1.2.3.4:abc", "[2001:db8::1]:53",
    "::1", "256.0.0.1", "localhost", ":8080", ":", "127.0.0.1:", "[::]:9153", "/etc/resolv.conf",
    "/nonexistent/resolv.conf", "/etc", "/dev/null", "/etc/\x00x", "/bin/sh", "/proc/self/status", "{$HOME}", "{$KDNS_FUZZ_SURELY_UNSET}",
    "{%HOME%}", "{$", "{$}", "ÄÖÜ", "😀", "\u202e", "\x00", "\x0b", "\x0c", "\u2028", "\x85", "\ufeff",
    "a" * 300, "@kubernetes",
]
COREFILE_SPECIALS = ["{", "}", '"', "#", "\\", "\n", "\r", "\t", " ", "\x00", "\u2028", "\x85", "\x0b", "\ufeff",
                     ",", ":", "$", "%", "\n}\n", "\n{\n"]


def corefile_token_soup(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randrange(1, 30)):
        lines.append(" " * rng.randrange(0, 8) + " ".join(rng.choice(COREFILE_TOKENS)
                                                          for _ in range(rng.randrange(0, 7))))
    return "\n".join(lines) + rng.choice(["", "\n"])


def corefile_token_mutation(rng: random.Random) -> str:
    """Replace, insert, delete or duplicate whole tokens of a real Corefile."""
    lines = [line.split(" ") for line in rng.choice(COREFILES).split("\n")]
    for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(lines))
        line = lines[i]
        j = rng.randrange(len(line) + 1)
        op = rng.randrange(5)
        if op == 0 and j < len(line):
            line[j] = rng.choice(COREFILE_TOKENS)
        elif op == 1:
            line.insert(j, rng.choice(COREFILE_TOKENS))
        elif op == 2 and j < len(line):
            del line[j]
        elif op == 3:
            lines.insert(i, list(rng.choice(lines)))
        else:
            lines.insert(i, [rng.choice(COREFILE_TOKENS) for _ in range(rng.randrange(1, 4))])
    return "\n".join(" ".join(line) for line in lines)


def corefile_text_mutation(rng: random.Random) -> str:
    return mutate_text(rng, rng.choice(COREFILES), COREFILE_SPECIALS)


COREFILE_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "token_soup": corefile_token_soup, "token_mutation": corefile_token_mutation,
    "text_mutation": corefile_text_mutation,
}


def check_corefile(text: str, resolv_conf: str) -> str | None:
    """settings_from_corefile returns Settings or raises CorefileError naming a line and column; never
    anything else. Returns why not (None if fine)."""
    from kdns.config import Settings, settings_from_corefile
    from kdns.corefile import CorefileError
    try:
        settings = settings_from_corefile(text, "Corefile", resolv_conf=resolv_conf)
    except CorefileError as exc:
        lines = len(text.splitlines()) + 1
        if not isinstance(exc.line, int) or not 0 <= exc.line <= lines:
            return f"CorefileError line {exc.line!r} is not a line of the file ({lines} lines): {exc}"
        if not isinstance(exc.col, int) or exc.col < 0:
            return f"CorefileError column {exc.col!r}: {exc}"
        if not exc.message or not str(exc).startswith(f"Corefile:{exc.line}:{exc.col}: "):
            return f"CorefileError without a file:line:col message: {exc!r}"
        settings = None
    except Exception as exc:  # noqa: BLE001 - that is what we are looking for
        return f"{type(exc).__name__} escaped settings_from_corefile (not a CorefileError): {exc!r}"[:600]
    if settings is None:
        return None
    if not isinstance(settings, Settings) or not settings.blocks:
        return f"settings_from_corefile returned {settings!r}"
    return None


# ------------------------------------------------------------------------------ manifests


def example_documents() -> list:
    with open(EXAMPLE, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


_DOCS: list | None = None


def _docs() -> list:
    global _DOCS
    if _DOCS is None:
        _DOCS = example_documents()
    return _DOCS


YAML_SPECIALS = [": ", "- ", "&a ", "*a ", "*undefined", "!!python/object/apply:os.system ['true'] ", "!!binary ",
                 "!!timestamp ", "!!set ", "!!str ", "!!int ", "!!float ", "!!map ", "!!seq ", "!custom ", "<<: *a\n",
                 "? ", "|", ">", "'", '"', "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "\t", "\ufeff",
                 "\x00", "\x85", "\u2028", "{", "}", "[", "]", "#", ",", "\n", "\r", "@", "`", "0x1F", "0o17",
                 "1_000", ".inf", ".nan", "~", "yes", "no", "on", "2001-12-14t21:59:43.10-05:00"]


def manifest_structure(rng: random.Random) -> str:
    """The example cluster with wrong types, missing and unknown fields at random field paths."""
    docs = _docs()
    chosen = [mutate_structure(rng, d) if rng.random() < 0.5 else d
              for d in rng.sample(docs, rng.randrange(1, min(6, len(docs)) + 1))]
    if rng.random() < 0.2:
        chosen = [{"apiVersion": "v1", "kind": rng.choice(["List", "ServiceList", "ConfigMapList"]), "items": chosen}]
    return yaml.safe_dump_all(chosen, allow_unicode=rng.random() < 0.5, sort_keys=False,
                              default_flow_style=rng.choice([None, False, True]))


def manifest_text(rng: random.Random) -> str:
    """YAML-level damage to a valid manifest (or the whole example file)."""
    base = manifest_structure(rng) if rng.random() < 0.5 else open(EXAMPLE, encoding="utf-8").read()
    return mutate_text(rng, base, YAML_SPECIALS)


SERVICE_HEAD = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\n"


def manifest_aliases(rng: random.Random) -> str:
    """Anchors and aliases: shared values, merge keys, undefined and self-referencing aliases, and
    alias bombs small enough for the suite (fan-out <= 9, depth <= 4: at most 6561 leaves)."""
    kind = rng.randrange(6)
    if kind == 0:  # "billion laughs", scaled down
        fan, depth = rng.randrange(2, 10), rng.randrange(1, 5)
        text = "x0: &a0 [" + ", ".join(["lol"] * fan) + "]\n"
        for i in range(1, depth + 1):
            text += f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]\n"
        field = rng.choice(["metadata: {name: *A}", "metadata: {name: s, labels: {a: *A}}",
                            "metadata: {name: s}\nspec: {clusterIP: *A}", "metadata: {name: s}\nspec: {ports: *A}",
                            "metadata: {name: s}\nspec: {type: *A}", "metadata: {name: s, namespace: *A}"])
        return text + "apiVersion: v1\nkind: Service\n" + field.replace("*A", f"*a{depth}") + "\n"
    if kind == 1:  # merge keys and shared port lists
        return ("base: &b {clusterIP: 10.96.9.9, ports: [{name: http, port: 80}]}\n---\n" + SERVICE_HEAD
                + "spec:\n  <<: *b\n  type: ClusterIP\n---\n" + SERVICE_HEAD.replace("name: s", "name: t")
                + "spec: *b\n")
    if kind == 2:
        return SERVICE_HEAD + "spec: *undefined\n"
    if kind == 3:  # a List that contains itself
        return "&r {apiVersion: v1, kind: List, items: [*r]}\n"
    if kind == 4:  # a mapping that contains itself
        return "&m {apiVersion: v1, kind: Service, metadata: {name: s}, spec: *m}\n"
    # nesting
    depth = rng.choice([10, 100, 300, 1000, 3000])
    opener, closer = rng.choice([("[", "]"), ("{a: ", "}")])
    return SERVICE_HEAD + "spec: " + opener * depth + "1" + closer * depth + "\n"


MANIFEST_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "structure": manifest_structure, "yaml_text": manifest_text, "aliases": manifest_aliases,
}


def check_manifest(text: str, path: str = "fuzz.yaml") -> str | None:
    """parse_manifest_text never raises; every problem names the path, a line of the file and a
    short message; answers stay proportionate to the input (message size; time is perf/fuzz.py's)."""
    from kdns.objects import EndpointSlice, Namespace, Pod, Service
    from kdns.sources.manifests import parse_manifest_text
    try:
        objects, problems = parse_manifest_text(text, path)
    except BaseException as exc:  # noqa: BLE001 - RecursionError and MemoryError included
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"{type(exc).__name__} escaped parse_manifest_text: {exc!r}"[:600]
    lines = text.count("\n") + 2
    for p in problems:
        if p.path != path or not isinstance(p.line, int) or not 0 <= p.line <= lines:
            return f"problem with a bad path/line: {p.path!r}:{p.line!r} ({lines} lines)"
        if not isinstance(p.message, str) or not p.message:
            return f"problem without a message: {p!r}"
        if len(p.message) > 4096 + 2 * len(text):
            return f"problem message of {len(p.message)} characters for a {len(text)}-character file"
    for obj, line in objects:
        if not isinstance(obj, (Service, EndpointSlice, Pod, Namespace)) or not isinstance(line, int) or line < 1:
            return f"unexpected object {obj!r} at line {line!r}"
    return None


# ------------------------------------------------------------------------------ webhook


def _review_doc(rng: random.Random) -> dict:
    from webhook_harness import container, pod, review
    annotations = rng.choice([None, {}, {"kdns.io/services": "api,db,data/db,nope,Bad Name,,kubernetes"},
                              {"kdns.io/service-links": rng.choice(["true", "false", "maybe"])},
                              {"kdns.io/original-enable-service-links": rng.choice(["true", "false", "x"])}])
    containers = [container("app", env=[{"name": "API_SERVICE_HOST", "value": "1.2.3.4"}, {"name": "X", "value": "y"}]),
                  container("side", envFrom=[{"prefix": "API_", "configMapRef": {"name": "c"}}])]
    obj = pod(rng.choice(["shop", "data", "default", None]), containers[:rng.randrange(1, 3)],
              init=[container("init")] if rng.random() < 0.3 else None, annotations=annotations,
              links=rng.choice([None, True, False]))
    return review(obj, namespace=rng.choice(["shop", "data", "", "default"]), uid=f"uid-{rng.randrange(10**6)}")


JSON_SPECIALS = ["{", "}", "[", "]", ",", ":", '"', "\\", "\\u0000", "\\ud800", "NaN", "Infinity", "-Infinity",
                 "1e999", "-0", "null", "true", "\x00", "\ufeff", "\xff", " ", "\n", "9" * 5000, "[" * 3000]


def webhook_structure(rng: random.Random) -> bytes:
    """A Pod CREATE AdmissionReview with wrong types, missing and unknown fields at random paths."""
    doc = mutate_structure(rng, _review_doc(rng))
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def webhook_bytes(rng: random.Random) -> bytes:
    """Byte-level damage to a valid body: truncation, invalid UTF-8, BOMs, NaN, huge numbers, deep nesting."""
    text = json.dumps(_review_doc(rng))
    text = mutate_text(rng, text, JSON_SPECIALS)
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:
        pos = rng.randrange(len(data) + 1)
        data = data[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00"]) + data[pos:]
    return data


def webhook_values(rng: random.Random) -> bytes:
    """Valid JSON of every top-level shape and the review envelope with weird values in its key fields."""
    from webhook_harness import pod, review
    choice = rng.randrange(4)
    if choice == 0:
        return json.dumps(weird_value(rng)).encode()
    doc = review(pod(), uid="u")
    field = rng.choice([("apiVersion",), ("kind",), ("request",), ("request", "uid"), ("request", "kind"),
                        ("request", "operation"), ("request", "namespace"), ("request", "object"),
                        ("request", "subResource"), ("request", "object", "metadata"),
                        ("request", "object", "spec"), ("request", "object", "spec", "containers"),
                        ("request", "object", "metadata", "annotations")])
    _parent(doc, field)[field[-1]] = weird_value(rng)
    return json.dumps(doc).encode()


WEBHOOK_GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "structure": webhook_structure, "bytes": webhook_bytes, "values": webhook_values,
}

OUTCOMES = {"mutated", "unchanged", "opted_out", "not_selected", "unsynced", "skipped"}


def expected_uid(body: bytes) -> str | None:
    """The uid a response must echo (None when the body is not JSON at all)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    request = doc.get("request") if isinstance(doc, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) else ""


def check_review_body(body: bytes, answer: dict) -> str | None:
    """An AdmissionReview response: allowed, the request's uid, a well-formed JSONPatch that applies."""
    if not isinstance(answer, dict) or answer.get("kind") != "AdmissionReview":
        return f"not an AdmissionReview: {str(answer)[:300]}"
    if answer.get("apiVersion") not in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1"):
        return f"apiVersion {answer.get('apiVersion')!r}"
    response = answer.get("response")
    if not isinstance(response, dict) or response.get("allowed") is not True:
        return f"response is not an allowing object: {str(response)[:300]}"
    uid = expected_uid(body)
    if uid is not None and response.get("uid") != uid:
        return f"response uid {response.get('uid')!r} is not the request's {uid!r}"
    try:
        json.dumps(answer, allow_nan=False)
    except ValueError as exc:
        return f"response is not strict JSON: {exc}"
    if "Traceback" in json.dumps(answer):
        return "a traceback in the response"
    if "patch" in response:
        if response.get("patchType") != "JSONPatch":
            return "patch without patchType JSONPatch"
        try:
            ops = json.loads(base64.b64decode(response["patch"], validate=True))
        except ValueError as exc:
            return f"patch is not base64 JSON: {exc}"
        if not isinstance(ops, list) or not all(isinstance(op, dict) and op.get("op") == "add" for op in ops):
            return f"patch is not a list of add operations: {ops!r}"[:300]
        import jsonpatch
        obj = json.loads(body)["request"]["object"]
        try:
            jsonpatch.JsonPatch(ops).apply(obj)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return f"patch does not apply to the pod: {exc}"
    return None


def check_review(body: bytes, catalog, settings) -> str | None:
    """webhook.review.review raises only BadRequest (with a message) and otherwise returns an Outcome
    whose body passes check_review_body."""
    from webhook.review import BadRequest, review
    try:
        outcome = review(body, catalog, settings)
    except BadRequest as exc:
        if not str(exc) or "Traceback" in str(exc):
            return f"BadRequest without a clear message: {exc!r}"
        if expected_uid(body) is not None:
            return f"BadRequest for a body that is JSON: {exc}"
        return None
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"{type(exc).__name__} escaped review(): {exc!r}"[:600]
    if outcome.outcome not in OUTCOMES:
        return f"outcome {outcome.outcome!r}"
    if expected_uid(body) is None:
        return "a body that is not JSON was not a BadRequest"
    return check_review_body(body, outcome.body)


# ------------------------------------------------------------------------------ webhook over HTTPS


def post_and_check(server, body: bytes) -> str | None:
    """POST one body to /mutate (server: a webhook_harness.Client): 400 with a clear message for
    bytes that are not JSON, else 200 with an AdmissionReview passing check_review_body."""
    status, text = server.request("POST", "/mutate", body, {"Content-Type": "application/json"})
    if status == 400:
        message = text.decode("utf-8", "replace").strip()
        if not message or "Traceback" in message:
            return f"400 without a clear message: {text[:300]!r}"
        if expected_uid(body) is not None:
            return f"400 for a JSON body: {message[:300]}"
        return None
    if status != 200:
        return f"HTTP {status}: {text[:300]!r}"
    try:
        answer = json.loads(text)
    except ValueError:
        return f"200 with a body that is not JSON: {text[:300]!r}"
    if expected_uid(body) is None:
        return "200 for a body that is not JSON"
    return check_review_body(body, answer)


def raw_exchange(server, data: bytes, timeout: float = 10.0, settle: float = 2.0, until_close: bool = False) -> bytes:
    """Write raw bytes over TLS; return what comes back until the server closes (or resets), or
    `settle` seconds pass without more data once something came (aiohttp lingers up to 10 s on a
    connection whose request body was not read). Raises TimeoutError if nothing comes back within
    `timeout`, and with until_close if the server is still holding the connection after `settle`."""
    context = ssl.create_default_context(cafile=server.certs.ca_cert)
    out = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            try:
                tls.sendall(data)
            except (ssl.SSLError, ConnectionError):
                pass  # the server may answer and close before it has read everything
            while True:
                tls.settimeout(settle if out else timeout)
                try:
                    chunk = tls.recv(65536)
                except socket.timeout:
                    if not out:
                        raise TimeoutError(f"no response within {timeout}s") from None
                    if until_close:
                        raise TimeoutError(f"the server kept the connection open {settle}s after answering") from None
                    break
                except (ssl.SSLError, ConnectionError):
                    break
                if not chunk:
                    break
                out += chunk
    return out


def http_statuses(reply: bytes) -> list[int]:
    """The status codes of the HTTP responses in `reply`, in order."""
    return [int(code) for code in re.findall(rb"HTTP/(?:0\.9|1\.[01]) (\d{3}) ", reply)]


def _good_body() -> bytes:
    from webhook_harness import pod, review
    return json.dumps(review(pod(), uid="raw")).encode()


GOOD = _good_body()
HEAD = b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

RAW_HTTP = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "HTTP/0.9": b"GET /mutate\r\n\r\n",
    "NUL in the request line": b"POST /mu\x00tate HTTP/1.1\r\nHost: x\r\n\r\n",
    "binary": bytes(range(256)) * 4,
    "header without colon": HEAD + b"Bogus header\r\nContent-Length: 2\r\n\r\n{}",
    "negative length": HEAD + b"Content-Length: -5\r\n\r\n{}",
    "non-numeric length": HEAD + b"Content-Length: abc\r\n\r\n{}",
    "two lengths": HEAD + b"Content-Length: 2\r\nContent-Length: 5\r\n\r\n{}",
    "length and chunked": HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk longer than said": HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
    "unterminated chunks": HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
    "unknown transfer encoding": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "length shorter than body": HEAD + b"Content-Length: 5\r\n\r\n" + GOOD,
    "length longer than body": HEAD + b"Content-Length: " + str(len(GOOD) + 50).encode() + b"\r\n\r\n" + GOOD,
    "huge header": HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "many headers": HEAD + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"Content-Length: 2\r\n\r\n{}",
    "long URL": b"POST /mutate?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    "GET /mutate": b"GET /mutate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "PUT /mutate": b"PUT /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    "pipelined": (HEAD + b"Content-Length: " + str(len(GOOD)).encode() + b"\r\n\r\n" + GOOD) * 3
                 + HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\n[]",
    "wrong content type": b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: text/html\r\nContent-Length: "
                          + str(len(GOOD)).encode() + b"\r\nConnection: close\r\n\r\n" + GOOD,
    "expect 100-continue": HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    "gzip body that is not gzip": HEAD + b"Content-Encoding: gzip\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    "deflate bomb-ish": HEAD + b"Content-Encoding: deflate\r\nContent-Length: 4\r\nConnection: close\r\n\r\nxxxx",
}

# what the server must answer to each (aiohttp rejects broken framing with 400, a body that never
# completes gets the webhook's 408, a method other than POST 405; JSON that is not a Pod review is
# allowed unchanged with 200, and the last of the pipelined requests is the JSON `[]`)
RAW_HTTP_STATUSES = {
    'garbage request line': [400],
    'HTTP/0.9': [405],
    'NUL in the request line': [400],
    'binary': [400],
    'header without colon': [400],
    'negative length': [400],
    'non-numeric length': [400],
    'two lengths': [400],
    'length and chunked': [400],
    'bad chunk size': [400],
    'chunk longer than said': [400],
    'unterminated chunks': [408],
    'unknown transfer encoding': [400],
    'length shorter than body': [400],
    'length longer than body': [408],
    'huge header': [400],
    'many headers': [400],
    'long URL': [400],
    'GET /mutate': [405],
    'PUT /mutate': [405],
    'pipelined': [200, 200, 200, 200],
    'wrong content type': [200],
    'expect 100-continue': [100, 200],
    'gzip body that is not gzip': [400],
    'deflate bomb-ish': [400],
}

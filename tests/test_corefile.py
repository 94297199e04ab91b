"""Corefile parsing and validation: both kubeadm Corefiles, CoreDNS syntax, errors with file:line:column."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import ROOT
from kdns.config import parse_duration, settings_from_corefile
from kdns.corefile import CorefileError, parse

KUBEADM_BLOCK_CACHE = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"""

KUBEADM_PLAIN_CACHE = KUBEADM_BLOCK_CACHE.replace("""    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
""", "    cache 30\n")


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\nsearch corp.example lab.example\noptions ndots:2\n")
    return str(path)


@pytest.mark.parametrize("text", [KUBEADM_BLOCK_CACHE, KUBEADM_PLAIN_CACHE], ids=["cache-block", "cache-plain"])
def test_both_kubeadm_corefiles_load(text, resolv):
    s = settings_from_corefile(text, "Corefile", resolv_conf=resolv)
    (block,) = s.blocks
    assert block.zones == [""] and block.port == 53
    k = block.kubernetes
    assert k.zones == ["cluster.local", "in-addr.arpa", "ip6.arpa"] and k.pods == "insecure" and k.ttl == 30
    assert k.fallthrough == ["in-addr.arpa", "ip6.arpa"]
    assert block.forward.to == [("192.0.2.53", 53)] and block.forward.max_concurrent == 1000
    assert block.cache.success_ttl == 30 and block.cache.denial_ttl == 30
    if "disable" in text:
        assert block.cache.disable_success == ["cluster.local"] and block.cache.disable_denial == ["cluster.local"]
    assert block.errors and block.loop and block.loadbalance
    assert s.health == ":8080" and s.lameduck == 5.0 and s.ready == ":8181" and s.prometheus == ":9153"
    assert s.reload == (30.0, 15.0)
    assert s.warnings == []


def test_several_blocks_keys_ports_and_env(monkeypatch, resolv):
    monkeypatch.setenv("UPSTREAM", "10.1.1.1:5300")
    text = """
# stub domains, as kube-dns stubDomains became
example.org:1053, example.net:1053 {
    forward . {$UPSTREAM}
}
.:1053 {
    kubernetes cluster.local
    forward . 8.8.8.8 "8.8.4.4:53" {
        except example.com
        policy sequential
        health_check 1s
        max_fails 3
    }
}
dns://corp.test {
    hosts {
        10.0.0.1 a.corp.test
        fallthrough
    }
}
"""
    s = settings_from_corefile(text, "C", resolv_conf=resolv)
    assert [(b.zones, b.port) for b in s.blocks] == [(["example.org", "example.net"], 1053), ([""], 1053),
                                                     (["corp.test"], 53)]
    assert s.blocks[0].forward.to == [("10.1.1.1", 5300)]
    fwd = s.blocks[1].forward
    assert fwd.to == [("8.8.8.8", 53), ("8.8.4.4", 53)] and fwd.except_zones == ["example.com"]
    assert fwd.policy == "sequential" and fwd.health_check == 1.0 and fwd.max_fails == 3
    assert s.blocks[2].hosts.entries == [("10.0.0.1", ["a.corp.test"])] and s.blocks[2].hosts.fallthrough == []
    assert s.ports == [53, 1053]


@pytest.mark.parametrize("text,where,message", [
    (".:53 {\n    kubernetes cluster.local\n    frobnicate\n}\n", "3:5", "unknown directive 'frobnicate'"),
    (".:53 {\n  kubernetes cluster.local {\n    pods sometimes\n  }\n}\n", "3:10",
     "pods: expected disabled, insecure or verified, got 'sometimes'"),
    (".:53 {\n  kubernetes cluster.local {\n    ttl 9000\n  }\n}\n", "3:9", "ttl must be between 0 and 3600"),
    (".:53 {\n  kubernetes cluster.local {\n    wildcard\n  }\n}\n", "3:5", "unknown or unsupported option 'wildcard'"),
    (".:53 {\n  forward .\n}\n", "2:3", "forward: wrong number of arguments"),
    (".:53 {\n  forward . not-an-ip\n}\n", "2:13", "expected an IP address[:port]"),
    (".:53 {\n  forward . 1.1.1.1 {\n    policy fastest\n  }\n}\n", "3:12", "policy: expected random"),
    (".:53 {\n  cache 30 {\n    prefetch 10\n  }\n}\n", "3:5", "kdns rejects prefetch and serve_stale"),
    (".:53 {\n  cache 30 {\n    disable everything\n  }\n}\n", "3:13", "disable: expected success or denial"),
    (".:53 {\n  health {\n    lameduck soon\n  }\n}\n", "3:14", "not a duration"),
    (".:53 {\n  reload 1s\n}\n", "2:10", "at least 2s"),
    (".:53 {\n  kubernetes cluster.local\n", "1:6", "'{' is never closed"),
    (".:53 kubernetes\n", "1:1", "expected '{'"),
    (".:53 {\n  errors\n}\n}\n", "4:1", "unexpected '}' outside a server block"),
    (".:53 {\n  kubernetes cluster.local\n}\n.:53 {\n  errors\n}\n", "4:1", "already served by the block at line 1"),
    (".:53 {\n  kubernetes cluster.local\n  kubernetes other.local\n}\n", "3:3", "appears twice"),
    (".:53 {\n  forward . {$KDNS_SURELY_UNSET}\n}\n", "2:13", "environment variable KDNS_SURELY_UNSET is not set"),
    (".:53 {\n  autopath @kubernetes\n}\n", "2:3", "needs a kubernetes directive"),
    ("example.org:99999 {\n}\n", "1:1", "bad port"),
    (".:53 {\n  log {\n    class loud\n  }\n}\n", "3:5", "unknown class 'loud'"),
])
def test_errors_name_file_line_and_column(text, where, message, resolv):
    with pytest.raises(CorefileError) as err:
        settings_from_corefile(text, "/etc/coredns/Corefile", resolv_conf=resolv)
    assert str(err.value).startswith(f"/etc/coredns/Corefile:{where}: "), str(err.value)
    assert message in str(err.value)


def test_inert_options_are_warned_about_not_ignored(resolv):
    s = settings_from_corefile(".:53 {\n  forward . 1.1.1.1 {\n    max_idle_conns 4\n    expire 3s\n  }\n}\n", "C",
                               resolv_conf=resolv)
    assert len(s.warnings) == 1 and s.warnings[0].startswith("C:3:5: forward: max_idle_conns has no effect")
    assert s.blocks[0].forward.expire == 3.0  # expire has one: how long a UDP socket takes new queries
    with pytest.raises(CorefileError, match="C:3:12: expire: .*not a duration"):
        settings_from_corefile(".:53 {\n  forward . 1.1.1.1 {\n    expire soon\n  }\n}\n", "C", resolv_conf=resolv)


def test_parser_tokens_comments_and_quotes():
    (block,) = parse('a.test:53 { # comment\n  hosts "/etc/my hosts" # trailing\n}\n', "C")
    (d,) = block.directives
    assert d.name == "hosts" and d.values == ["/etc/my hosts"] and (d.line, d.col) == (2, 3)


def test_durations():
    assert parse_duration("5s") == 5 and parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_duration("5 seconds")


def _kdns(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "kdns", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_check_config_accepts_kubeadm_corefile(tmp_path, resolv):
    path = tmp_path / "Corefile"
    path.write_text(KUBEADM_BLOCK_CACHE)
    out = _kdns("check-config", str(path), "--resolv-conf", resolv)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"{path}: OK")
    assert "kubernetes, cache, forward, loadbalance, errors, loop" in out.stdout


def test_check_config_rejects_with_location(tmp_path, resolv):
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n  kubernetes cluster.local\n  dnssec\n}\n")
    out = _kdns("check-config", str(path), "--resolv-conf", resolv)
    assert out.returncode == 1
    assert out.stderr.startswith(f"{path}:3:3: unknown directive 'dnssec'")


def test_serving_a_bad_corefile_exits_non_zero_with_location(tmp_path, resolv):
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n  kubernetes cluster.local {\n    pods maybe\n  }\n}\n")
    out = _kdns("-conf", str(path), "--resolv-conf", resolv)  # the coredns image's own argument style
    assert out.returncode == 2
    assert f"bad_config file={path} line=3 column=10" in out.stderr

"""Caddyfile features (snippets, import of snippets/files/globs, {$VAR} / {%VAR%} / {$VAR:default}) and the
config errors of the kdns/plugins/ directives, each naming file:line:column (in the imported file when
the mistake is there), through settings_from_corefile and `kdns check-config`."""

from __future__ import annotations

import pytest

from kdns.config import load_corefile, settings_from_corefile
from kdns.corefile import CorefileError
from test_corefile import _kdns


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\n")
    return str(path)


def test_snippets_imports_globs_and_env(tmp_path, monkeypatch, resolv):
    monkeypatch.setenv("KDNS_ZONE", "cluster.local")
    monkeypatch.delenv("KDNS_UNSET_TTL", raising=False)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("errors\n")
    (tmp_path / "conf.d" / "b.conf").write_text("loadbalance\n")
    (tmp_path / "stub.server").write_text("example.org:53 {\n    forward . 10.0.0.53\n}\n")
    text = """(base) {
    kubernetes {$KDNS_ZONE} {
        ttl {$KDNS_UNSET_TTL:17}
    }
}
(cached) {
    import base
    cache {%KDNS_UNSET_TTL%}
}
.:53 {
    import base
    import conf.d/*.conf
}
import stub.server
"""
    path = tmp_path / "Corefile"
    path.write_text(text.replace("{%KDNS_UNSET_TTL%}", "30"))
    s = load_corefile(str(path), resolv)
    root, stub = s.blocks
    assert root.kubernetes.zones == ["cluster.local"] and root.kubernetes.ttl == 17
    assert root.errors and root.loadbalance  # from the two files of the glob
    assert stub.zones == ["example.org"] and stub.forward.to == [("10.0.0.53", 53)]
    assert s.warnings == []
    path.write_text(text.replace("{%KDNS_UNSET_TTL%}", "30").replace("conf.d/*.conf", "nothing.d/*.conf"))
    s = load_corefile(str(path), resolv)  # a glob matching nothing is not an error (Caddy), but it is said
    assert s.warnings == [f"{path}:12:12: import: no file matches 'nothing.d/*.conf'"]


@pytest.mark.parametrize("text,where,message", [
    (".:53 {\n  import nothing\n}\n", "2:10", "neither a snippet defined above nor a file"),
    ("(a) {\n  import a\n}\n.:53 {\n  import a\n}\n", "2:10", "snippet (a) imports itself"),
    ("(a) {\n  errors\n}\n(a) {\n  log\n}\n", "4:1", "snippet (a) is defined twice"),
    (".:53 {\n  bind 127.0.0.1 no-such-interface0\n}\n", "2:18", "neither an IP address nor a network interface"),
    (".:53 {\n  bind 127.0.0.1 {\n    except 127.0.0.1\n  }\n}\n", "2:3", "no address is left"),
    (".:53 {\n  bind 127.0.0.1\n}\n.:53 {\n  bind 127.0.0.1\n}\n", "4:1", "on the same address"),
    (".:53 {\n  rewrite name fancy a b\n}\n", "2:11", "usage: name"),
    (".:53 {\n  rewrite name regex (.*)x {2}.b\n}\n", "2:28", "{2} but the regex has 1 groups"),
    (".:53 {\n  rewrite name regex ([ a b\n}\n", "2:22", "bad regex"),
    (".:53 {\n  rewrite type FOO A\n}\n", "2:16", "unknown type 'FOO'"),
    (".:53 {\n  rewrite ttl a.b 5-1\n}\n", "2:19", "bad ttl range"),
    (".:53 {\n  rewrite edns0 local set 0xffee abcd\n}\n", "2:11", "edns0 rules are not supported"),
    (".:53 {\n  rewrite stop {\n    name exact a b\n    ttl a 5\n  }\n}\n", "4:5", "only 'answer name|value"),
    (".:53 {\n  template IN A {\n    answer \"{{ .Foo }} 60 IN A 1.2.3.4\"\n  }\n}\n", "3:16", "unknown field .Foo"),
    (".:53 {\n  template IN A {\n    answer \"{{ if .Name }}x{{ end }}\"\n  }\n}\n", "3:16", "'if' is not supported"),
    (".:53 {\n  template IN A {\n    match ^(?P<a>.*)$\n    answer \"{{ .Group.b }} 60 IN A 1.2.3.4\"\n  }\n}\n",
     "4:16", ".Group.b is not a named group"),
    (".:53 {\n  template IN A {\n    match ^(a)$\n    answer \"{{ index .Match 3 }} 60 IN A 1.2.3.4\"\n  }\n}\n",
     "4:29", "index .Match 3: the match regexes have 1 groups"),
    (".:53 {\n  template IN A {\n    answer \"{{ .Name }} 60 IN A not-an-ip\"\n  }\n}\n", "3:12", "not a resource record"),
    (".:53 {\n  template IN A {\n    answer \"{{ lower .Name }}\"\n  }\n}\n", "3:16", "unknown function 'lower'"),
    # CoreDNS's NonRRTemplate: a SERVFAIL per query there, a config error here
    (".:53 {\n  template IN A {\n    answer \"{{ .Name }}\"\n  }\n}\n", "3:12", "not a resource record"),
    (".:53 {\n  template IN BOGUS\n}\n", "2:15", "unknown type 'BOGUS'"),
    (".:53 {\n  template XX A\n}\n", "2:12", "unknown class 'XX'"),
    (".:53 {\n  template IN A {\n    ederror 1\n  }\n}\n", "3:5", "unknown option 'ederror'"),
    (".:53 {\n  template IN A {\n    rcode MAYBE\n  }\n}\n", "3:11", "unknown rcode 'MAYBE'"),
    (".:53 {\n  bufsize 100\n}\n", "2:11", "between 512 and 4096"),
    (".:53 {\n  any extra\n}\n", "2:3", "wrong number of arguments"),
    (".:53 {\n  minimal {\n    more\n  }\n}\n", "3:5", "unknown option 'more'"),
    (".:53 {\n  root /no/such/dir\n}\n", "2:8", "is not a directory"),
    (".:53 {\n  local 1\n}\n", "2:3", "wrong number of arguments"),
    (".:53 {\n  k8s_external example.com\n}\n", "2:3", "needs a kubernetes directive"),
    ("a.test {\n  kubernetes a.test\n  k8s_external b.test\n}\n", "3:16", "not inside the server block"),
    (".:53 {\n  kubernetes cluster.local\n  k8s_external x.test {\n    wildcard\n  }\n}\n", "4:5",
     "unknown option 'wildcard'"),
    (".:53 {\n  kubernetes cluster.local\n  k8s_external x.test {\n    ttl 99999\n  }\n}\n", "4:9",
     "between 0 and 3600"),
])
def test_plugin_errors_name_file_line_and_column(text, where, message, resolv):
    with pytest.raises(CorefileError) as err:
        settings_from_corefile(text, "/etc/coredns/Corefile", resolv_conf=resolv)
    assert str(err.value).startswith(f"/etc/coredns/Corefile:{where}: "), str(err.value)
    assert message in str(err.value), str(err.value)


def test_check_config_names_the_imported_file(tmp_path, resolv):
    (tmp_path / "extra.conf").write_text("errors\ntemplate IN A {\n    answer \"{{ .Nope }}\"\n}\n")
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n    import extra.conf\n}\n")
    out = _kdns("check-config", str(path), "--resolv-conf", resolv)
    assert out.returncode == 1
    assert out.stderr.startswith(f"{tmp_path / 'extra.conf'}:3:16: template: unknown field .Nope"), out.stderr


def test_check_config_lists_plugin_directives(tmp_path, resolv):
    path = tmp_path / "Corefile"
    path.write_text(".:53 {\n  any\n  rewrite name a.example b.example\n  whoami\n}\n")
    out = _kdns("check-config", str(path), "--resolv-conf", resolv)
    assert out.returncode == 0, out.stderr
    assert "any, rewrite, whoami" in out.stdout


def test_reload_digest_covers_imported_files(tmp_path):
    import hashlib

    from kdns.corefile import digest
    path = tmp_path / "Corefile"
    plain = ".:53 {\n    errors\n}\n"
    assert digest(plain, str(path)) == hashlib.sha512(plain.encode()).hexdigest()  # CoreDNS's reload hash
    (tmp_path / "extra.conf").write_text("log\n")
    text = ".:53 {\n    import extra.conf\n}\n"
    before = digest(text, str(path))
    assert before != hashlib.sha512(text.encode()).hexdigest()
    (tmp_path / "extra.conf").write_text("errors\n")
    assert digest(text, str(path)) != before  # the Corefile is unchanged, the imported file is not
    assert digest(".:53 {\n    import missing.conf\n}\n", str(path))  # a broken import still hashes

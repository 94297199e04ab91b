"""CoreDNS's rewrite name tests (plugin/rewrite/name_test.go), each rule in its own server block of one kdns
process, asked over UDP and TCP: what the rest of the block saw (a template echoes the name it was
asked in a TXT record) and which owner name the client gets back; and the rules CoreDNS accepts or
rejects at setup, through settings_from_corefile."""

from __future__ import annotations

import re

import dns.message
import dns.query
import pytest

from kdns.config import settings_from_corefile
from kdns.corefile import CorefileError
from test_dropin import start

# (rule arguments after `rewrite stop name`, question, name the block resolved, owner the client sees)
CASES = [
    # TestRewriteNamePrefixSuffix / NoAutoAnswer: rewritten, the answer keeps the rewritten owner
    ("prefix foo bar", "foo.example.com.", "bar.example.com.", "bar.example.com."),
    ("prefix foo. bar.", "foo.example.com.", "bar.example.com.", "bar.example.com."),
    ("suffix com org", "foo.example.com.", "foo.example.org.", "foo.example.org."),
    ("suffix .com .org", "foo.example.com.", "foo.example.org.", "foo.example.org."),
    ("suffix .ingress.coredns.rocks nginx.coredns.rocks", "coredns.ingress.coredns.rocks.",
     "corednsnginx.coredns.rocks.", "corednsnginx.coredns.rocks."),
    # TestRewriteNameNoRewrite
    ("prefix foo bar", "coredns.foo.", "coredns.foo.", "coredns.foo."),
    ("prefix foo bar.", "coredns.foo.", "coredns.foo.", "coredns.foo."),
    ("suffix com org", "com.coredns.", "com.coredns.", "com.coredns."),
    ("suffix com org.", "com.coredns.", "com.coredns.", "com.coredns."),
    ("substring service svc", "com.coredns.", "com.coredns.", "com.coredns."),
    # TestRewriteNamePrefixSuffixAutoAnswer
    ("prefix foo bar answer auto", "foo.example.com.", "bar.example.com.", "foo.example.com."),
    ("prefix foo. bar. answer auto", "foo.example.com.", "bar.example.com.", "foo.example.com."),
    ("suffix com org answer auto", "foo.example.com.", "foo.example.org.", "foo.example.com."),
    ("suffix .com .org answer auto", "foo.example.com.", "foo.example.org.", "foo.example.com."),
    ("suffix .ingress.coredns.rocks nginx.coredns.rocks answer auto", "coredns.ingress.coredns.rocks.",
     "corednsnginx.coredns.rocks.", "coredns.ingress.coredns.rocks."),
    # TestRewriteNameExactAnswer: exact always answers with the client's name
    ("exact coredns.rocks service.consul answer auto", "coredns.rocks.", "service.consul.", "coredns.rocks."),
    ("exact coredns.rocks. service.consul. answer auto", "coredns.rocks.", "service.consul.", "coredns.rocks."),
    ("exact coredns.rocks service.consul", "coredns.rocks.", "service.consul.", "coredns.rocks."),
    ("exact coredns.rocks. service.consul.", "coredns.rocks.", "service.consul.", "coredns.rocks."),
    ("exact coredns.org. service.consul.", "coredns.rocks.", "coredns.rocks.", "coredns.rocks."),
    # TestRewriteNameRegexAnswer
    ("regex (.*).coredns.rocks {1}.coredns.maps answer auto", "foo.coredns.rocks.", "foo.coredns.maps.",
     "foo.coredns.rocks."),
    ("regex (.*).coredns.rocks {1}.coredns.maps answer name (.*).coredns.maps {1}.coredns.works",
     "foo.coredns.rocks.", "foo.coredns.maps.", "foo.coredns.works."),
    ("regex (.*).coredns.rocks {1}.coredns.maps", "foo.coredns.rocks.", "foo.coredns.maps.", "foo.coredns.maps."),
    # FROM and TO are normalised to FQDNs (plugin.Name.Normalize): prefix foo is "foo."
    ("prefix foo bar", "foobar.example.com.", "foobar.example.com.", "foobar.example.com."),
]
FIRST_PORT = 31000
ECHO = 'template ANY ANY {\n        answer "{{ .Name }} 60 IN TXT \\"{{ .Name }}\\""\n    }'


def test_coredns_name_rule_cases(tmp_path):
    text = "\n".join(f".:{FIRST_PORT + i} {{\n    rewrite stop name {args}\n    {ECHO}\n}}\n"
                     for i, (args, _, _, _) in enumerate(CASES))
    port_maps = [a for i in range(len(CASES)) for a in ("--port-map", f"{FIRST_PORT + i}=0")]
    with start(tmp_path, text, None, *port_maps) as kdns:
        kdns.wait_for_log(rf"listening server=dns://:{FIRST_PORT + len(CASES) - 1} ")
        ports = {int(m.group(1)): int(m.group(2)) for line in kdns.lines
                 for m in [re.search(r"listening server=dns://:(\d+) udp=\S+:(\d+) ", line)] if m}
        failures = []
        for i, (args, question, resolved, owner) in enumerate(CASES):
            for tcp in (False, True):
                msg = dns.message.make_query(question, "TXT")
                ask = dns.query.tcp if tcp else dns.query.udp
                reply = ask(msg, "127.0.0.1", port=ports[FIRST_PORT + i], timeout=3)
                got = ([rd.to_text().strip('"') for rrset in reply.answer for rd in rrset],
                       [str(rrset.name) for rrset in reply.answer], str(reply.question[0].name))
                if got != ([resolved], [owner], question):
                    failures.append(f"rewrite stop name {args}: {question} -> {got}, expected "
                                    f"{([resolved], [owner], question)}")
        assert not failures, "\n".join(failures)


# TestNewNameRule: (arguments, CoreDNS rejects them)
SETUP = [
    ("exact srv3.coredns.rocks srv4.coredns.rocks", False),
    ("srv1.coredns.rocks srv2.coredns.rocks", False),
    ("suffix coredns.rocks coredns.rocks.", False),
    ("suffix coredns.rocks. coredns.rocks", False),
    ("suffix coredns.rocks. coredns.rocks.", False),
    ("regex srv1.coredns.rocks 10", False),
    ("regex (.*).coredns.rocks 10", False),
    ("regex (.*).coredns.rocks {1}.coredns.rocks", False),
    ("regex (.*).coredns.rocks {1}.{2}.coredns.rocks", True),
    ("regex staging.mydomain.com aws-loadbalancer-id.us-east-1.elb.amazonaws.com", False),
    ("suffix staging.mydomain.com coredns.rock answer", True),
    ("suffix staging.mydomain.com coredns.rock answer name", True),
    ("suffix staging.mydomain.com coredns.rock answer other", True),
    ("suffix staging.mydomain.com coredns.rock answer auto", False),
    ("regex staging.mydomain.com coredns.rock answer auto", False),
    ("regex staging.mydomain.com coredns.rock answer name", True),
    ("regex staging.mydomain.com coredns.rock answer name coredns.rock staging.mydomain.com", False),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.{2}.staging.mydomain.com", True),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.staging.mydomain.com "
     "name (.*).coredns.rock {1}.staging.mydomain.com", False),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.staging.mydomain.com "
     "answer name (.*).coredns.rock {1}.staging.mydomain.com", False),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.staging.mydomain.com "
     "name (.*).coredns.rock", True),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.staging.mydomain.com "
     "value (.*).coredns.rock {1}.staging.mydomain.com", False),
    ("regex staging.mydomain.com coredns.rock answer name (.*).coredns.rock {1}.staging.mydomain.com "
     "value (.*).coredns.rock", True),
    ("suffix staging.mydomain.com. coredns.rock. answer value (.*).coredns.rock {1}.staging.mydomain.com "
     "answer value (.*).coredns.rock {1}.staging.mydomain.com", False),
    ("suffix staging.mydomain.com. coredns.rock. answer value (.*).coredns.rock {1}.staging.mydomain.com "
     "value (.*).coredns.rock", True),
    ("regex " + "a" * 10001 + " replacement", True),  # TestNewNameRuleLargeRegex
    ("suffix a.example b.example answer auto answer name (.*) {1}", True),  # auto and name answer rules
]


@pytest.mark.parametrize("args,fails", SETUP, ids=[f"{i}" for i in range(len(SETUP))])
def test_coredns_name_rule_setup(args, fails):
    text = f".:53 {{\n    rewrite stop name {args}\n}}\n"
    if fails:
        with pytest.raises(CorefileError) as err:
            settings_from_corefile(text, "Corefile")
        assert str(err.value).startswith("Corefile:2:"), str(err.value)
    else:
        assert settings_from_corefile(text, "Corefile").blocks[0].plugins["rewrite"]


def test_answer_auto_maps_names_below_and_values_back(tmp_path):
    # CoreDNS's remap rewriter (exact, or auto): the rewritten name and every name below it, owners and
    # values (CNAME targets) alike; a suffix rule with auto swaps FROM and TO for every name
    chain = ('template ANY ANY {\n        answer "{{ .Name }} 60 IN CNAME www.{{ .Name }}"\n'
             '        answer "www.{{ .Name }} 60 IN A 192.0.2.9"\n    }')
    text = (f".:53 {{\n    rewrite name exact alias.example.org. target.example.com.\n    {chain}\n}}\n"
            f".:1053 {{\n    rewrite name suffix .corp.internal .example.com answer auto\n    {chain}\n}}\n")
    with start(tmp_path, text, None, "--port-map", "1053=0") as kdns:
        line = kdns.wait_for_log(r"listening server=dns://:1053 ")
        suffix_port = int(re.search(r"udp=\S+:(\d+) ", line).group(1))
        reply = kdns.query("alias.example.org")
        assert [(str(r.name), r[0].to_text()) for r in reply.answer] == [
            ("alias.example.org.", "www.alias.example.org."), ("www.alias.example.org.", "192.0.2.9")]
        reply = dns.query.tcp(dns.message.make_query("db.corp.internal", "A"), "127.0.0.1", port=suffix_port,
                              timeout=3)
        assert [(str(r.name), r[0].to_text()) for r in reply.answer] == [
            ("db.corp.internal.", "www.db.corp.internal."), ("www.db.corp.internal.", "192.0.2.9")]

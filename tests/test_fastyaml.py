"""The fast manifest reader (kdns/sources/fastyaml.py, yaml-rs) gives exactly what PyYAML gives, or
steps aside: on the example cluster, deploy/'s manifests, a generated cluster, fuzzed manifests and
the YAML features kubectl users write. Where it reads a file, the documents, their types and their
lines are PyYAML's; parse_manifest_text's objects and problems are the same either way."""

from __future__ import annotations

import glob
import os
import sys

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzz_data import MANIFEST_GENERATORS
from fuzz_dns import EXAMPLE, fuzz_settings
from harness import ROOT
from kdns.sources import fastyaml
from kdns.sources.manifests import parse_manifest_text

sys.path.insert(0, os.path.join(ROOT, "perf"))
import gen_cluster  # noqa: E402


def typed(value):
    """A value with its types spelled out: True, 1 and 1.0 are equal in Python, not in YAML."""
    if isinstance(value, dict):
        return ("map", sorted(((typed(k), typed(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list):
        return ("seq", [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def pyyaml_documents(text: str) -> list:
    """(document, line) as kdns's PyYAML reading takes them: the root node's line, empty documents left out."""
    loader = yaml.CSafeLoader(text)
    out = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                data = loader.construct_document(node)
                if data is not None:
                    out.append((typed(data), node.start_mark.line + 1))
    finally:
        loader.dispose()
    return out


def check_same(text: str) -> bool:
    """Whether the fast reader took the file; if it did, PyYAML must read the same documents."""
    docs = fastyaml.documents(text)
    if docs is None:
        return False
    try:
        expected = pyyaml_documents(text)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"fast reader accepted what PyYAML rejects ({type(exc).__name__}: {exc}): {text[:500]!r}")
    got = [(typed(d), line) for d, line in docs]
    assert got == expected, f"fast reader differs from PyYAML on {text[:500]!r}"
    return True


def pyyaml_only(text: str, path: str = "f.yaml"):
    saved = fastyaml.documents
    fastyaml.documents = lambda text: None
    try:
        return parse_manifest_text(text, path)
    finally:
        fastyaml.documents = saved


def test_example_and_deploy_manifests():
    """The example takes the fast path; deploy/'s files read the same whichever reader takes them
    (some go to PyYAML: comments with quotes in them are read whole, and mention `no` or `on`)."""
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.yaml"), recursive=True)):
        with open(path, encoding="utf-8") as fh:
            check_same(fh.read())
    with open(EXAMPLE, encoding="utf-8") as fh:
        text = fh.read()
    assert check_same(text), "examples/cluster.yaml: read by PyYAML (fastyaml.risky matched)"
    assert parse_manifest_text(text, EXAMPLE) == pyyaml_only(text, EXAMPLE)


def test_generated_cluster_takes_the_fast_path(tmp_path):
    gen_cluster.generate(str(tmp_path), 300, 3000, 7, 0.2, seed=3, zones=False, query_files=False)
    files = sorted(glob.glob(str(tmp_path / "manifests" / "*")))
    assert files
    for path in files:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        assert check_same(text), f"{path}: read by PyYAML"
        objects, problems = parse_manifest_text(text, path)
        assert objects and not problems
        assert (objects, problems) == pyyaml_only(text, path)


# YAML that kubectl users write; each either reads the same in both or goes to PyYAML
FEATURES = {
    "multi-document": "a: 1\n---\nb: 2\n---\n# only a comment\n---\nc: 3\n",
    "leading separator and comments": "# header\n\n---\n# about a\na: 1\n",
    "separator with comment": "--- # first\na: 1\n--- # second\nb: 2\n",
    "empty documents": "---\n---\na: 1\n---\n",
    "CRLF": "a: 1\r\nb:\r\n  - x\r\n---\r\nc: d\r\n",
    "block scalars": "a: |\n  one\n  two\nb: >\n  folded\n  text\n\nc: |-\n  strip\nd: >+\n  keep\n\ne: |2\n    indented\n",
    "block scalar with separator-like line": "a: |\n  ---\n  x\n",
    "flow": "a: {b: [1, 2, {c: d}], e: 'f'}\n",
    "quoted": "a: 'it''s'\nb: \"x y\"\nc: '0123'\nd: \"yes\"\ne: ''\n",
    "multi-line plain": "a: one\n  two\n  three\n",
    "multi-line quoted": "a: 'one\n  two'\nb: \"x\n\n  y\"\n",
    "null forms": "a: ~\nb: null\nc: Null\nd: NULL\ne:\n",
    "bool forms": "a: true\nb: True\nc: FALSE\nd: yes\ne: No\nf: on\ng: OFF\nh: y\ni: n\n",
    "int forms": "a: 1\nb: -2\nc: +3\nd: 0\ne: 0123\nf: 0x1f\ng: 0o17\nh: 1_000\ni: 0b101\nj: 1:20\n",
    "float forms": "a: 1.5\nb: -0.5\nc: .5\nd: 1.\ne: 1e3\nf: 1.5e+3\ng: .inf\nh: -.inf\ni: .nan\nj: +.5\n",
    "dates": "a: 2024-01-02\nb: 2024-01-02T03:04:05Z\nc: '2024-01-02'\n",
    "ip addresses": "a: 10.0.0.1\nb: fd00::1\nc: 2001:db8::1\nd: ::1\ne: 0.0.0.0\n",
    "anchors and aliases": "a: &x {p: 1}\nb: *x\n",
    "merge key": "a: &x {p: 1}\nb:\n  <<: *x\n  q: 2\n",
    "tags": "a: !!str 123\nb: !!int '7'\n",
    "custom tag": "a: !foo bar\n",
    "directive": "%YAML 1.1\n---\na: yes\n",
    "document end": "a: b\n...\n---\nc: d\n",
    "bare document after end": "a: b\n...\nc: d\n",
    "duplicate keys": "a: 1\na: 2\n",
    "complex key": "? [a]\n: 1\n",
    "flow key": "[a]: 1\n",
    "tab": "a:\tb\n",
    "escapes": "a: \"\\x41\\u00e9\\t\"\n",
    "unicode": "a: héllo\nb: 日本\n",
    "BOM": "\ufeffa: 1\n",
    "NEL": "a: b\x85c\n",
    "control character": "a: b\x07\n",
    "top-level list": "- a: 1\n- b: 2\n",
    "list after separator": "---\n- a: 1\n",
    "scalar document": "just text\n",
    "big int": "a: 123456789012345678901234567890\n",
    "colon in value": "a: b:c\nd: http://x/y\n",
    "comment after value": "a: b # c\nd: e#f\n",
    "indented document": "  a: 1\n  b: 2\n",
    "keys that look like values": "1: a\ntrue: b\nnull: c\n1.5: d\n",
    "deep flow": "a: " + "[" * 300 + "]" * 300 + "\n",
    "deep block": "".join(" " * i + "k:\n" for i in range(1100)),
    "unterminated quote": "a: 'x\n---\nb: 'y'\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_yaml_features_read_as_pyyaml_reads_them(name):
    check_same(FEATURES[name])


def test_yaml_1_1_scalars_keep_their_pyyaml_meaning():
    """kdns reads manifests as YAML 1.1, as PyYAML (and kubectl's go-yaml v2) do: a label `yes` is
    boolean true (kdns stores "True"), a port 0123 is octal 83; yaml-rs (1.2) would say "yes" and 123."""
    text = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels: {enabled: yes}\n"
            "spec:\n  clusterIP: 10.96.0.9\n  ports:\n  - {port: 0123}\n")
    assert fastyaml.documents(text) is None
    [(svc, line)], problems = parse_manifest_text(text, "f.yaml")
    assert not problems and line == 1
    assert svc.labels == (("enabled", "True"),) and svc.ports[0].port == 83


@pytest.mark.parametrize("kind", sorted(MANIFEST_GENERATORS))
@fuzz_settings(150)
@given(rng=st.randoms(use_true_random=False))
def test_fuzzed_manifests_parse_the_same_either_way(kind, rng):
    text = MANIFEST_GENERATORS[kind](rng)
    check_same(text)
    assert parse_manifest_text(text, "f.yaml") == pyyaml_only(text)


SCALAR_PIECES = ["yes", "no", "on", "off", "Yes", "NO", "true", "y", "~", "null", "0", "01", "08", "1", "12",
                 "0x", "0o", "0b", "1_0", "_", "e", "E", "3", "+", "-", ".", ":", "5", "9", "inf", "nan", "NaN",
                 "2024-01-02", "T", "Z", " ", "a", "'", '"', "#", ",", "[", "]", "{", "}", "!", "&", "*", "<<", "=",
                 "?", "|", ">", "%", "@", "`", "\\", "\t", "\r", "\n", "é", "\x85", "\u2028"]


@fuzz_settings(600)
@given(pieces=st.lists(st.sampled_from(SCALAR_PIECES), min_size=1, max_size=6),
       context=st.sampled_from(["a: {}\n", "- {}\n", "a: [{}]\n", "{{a: {}}}\n", "{}: x\n", "a:\n  - {}\n",
                                "--- {}\n", "a: b\n---\n{}\n"]))
def test_tricky_scalars(pieces, context):
    """Whatever the fast reader accepts, PyYAML reads the same (or the fast reader stepped aside)."""
    check_same(context.format("".join(pieces)))


def test_problem_lines_come_from_pyyaml():
    """A document with a field problem is read again by PyYAML for the line of that field, and its
    log lines are not written twice."""
    text = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.0.0.2\n"
            "  ports:\n  - {name: http, port: 99999}\n")
    assert fastyaml.documents(text) is not None
    logged = []

    class Log:
        def info(self, event, **fields):
            logged.append((event, fields["line"]))

        warning = info

    objects, problems = parse_manifest_text(text, "f.yaml", Log())
    assert [str(p) for p in problems] == ["f.yaml:11: Service b: spec.ports[0].port: expected a port number "
                                          "1-65535, got 99999"]
    assert logged == [("manifest_object_ignored", 1)]

"""Fuzzing the manifest loader: parse_manifest_text never raises, and every problem names the file,
a line and a short message; ManifestSource keeps the last good state of a broken file and keeps
serving the others; the live server survives any file it is given, at startup and on edits.

Inputs (fuzz_data.py, shared with perf/fuzz.py): the example cluster with wrong types, missing and
unknown fields at random field paths; YAML-level damage (tags, anchors, directives, control
characters, indentation); anchors and aliases, including scaled-down "billion laughs" bombs,
self-referencing aliases and deep nesting.
"""

from __future__ import annotations

import io
import os
import random
import resource
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_data import MANIFEST_GENERATORS, check_manifest
from fuzz_dns import CONTROL_NAME, EXAMPLE, fuzz_settings
from fuzz_live import LiveDns, Tally
from harness import ROOT, KdnsProcess
from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.sources.manifests import ManifestSource, parse_manifest_text



def test_the_example_parses_cleanly():
    with open(EXAMPLE, encoding="utf-8") as fh:
        objects, problems = parse_manifest_text(fh.read(), EXAMPLE)
    assert objects and not problems


@pytest.mark.parametrize("kind", sorted(MANIFEST_GENERATORS))
@fuzz_settings(200)
@given(rng=st.randoms(use_true_random=False))
def test_generated_manifests(kind, rng):
    text = MANIFEST_GENERATORS[kind](rng)
    problem = check_manifest(text)
    assert problem is None, f"{problem}\ninput: {text[:2000]!r}"


@fuzz_settings(300)
@given(text=st.text(max_size=300))
def test_any_text(text):
    problem = check_manifest(text)
    assert problem is None, f"{problem}\ninput: {text!r}"


def test_source_keeps_serving_the_good_file(tmp_path):
    """100 mutations of one file next to a good one: load() never raises, the good file's objects
    stay in the index, and a broken file keeps its last good state (the index does not change)."""
    shutil.copy(EXAMPLE, tmp_path / "cluster.yaml")
    fuzz = tmp_path / "fuzz.yaml"
    fuzz.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: keep, namespace: x}\nspec: {clusterIP: 10.1.0.1}\n")
    index = ClusterIndex(implicit_namespaces=True)
    source = ManifestSource([str(tmp_path)], index, Logger(stream=io.StringIO()))
    source.load()
    assert ("x", "keep") in index.services
    rng = random.Random(7)
    failures = []
    for i in range(100):
        kind = sorted(MANIFEST_GENERATORS)[i % len(MANIFEST_GENERATORS)]
        text = MANIFEST_GENERATORS[kind](rng)
        tmp = tmp_path / "fuzz.tmp~"
        tmp.write_text(text, encoding="utf-8", errors="surrogatepass")
        os.replace(tmp, fuzz)
        os.utime(fuzz, ns=(i * 10**9, i * 10**9))  # a new signature even within one mtime tick
        before = dict(index.services)
        try:
            source.load()
        except BaseException as exc:  # noqa: BLE001
            failures.append(f"{type(exc).__name__}: {exc!s:.200} for {text[:300]!r}")
            continue
        if ("default", "kubernetes") not in index.services:
            failures.append(f"the good file's objects disappeared after {text[:300]!r}")
        if source.problems.get(str(fuzz)) and dict(index.services) != before:
            failures.append(f"a broken file did not keep its last good state: {text[:300]!r}")
    assert not failures, "\n".join(failures[:10])


def test_live_server_survives_manifest_edits(tmp_path):
    """The real server follows a directory while one file is rewritten with fuzz inputs; the
    control query is answered after every edit, and nothing reaches the log as a traceback."""
    shutil.copy(EXAMPLE, tmp_path / "cluster.yaml")
    fuzz = tmp_path / "fuzz.yaml"
    rng = random.Random(11)
    with KdnsProcess("--manifests", str(tmp_path), "--poll-interval", "0.05") as proc:
        client = LiveDns(proc.port, 10)
        tally = Tally()
        try:
            for i in range(24):
                kind = sorted(MANIFEST_GENERATORS)[i % len(MANIFEST_GENERATORS)]
                tmp = tmp_path / "fuzz.tmp~"
                tmp.write_text(MANIFEST_GENERATORS[kind](rng), encoding="utf-8", errors="surrogatepass")
                mark = len(proc.lines)
                os.replace(tmp, fuzz)
                # the server has read this edit (loaded, or kept the last good state with an error)
                proc.wait_for_log(r"manifest_(loaded|error) file=\S*fuzz\.yaml", timeout=20, start=mark)
                client.control(tally, tcp=False)
        finally:
            client.close()
        assert tally.ok, "\n".join(tally.failures)
        assert proc.proc.poll() is None
        log = "\n".join(proc.lines)
        assert "Traceback" not in log and "manifest_poll_failed" not in log, log[-3000:]


# ---------------------------------------------------------------- bugs found by fuzzing (fail until fixed)

BUGS = {
    # yaml.SafeLoader(text) runs the reader's printable check in its constructor, outside the try
    "control character": "apiVersion: v1\nkind: Service\nmetadata: {name: s\x0b}\n",
    "NUL byte": "apiVersion: v1\x00\n",
    # objects._get: `kind` is typing.Mapping, not a type, so building the message iterates it
    "labels not a mapping": "apiVersion: v1\nkind: Service\nmetadata: {name: s, labels: app=web}\n"
                            "spec: {clusterIP: 10.96.0.5}\n",
    "namespace labels not a mapping": "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: [a]}\n",
    "slice labels not a mapping": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                                  "metadata: {name: e, labels: 5}\naddressType: IPv4\n",
    # objects.endpoints_from_dict iterates `subset.get("addresses") or []` and `... "ports" ...` unchecked
    "endpoints addresses not a list": "apiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\nsubsets:\n- addresses: true\n",
    "endpoints ports not a list": "apiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\nsubsets:\n- ports: 5\n",
    # PyYAML's constructors for explicit tags raise ValueError, AttributeError, KeyError (not YAMLError)
    "!!int tag on a word": "apiVersion: v1\nkind: Service\nmetadata: {name: !!int s}\n",
    "!!float tag on a word": "apiVersion: v1\nkind: Service\nmetadata: {name: !!float s}\n",
    "!!timestamp tag on a word": "apiVersion: v1\nkind: Service\nmetadata: {name: !!timestamp s}\n",
    "!!bool tag on a word": "apiVersion: v1\nkind: Service\nmetadata: {name: !!bool s}\n",
    # ... and IndexError for an empty one (construct_yaml_float reads value[0])
    "!!float tag on nothing": "apiVersion: v1\nkind: Service\nmetadata: {name: !!float ''}\n",
    # PyYAML's scanner raises ValueError (not YAMLError) for an escape beyond U+10FFFF
    "escape beyond unicode": 'apiVersion: v1\nkind: Service\nmetadata: {name: "\\U00110000"}\n',
    # _collect recurses into List items; a List that contains itself never ends
    "self-referencing List": "&r {apiVersion: v1, kind: List, items: [*r]}\n",
    # PyYAML's composer recurses per nesting level
    "deep nesting": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: " + "[" * 1000 + "]" * 1000 + "\n",
}


@pytest.mark.parametrize("name", list(BUGS))
def test_bug_parse_manifest_text_never_raises(name):
    """BUG (fuzz): each of these raises out of parse_manifest_text (ReaderError, TypeError,
    ValueError, AttributeError, KeyError, RecursionError) instead of returning a problem with a
    line. At startup that kills kdns (and the webhook); on a poll it logs manifest_poll_failed
    without file or line, and edits to files read earlier in the same poll are not applied until
    some later change (load() aborts before _apply())."""
    text = BUGS[name]
    try:
        objects, problems = parse_manifest_text(text, "bug.yaml")
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped parse_manifest_text: {exc!s:.300}")
    assert problems and all(p.line >= 0 and p.message for p in problems)


def test_bug_startup_with_a_broken_manifest_serves_the_rest(tmp_path):
    """BUG (fuzz): kdns exits with a traceback at startup when one file under --manifests has
    `labels: app=web` (a string where a mapping belongs), instead of logging manifest_error with
    file and line and serving the other files."""
    shutil.copy(EXAMPLE, tmp_path / "cluster.yaml")
    (tmp_path / "broken.yaml").write_text(BUGS["labels not a mapping"])
    try:
        with KdnsProcess("--manifests", str(tmp_path), startup_timeout=10) as proc:
            proc.wait_for_log(r"manifest_error .*broken\.yaml", timeout=5)
            assert proc.query(CONTROL_NAME).answer
    except AssertionError as exc:
        pytest.fail(f"kdns did not start: {str(exc)[-1500:]}")


BOMB = "".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
               + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10)]
               + ["apiVersion: v1\nkind: Service\nmetadata: {name: *a9}\n"])


def _limit_memory():  # runs in the child: 1 GiB of address space
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_bug_billion_laughs_is_bounded():
    """BUG (fuzz): an 800-byte YAML alias bomb (9 levels of 9 aliases, 9^9 leaves) used as
    metadata.name makes the error message repr() the whole expansion: unbounded time and memory
    (depth 6 already takes ~30 s and a 50 MB message). Expected: a short problem, in milliseconds."""
    code = ("import sys; from kdns.sources.manifests import parse_manifest_text; "
            "o, p = parse_manifest_text(sys.stdin.read(), 'bomb.yaml'); "
            "print(len(p), max((len(x.message) for x in p), default=0))")
    try:  # the unbounded expansion runs out of the 1 GiB or takes hours: 60 s is a generous bound
        out = subprocess.run([sys.executable, "-c", code], input=BOMB, capture_output=True, text=True, timeout=60,
                             cwd=ROOT, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"parse_manifest_text did not finish within 60 s on a {len(BOMB)}-byte alias bomb")
    assert out.returncode == 0, out.stderr[-1500:]
    problems, longest = out.stdout.split()
    assert int(problems) >= 1 and int(longest) < 4096, out.stdout

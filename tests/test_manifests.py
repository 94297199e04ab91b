"""Manifest source: parsing with file:line errors, atomic per-file apply, live edits seen by the running server."""

from __future__ import annotations

import io
import os
import textwrap

import dns.rcode
import pytest

from harness import KdnsProcess, answers
from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.sources.manifests import ManifestSource, parse_manifest_text

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterIP: {ip}
  ports:
  - {{name: http, port: 80}}
"""


def _write(path, text: str) -> None:
    # write-then-rename, as editors and ConfigMap volumes do, so a poll never sees half a file
    tmp = f"{path}.tmp~"
    with open(tmp, "w") as fh:
        fh.write(textwrap.dedent(text))
    os.replace(tmp, path)


def _source(tmp_path, *files: tuple[str, str]):
    for name, text in files:
        _write(tmp_path / name, text)
    stream = io.StringIO()
    index = ClusterIndex(implicit_namespaces=True)
    src = ManifestSource([str(tmp_path)], index, Logger(stream=stream))
    src.load()
    return src, index, stream


def test_multi_document_and_list_are_loaded(tmp_path):
    text = SERVICE.format(name="a", ns="x", ip="10.0.0.1") + "---\n" + textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Service
          metadata: {name: b, namespace: x}
          spec: {clusterIP: 10.0.0.2}
        - apiVersion: v1
          kind: Namespace
          metadata: {name: empty}
        """)
    src, index, _ = _source(tmp_path, ("c.yaml", text))
    assert set(index.services) == {("x", "a"), ("x", "b")}
    assert "empty" in index.namespaces
    assert src.problems == {}


def test_missing_field_names_file_line_and_field(tmp_path):
    text = SERVICE.format(name="a", ns="x", ip="10.0.0.1") + "---\n" + textwrap.dedent("""\
        apiVersion: v1
        kind: Service
        metadata: {name: b, namespace: x}
        spec:
          clusterIP: 10.0.0.2
          ports:
          - {name: http, port: 99999}
        """)
    objects, problems = parse_manifest_text(text, "c.yaml")
    assert [str(p) for p in problems] == [
        "c.yaml:15: Service b: spec.ports[0].port: expected a port number 1-65535, got 99999"]


def test_bad_yaml_reports_line(tmp_path):
    _, problems = parse_manifest_text("apiVersion: v1\nkind: Service\nmetadata: {name: [\n", "bad.yaml")
    assert len(problems) == 1 and problems[0].line >= 3 and "invalid YAML" in problems[0].message


@pytest.mark.parametrize("doc,expected", [
    ("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {clusterIP: 10.0.0.1}\n",
     "f.yaml:3: Service: metadata.name: required field is missing"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.300\n",
     "f.yaml:5: Service a: spec.clusterIP: not an IP address: '10.0.0.300'"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: ClusterIP}\n",
     "f.yaml:4: Service a: spec.clusterIP: required field is missing (set an address, or \"None\" for a headless "
     "service: kdns does not allocate addresses)"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: ExternalName}\n",
     "f.yaml:4: Service a: spec.externalName: required field is missing"),
    ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: a}\n"
     "addressType: IPv4\nendpoints:\n- addresses: ['fd00::1']\n",
     "f.yaml:8: EndpointSlice s: endpoints[0].addresses[0]: fd00::1 does not match addressType IPv4"),
    ("kind: Service\nmetadata: {name: a}\n", "f.yaml:1: apiVersion: required field is missing"),
    ("- just\n- a list\n", "f.yaml:1: expected a Kubernetes object (a mapping), got list"),
])
def test_field_errors(doc, expected):
    _, problems = parse_manifest_text(doc, "f.yaml")
    assert [str(p) for p in problems] == [expected]


def test_unsupported_kinds_are_logged_once_each_not_errors(tmp_path):
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n" + SERVICE.format(name="a", ns="x", ip="10.0.0.1")
    src, index, log = _source(tmp_path, ("c.yaml", text))
    assert src.problems == {} and ("x", "a") in index.services
    lines = [l for l in log.getvalue().splitlines() if "manifest_object_ignored" in l]
    assert len(lines) == 1 and "kind=Deployment" in lines[0] and "line=1" in lines[0]


def test_broken_edit_keeps_last_good_state_of_that_file(tmp_path):
    src, index, log = _source(tmp_path, ("a.yaml", SERVICE.format(name="a", ns="x", ip="10.0.0.1")),
                              ("b.yaml", SERVICE.format(name="b", ns="x", ip="10.0.0.2")))
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", ns="x", ip="10.0.0.1") + "---\nkind: [\n")
    _write(tmp_path / "b.yaml", SERVICE.format(name="b", ns="x", ip="10.0.0.3"))
    src.load()
    assert index.services[("x", "a")].cluster_ips == ("10.0.0.1",)  # kept
    assert index.services[("x", "b")].cluster_ips == ("10.0.0.3",)  # other files still apply
    assert "a.yaml:" in str(src.problems[str(tmp_path / "a.yaml")][0])
    assert "manifest_error" in log.getvalue() and "kept_objects=1" in log.getvalue()


def test_object_defined_in_two_files_is_reported_and_first_path_wins(tmp_path):
    _, index, log = _source(tmp_path, ("a.yaml", SERVICE.format(name="s", ns="x", ip="10.0.0.1")),
                            ("b.yaml", SERVICE.format(name="s", ns="x", ip="10.0.0.2")))
    assert index.services[("x", "s")].cluster_ips == ("10.0.0.1",)
    assert "manifest_conflict" in log.getvalue() and "b.yaml" in log.getvalue()


def test_same_object_twice_in_one_file_is_an_error(tmp_path):
    text = SERVICE.format(name="s", ns="x", ip="10.0.0.1") + "---\n" + SERVICE.format(name="s", ns="x", ip="10.0.0.2")
    src, index, _ = _source(tmp_path, ("a.yaml", text))
    assert ("x", "s") not in index.services
    assert "defined twice (first at line 1)" in str(src.problems[str(tmp_path / "a.yaml")][0])


def test_deleted_file_removes_its_objects(tmp_path):
    src, index, _ = _source(tmp_path, ("a.yaml", SERVICE.format(name="a", ns="x", ip="10.0.0.1")))
    os.remove(tmp_path / "a.yaml")
    src.load()
    assert index.services == {}


def test_hidden_files_and_other_suffixes_are_skipped(tmp_path):
    (tmp_path / ".hidden.yaml").write_text(SERVICE.format(name="h", ns="x", ip="10.0.0.9"))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    src, index, _ = _source(tmp_path, ("a.yaml", SERVICE.format(name="a", ns="x", ip="10.0.0.1")))
    assert set(index.services) == {("x", "a")} and src.problems == {}


# ---------------------------------------------------------------- live, through the real server

def test_live_edit_is_served_and_broken_edit_keeps_last_good_state(tmp_path):
    path = tmp_path / "cluster.yaml"
    _write(path, SERVICE.format(name="web", ns="shop", ip="10.96.0.50"))
    with KdnsProcess("--manifests", str(tmp_path)) as kdns:
        assert answers(kdns.query("web.shop.svc.cluster.local")) == ["10.96.0.50"]
        # an edit is served once the poll has loaded it (logged in the same step that applies it)
        mark = len(kdns.lines)
        _write(path, SERVICE.format(name="web", ns="shop", ip="10.96.0.51"))
        kdns.wait_for_log(r"manifest_loaded file=.*cluster\.yaml", timeout=20, start=mark)
        assert answers(kdns.query("web.shop.svc.cluster.local")) == ["10.96.0.51"]
        # a new file with a new service
        mark = len(kdns.lines)
        _write(tmp_path / "more.yaml", SERVICE.format(name="db", ns="data", ip="10.96.0.60"))
        kdns.wait_for_log(r"manifest_loaded file=.*more\.yaml", timeout=20, start=mark)
        assert answers(kdns.query("db.data.svc.cluster.local")) == ["10.96.0.60"]
        # a broken edit: logged with file and line, last good state kept
        mark = len(kdns.lines)
        _write(path, SERVICE.format(name="web", ns="shop", ip="10.96.0.52") + "---\napiVersion: v1\nkind: Service\nmetadata: {}\n")
        line = kdns.wait_for_log(r"manifest_error", timeout=20, start=mark)
        assert f"file={path}" in line and "line=11" in line and "metadata.name" in line
        assert answers(kdns.query("web.shop.svc.cluster.local")) == ["10.96.0.51"]
        # removing the service: NXDOMAIN, the namespace is gone too (implicit namespaces)
        mark = len(kdns.lines)
        _write(path, "")
        kdns.wait_for_log(r"manifest_(loaded|fixed) file=.*cluster\.yaml", timeout=20, start=mark)
        assert kdns.query("web.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        assert kdns.query("shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        assert kdns.query("data.svc.cluster.local").rcode() == dns.rcode.NOERROR

"""kdns-webhook's HTTPS server: the AdmissionReview envelope, every kind of bad input, bounded
requests, fail-open before sync, health/readiness/metrics, TLS 1.2+ and certificate reload."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import threading
import time
import warnings

import pytest
from cryptography import x509

from webhook.certs import generate
from webhook_fixtures import BASE, certs, webhook  # noqa: F401 - fixtures
from webhook_harness import WebhookThread, decoded_patch, pod, review, svc


def post(server, body: bytes, **headers) -> tuple[int, bytes]:
    return server.request("POST", "/mutate", body, {"Content-Type": "application/json", **headers})


def allowed_unchanged(server, doc, uid: str = "") -> str:
    """Post `doc` (any JSON); expect 200, a v1 AdmissionReview allowing it with no patch. Returns the message."""
    status, body = post(server, json.dumps(doc).encode())
    assert status == 200, body
    answer = json.loads(body)
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == uid and response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    return response["status"]["message"]


# ---------------------------------------------------------------- the envelope


def test_response_echoes_uid_and_carries_a_base64_json_patch(webhook):
    webhook.set_objects(*BASE)
    doc = review(pod(), uid="705ab4f5-6393-11e8-b7cc-42010a800002")
    status, body = post(webhook, json.dumps(doc).encode())
    assert status == 200
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is True and answer["response"]["patchType"] == "JSONPatch"
    assert decoded_patch(answer["response"])[0]["op"] == "add"


def test_nothing_to_do_means_no_patch(webhook):
    webhook.set_objects(*BASE)
    first, _ = webhook.admit(pod())
    _, response = webhook.admit(first)
    assert set(response) == {"uid", "allowed"}


@pytest.mark.parametrize("doc, uid, message", [
    ([1, 2], "", "expected an AdmissionReview object, got a JSON list"),
    ("text", "", "expected an AdmissionReview object, got a JSON str"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "", "kind: expected AdmissionReview, got 'Pod'"),
    ({"apiVersion": "v1", "kind": "AdmissionReview", "request": {"uid": "u1"}}, "u1",
     "apiVersion: expected admission.k8s.io/v1, got 'v1'"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "", "request: required field is missing"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}, "",
     "request: expected an object, got a JSON list"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "CREATE"}}, "",
     "request.uid: required field is missing"),
    (review(pod(), uid="u2", kind={"group": "apps", "version": "v1", "kind": "Deployment"}), "u2",
     "request.kind: only v1 Pod is mutated, got apps/v1 Deployment"),
    (review(pod(), uid="u3", subResource="ephemeralcontainers"), "u3",
     "request.subResource: only pods are mutated, not pods/ephemeralcontainers"),
    (review(pod(), uid="u4", operation="UPDATE"), "u4", "request.operation: only CREATE is mutated, got 'UPDATE'"),
    (review(pod(), uid="u5", operation="DELETE"), "u5", "request.operation: only CREATE is mutated, got 'DELETE'"),
    (review(None, uid="u6"), "u6", "request.object: required field is missing"),
    (review([], uid="u7"), "u7", "request.object.: expected a Pod object, got an array"),
    (review({"metadata": {}, "spec": {"containers": "x"}}, uid="u8"), "u8",
     "request.object.spec.containers: expected an array, got a string"),
    (review({"spec": {"containers": [{"name": "a", "env": [{"name": 5}]}]}}, uid="u9"), "u9",
     "request.object.spec.containers[0].env[0].name: expected a string, got a number"),
    (review({"spec": {"containers": [], "initContainers": [{"name": "i", "env": {"A": "b"}}]}}, uid="u10"), "u10",
     "request.object.spec.initContainers[0].env: expected an array, got an object"),
    (review({"metadata": {"annotations": {"a": 1}}, "spec": {"containers": []}}, uid="u11"), "u11",
     "request.object.metadata.annotations['a']: expected a string, got a number"),
    (review({"spec": {"enableServiceLinks": "yes", "containers": []}}, uid="u12"), "u12",
     "request.object.spec.enableServiceLinks: expected true or false, got a string"),
    (review({"spec": {}}, uid="u13"), "u13", "request.object.spec.containers: required field is missing"),
    (review(pod(namespace=None), namespace="", uid="u14"), "u14",
     "request.object.metadata.namespace: missing, and request.namespace is empty too"),
])
def test_json_that_is_not_a_pod_create_is_allowed_unchanged_with_a_message(webhook, doc, uid, message):
    webhook.set_objects(*BASE)
    text = allowed_unchanged(webhook, doc, uid)
    assert text == message + "; allowed unchanged"


@pytest.mark.parametrize("body, headers, message", [
    (b"", {}, "empty body"),
    (b"   \n", {}, "empty body"),
    (b"{not json", {}, "body is not JSON"),
    (b'{"a": 1} trailing', {}, "body is not JSON"),
    (b"\xff\xfe{}", {}, "body is not UTF-8"),
    (b"[" * 30000 + b"]" * 30000, {}, "nested too deeply"),
    (b"1" * 5000, {}, "body is not JSON"),
    (b"x" * (64 * 1024 + 1), {}, "request body larger than 65536 bytes"),
])
def test_bytes_that_are_not_json_get_400_with_a_clear_message(certs, body, headers, message):
    with WebhookThread(certs, objects=BASE, max_body=64 * 1024) as server:
        status, text = post(server, body, **headers)
        assert status == 400 and message in text.decode(), text
        assert server.request("GET", "/healthz")[0] == 200
        assert server.metric("kdns_webhook_admissions_total", outcome="bad_request") == 1


def test_oversized_bodies_are_refused_by_header_and_when_streamed(certs):
    with WebhookThread(certs, objects=BASE, max_body=1024) as server:
        # announced too large: refused before reading
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with server.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100000000\r\n\r\n{")
                head = tls.recv(4096).decode()
        assert head.startswith("HTTP/1.1 400") and "larger than 1024 bytes" in head
        # chunked, no length announced: refused once the limit is passed, without waiting for the rest (sent
        # as far as the limit only: a client still sending after the refusal races the server's close)
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with server.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.settimeout(10)
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(2):  # 1,200 bytes: past the 1,024 limit, the request not finished
                    tls.sendall(b"258\r\n" + b"x" * 600 + b"\r\n")
                head = tls.recv(4096).decode()
        assert head.startswith("HTTP/1.1 400") and "larger than 1024 bytes" in head, head


def test_a_slow_body_is_cut_off_by_the_request_timeout(certs):
    with WebhookThread(certs, objects=BASE, request_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with server.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.settimeout(30)  # the server answers 408 by itself; waiting this long would fail the test
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"apiVer")
                head = tls.recv(4096).decode()
        assert head.startswith("HTTP/1.1 408"), head
        assert server.metric("kdns_webhook_admissions_total", outcome="timeout") == 1
        # and the server still answers
        _, response = server.admit(pod())
        assert response["allowed"] is True


def test_other_methods_and_paths_are_not_500(webhook):
    assert webhook.request("GET", "/mutate")[0] == 405
    assert webhook.request("POST", "/nope", b"{}")[0] == 404


def test_a_bug_in_the_decision_fails_open_and_is_counted(certs):
    with WebhookThread(certs, objects=BASE) as server:
        def broken(namespace):
            raise RuntimeError("boom")
        server.catalog.in_namespace = broken
        doc = review(pod(), uid="u-bug")
        status, body = post(server, json.dumps(doc).encode())
        assert status == 200
        response = json.loads(body)["response"]
        assert response["uid"] == "u-bug" and response["allowed"] is True and "patch" not in response
        assert "internal error (RuntimeError" in response["warnings"][0]
        assert server.metric("kdns_webhook_admissions_total", outcome="internal_error") == 1
        assert "admission_internal_error" in server.log and "boom" in server.log


# ---------------------------------------------------------------- sync, health, readiness, metrics


def test_before_sync_pods_are_allowed_unchanged_with_a_warning(certs):
    with WebhookThread(certs, objects=BASE, synced=False) as server:
        status, text = server.request("GET", "/readyz")
        assert status == 503 and b"not synced" in text
        assert server.request("GET", "/healthz") == (200, b"ok\n")
        _, response = server.admit(pod())
        assert "patch" not in response
        assert response["warnings"] == ["kdns-webhook: services not synced yet: no service links injected; "
                                        "the kubelet's own links apply"]
        assert server.metric("kdns_webhook_unsynced_admissions_total") == 1
        _, response = server.admit(pod(annotations={"kdns.io/service-links": "false"}))
        assert "warnings" not in response and "opted out" in response["status"]["message"]
        assert server.metric("kdns_webhook_services_synced") == 0
        server.set_objects(*BASE, synced=True)
        assert server.request("GET", "/readyz") == (200, b"ok\n")
        patched, _ = server.admit(pod())
        assert patched["spec"]["enableServiceLinks"] is False


def test_metrics_count_outcomes_and_variables(certs):
    with WebhookThread(certs, objects=[*BASE, svc("shop", "redis", "10.96.5.5", (6379,))]) as server:
        server.admit(pod())
        server.admit(pod(annotations={"kdns.io/service-links": "false"}))
        server.admit(pod(containers=[{"name": "a", "env": [{"name": "REDIS_PORT", "value": "x"}]}]))
        allowed_unchanged(server, review(pod(), uid="u", operation="UPDATE"), "u")
        assert server.metric("kdns_webhook_admissions_total", outcome="mutated") == 2
        assert server.metric("kdns_webhook_admissions_total", outcome="opted_out") == 1
        assert server.metric("kdns_webhook_admissions_total", outcome="skipped") == 1
        assert server.metric("kdns_webhook_injected_variables_total") == 15 + 14
        assert server.metric("kdns_webhook_shadowed_variables_total") == 1
        assert server.metric("kdns_webhook_services") == 2
        assert server.metric("kdns_webhook_admission_duration_seconds_count") == 4
        assert server.metric("kdns_webhook_cert_not_after_seconds") > time.time() + 300 * 86400
        assert "admission uid=" in server.log and "outcome=mutated injected=15" in server.log


# ---------------------------------------------------------------- TLS


def _serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def test_serves_the_gen_certs_certificate_over_tls_1_2_and_up(webhook, certs):
    with open(certs.tls_cert, "rb") as fh:
        expected = x509.load_pem_x509_certificate(fh.read()).serial_number
    assert _serial(webhook.peer_certificate()) == expected  # verified against ca.crt, hostname 127.0.0.1
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=certs.ca_cert)
        ctx.minimum_version = ctx.maximum_version = version
        assert webhook.request("GET", "/healthz", context=ctx)[0] == 200
    old = ssl.create_default_context(cafile=certs.ca_cert)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        webhook.request("GET", "/healthz", context=old)
    assert webhook.tls.server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    # a client that does not trust the CA is refused
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.request("GET", "/healthz", context=ssl.create_default_context())


def test_certificate_rotation_without_restart(tmp_path):
    first = generate("kdns-webhook", "kdns-system", str(tmp_path / "live"), hosts=("127.0.0.1",))
    with WebhookThread(first, objects=BASE) as server:
        before = _serial(server.peer_certificate())
        # rotate: a new serving certificate from the same CA (gen-certs again into the same dir)
        rotated = generate("kdns-webhook", "kdns-system", str(tmp_path / "live"), hosts=("127.0.0.1",))
        assert rotated.reused_ca
        assert server.check_certs() is True
        after = _serial(server.peer_certificate())
        with open(rotated.tls_cert, "rb") as fh:
            assert after != before and after == x509.load_pem_x509_certificate(fh.read()).serial_number
        assert server.metric("kdns_webhook_cert_reloads_total") == 1
        _, response = server.admit(pod())  # and admission works over the new certificate
        assert response["allowed"]

        # a half-rotated pair (a key that does not match) is refused; the last good pair keeps serving
        other = generate("x", "y", str(tmp_path / "other"), hosts=("127.0.0.1",))
        shutil.copy(other.tls_key, rotated.tls_key)
        assert server.check_certs() is False
        assert server.check_certs() is False  # reported once per state of the files
        assert _serial(server.peer_certificate()) == after
        assert server.metric("kdns_webhook_cert_reload_failures_total") == 1
        assert "cert_reload_failed" in server.log and "does not match" in server.log
        # completing the rotation is picked up
        fixed = generate("kdns-webhook", "kdns-system", str(tmp_path / "live"), hosts=("127.0.0.1",))
        assert server.check_certs() is True
        with open(fixed.tls_cert, "rb") as fh:
            assert _serial(server.peer_certificate()) == x509.load_pem_x509_certificate(fh.read()).serial_number


def test_gen_certs_files_and_names(tmp_path):
    made = generate("hook", "infra", str(tmp_path / "c"), hosts=("127.0.0.1", "hook.local"))
    assert oct(os.stat(made.tls_key).st_mode & 0o777) == "0o600" and oct(os.stat(made.ca_key).st_mode & 0o777) == "0o600"
    with open(made.tls_cert, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hook", "hook.infra", "hook.infra.svc",
                                                      "hook.infra.svc.cluster.local", "hook.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the CA verifies the serving certificate in a real TLS handshake, for the service's names and IP
    for host in ("hook.infra.svc", "hook.local", "127.0.0.1"):
        assert _handshake(made, made.ca_cert, host) == "hook.infra.svc"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(made, made.ca_cert, "other.infra.svc")  # not a name in the certificate
    again = generate("hook", "infra", str(tmp_path / "c"))
    assert again.reused_ca and again.ca_bundle == made.ca_bundle
    old_ca = tmp_path / "old-ca.crt"
    shutil.copy(made.ca_cert, old_ca)
    fresh = generate("hook", "infra", str(tmp_path / "c"), new_ca=True)
    assert not fresh.reused_ca and fresh.ca_bundle != made.ca_bundle
    assert _handshake(fresh, fresh.ca_cert, "hook.infra.svc") == "hook.infra.svc"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(fresh, str(old_ca), "hook.infra.svc")  # the old CA does not verify the new CA's certificate


def _handshake(served, cafile: str, host: str) -> str:
    """A TLS handshake with `served`'s certificate and key, the client trusting only `cafile` and
    checking `host`; the common name of the certificate it accepted."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(served.tls_cert, served.tls_key)
    client_ctx = ssl.create_default_context(cafile=cafile)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(10)
        right.settimeout(10)
        server = threading.Thread(target=_serve_one_handshake, args=(server_ctx, right), daemon=True)
        server.start()
        try:
            with client_ctx.wrap_socket(left, server_hostname=host) as tls:
                return dict(item[0] for item in tls.getpeercert()["subject"])["commonName"]
        finally:
            left.close()
            server.join(10)


def _serve_one_handshake(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        pass  # the client refused us: that is what some calls check

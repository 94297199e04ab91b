"""Fuzzing the webhook's AdmissionReview handling, in-process (webhook.review.review) and over
HTTPS against the real server: every malformed body gets HTTP 400 with a clear message or a 200
AdmissionReview allowing the pod (unchanged, or with a JSONPatch that applies); never 500, never a
traceback in the body, never an internal error; the server keeps answering a control admission.

Inputs (fuzz_data.py, shared with perf/fuzz.py): Pod CREATE reviews with wrong types, missing and
unknown fields at random paths; byte-level damage (truncation, invalid UTF-8, BOMs, NaN, huge
numbers, deep nesting); weird values in the envelope's key fields; raw HTTP that lies about its
length, chunking or method.
"""

from __future__ import annotations

import io
import json
import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_data import (EXAMPLE, HEAD, RAW_HTTP, RAW_HTTP_STATUSES, WEBHOOK_GENERATORS, check_review, http_statuses,
                       post_and_check, raw_exchange)
from fuzz_dns import fuzz_settings
from kdns.log import Logger
from webhook.cluster import manifest_catalog
from webhook.selection import Settings
from webhook_fixtures import BASE, certs  # noqa: F401 - fixture
from webhook_harness import WebhookThread, pod, review, svc



@pytest.fixture(scope="module")
def catalog():
    catalog, _ = manifest_catalog([EXAMPLE], Logger(stream=io.StringIO()))
    return catalog


@pytest.mark.parametrize("kind", sorted(WEBHOOK_GENERATORS))
@fuzz_settings(300)
@given(rng=st.randoms(use_true_random=False), opt_in=st.booleans())
def test_generated_reviews(catalog, kind, rng, opt_in):
    body = WEBHOOK_GENERATORS[kind](rng)
    problem = check_review(body, catalog, Settings(require_opt_in=opt_in))
    assert problem is None, f"{problem}\nbody: {body[:1500]!r}"


@fuzz_settings(300)
@given(body=st.binary(max_size=400))
def test_any_bytes(catalog, body):
    problem = check_review(body, catalog, Settings())
    assert problem is None, f"{problem}\nbody: {body!r}"


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=4), max_leaves=20)


@fuzz_settings(150)
@given(request=st.dictionaries(st.sampled_from(["uid", "kind", "operation", "namespace", "object", "subResource",
                                                 "resource", "dryRun"]), JSON_VALUES, max_size=8))
def test_any_request_fields(catalog, request):
    doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    body = json.dumps(doc).encode()
    problem = check_review(body, catalog, Settings())
    assert problem is None, f"{problem}\nbody: {body!r}"


# ---------------------------------------------------------------- the real server over HTTPS


class _Errors(logging.Handler):
    """aiohttp's own error log lines (a handler exception, a traceback) while the test runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def server(certs):  # noqa: F811 - pytest fixture
    errors = _Errors()
    logging.getLogger("aiohttp").addHandler(errors)
    objects = BASE + [svc("shop", "api", "10.96.200.20", ("http", 80, "TCP")),
                      svc("data", "db", "10.96.200.30", ("pg", 5432, "TCP"))]
    try:
        with WebhookThread(certs, objects=objects, request_timeout=0.5) as wh:
            wh.aiohttp_errors = errors
            yield wh
    finally:
        logging.getLogger("aiohttp").removeHandler(errors)


def control(server) -> None:
    """A normal Pod CREATE is still mutated correctly."""
    patched, response = server.admit(pod(annotations={"kdns.io/services": "api"}))
    names = [e["name"] for e in patched["spec"]["containers"][0]["env"]]
    assert "API_SERVICE_HOST" in names and "KUBERNETES_SERVICE_HOST" in names, response
    assert patched["spec"]["enableServiceLinks"] is False


def test_generated_bodies_over_https(server):
    rng = random.Random(20261126)
    failures = []
    for i in range(240):
        kind = sorted(WEBHOOK_GENERATORS)[i % len(WEBHOOK_GENERATORS)]
        body = WEBHOOK_GENERATORS[kind](rng)
        problem = post_and_check(server, body)
        if problem:
            failures.append(f"{problem}\n  body: {body[:500]!r}")
        if i % 40 == 39:
            control(server)
    assert not failures, "\n".join(failures[:8])


@pytest.mark.parametrize("name", list(RAW_HTTP))
def test_raw_http(server, name):
    reply = raw_exchange(server, RAW_HTTP[name])  # TimeoutError if nothing at all comes back
    assert http_statuses(reply) == RAW_HTTP_STATUSES[name], reply[:600]
    assert b"Traceback" not in reply
    control(server)


def test_zz_no_internal_errors(server):
    control(server)
    assert server.server.stats["internal_error"] == 0, server.log[-3000:]
    assert "admission_internal_error" not in server.log and "Traceback" not in server.log, server.log[-3000:]
    # aiohttp logs its own parser's rejections ("Error handling request"): those got a 400 and are
    # aiohttp's business; an "Unhandled exception" is a request the webhook's code let go wrong
    unhandled = [r for r in server.aiohttp_errors.records if not r.startswith("Error handling request")]
    assert not unhandled, "\n".join(unhandled)[-3000:]
    assert server.request("GET", "/healthz")[0] == 200


# ---------------------------------------------------------------- bugs found by fuzzing (fail until fixed)


@pytest.mark.parametrize("group", [1, [""], {"a": 1}, True])
def test_bug_request_kind_group_of_the_wrong_type_is_not_an_internal_error(catalog, group):
    """BUG (fuzz): review._describe_gvk does `group + '/'` on request.kind.group without checking
    it is a string: a number, list, object or boolean there raises TypeError, which the server turns
    into an internal_error (logged at ERROR, counted in kdns_webhook_admissions{outcome=internal_error})
    instead of a clear 'request.kind: only v1 Pod is mutated' answer."""
    from webhook.review import review as decide
    doc = review(pod(), uid="g")
    doc["request"]["kind"] = {"group": group, "version": "v1", "kind": "Pod"}
    outcome = decide(json.dumps(doc).encode(), catalog, Settings())
    assert outcome.outcome == "skipped" and "request.kind" in outcome.message
    assert outcome.body["response"]["uid"] == "g"


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"br"])
def test_bug_undecodable_content_encoding_logs_no_traceback(server, encoding):
    """BUG (fuzz): a POST whose Content-Encoding does not match its body gets a 400 (good), but
    aiohttp then 'lingers' reading the rest of the errored payload (lingering_time, 10 s by default:
    the connection also stays open that long despite `Connection: close`), the read raises again,
    and aiohttp logs 'Unhandled exception' with a traceback in the webhook's log for every such
    request. Suggested fix: web.AppRunner(..., lingering_time=0) in WebhookServer.start, and
    resp.force_close() instead of a hand-written Connection header."""
    errors = _Errors()
    logging.getLogger("aiohttp").addHandler(errors)
    try:
        # read until the server closes: a TimeoutError if it still holds the connection 5 s after its
        # 400 (aiohttp's lingering keeps it 10 s), and whatever aiohttp logs is logged by then
        reply = raw_exchange(server, HEAD + b"Content-Encoding: " + encoding + b"\r\nContent-Length: 4\r\n\r\nxxxx",
                             settle=5, until_close=True)
    finally:
        logging.getLogger("aiohttp").removeHandler(errors)
    assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), reply[:200]  # aiohttp answers br itself
    unhandled = [r for r in errors.records if not r.startswith("Error handling request")]
    assert not unhandled, unhandled[0][-1500:]

"""pytest fixtures for the webhook tests (import them into a test module to use them)."""

from __future__ import annotations

import pytest

from webhook.certs import generate
from webhook_harness import WebhookThread, ns, svc

# The cluster most tests start from: the API server's service, and a namespace `shop`.
KUBERNETES = svc("default", "kubernetes", "10.96.0.1", ("https", 443, "TCP"))
BASE = [ns("default"), ns("shop"), KUBERNETES]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA and serving certificate made by gen-certs' code, valid for 127.0.0.1."""
    return generate("kdns-webhook", "kdns-system", str(tmp_path_factory.mktemp("certs")),
                    hosts=("127.0.0.1", "localhost"))


@pytest.fixture(scope="module")
def webhook(certs):
    """One real server (TLS, free port) per module; each test sets the services it needs."""
    with WebhookThread(certs, objects=BASE) as server:
        yield server

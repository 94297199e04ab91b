"""kdns-webhook's answer memo (webhook/memo.py): a remembered patch is exactly what computing it
gives. Two pods differing in one input the patch reads get different answers even when one comes
right after the other; the memo is bounded and follows plan changes; replicas over HTTPS hit it."""

from __future__ import annotations

import copy
import io
import json

import pytest

from kdns.index import ClusterIndex
from kdns.objects import service_from_dict
from webhook.cluster import ServiceCatalog
from webhook.memo import AnswerMemo
from webhook.review import dump, review
from webhook.selection import ANNOTATION_ORIGINAL, Settings
from webhook_fixtures import BASE, certs, webhook  # noqa: F401 - fixtures
from webhook_harness import container, decoded_patch, pod, svc
from webhook_harness import review as admission_review

SHADOW = [{"name": "REDIS_SERVICE_HOST", "value": "mine"}]
CM_REF = {"configMapKeyRef": {"name": "c", "key": "k"}}

# (input, pod A, pod B): A and B differ only in that input; the patch or warnings depend on it
CASES = [
    ("container name", pod(containers=[container("app", env=SHADOW)]), pod(containers=[container("web", env=SHADOW)])),
    ("env value", pod(containers=[container(env=SHADOW)]),
     pod(containers=[container(env=[{"name": "REDIS_SERVICE_HOST", "value": "10.96.5.5"}])])),
    ("env valueFrom", pod(containers=[container(env=[{"name": "REDIS_SERVICE_HOST", "valueFrom": CM_REF}])]),
     pod(containers=[container(env=[{"name": "REDIS_SERVICE_HOST",
                                      "valueFrom": {"configMapKeyRef": dict(CM_REF["configMapKeyRef"],
                                                                            optional=True)}}])])),
    ("env absent or empty", pod(containers=[container()]), pod(containers=[container(env=[])])),
    ("envFrom prefix", pod(containers=[container(envFrom=[{"configMapRef": {"name": "c"}, "prefix": "REDIS_"}])]),
     pod(containers=[container(envFrom=[{"configMapRef": {"name": "c"}, "prefix": "X_"}])])),
    ("container field", pod(containers=[container("a")]), pod(containers=[], init=[container("a")])),
    ("container index", pod(containers=[container("a", env=SHADOW), container("b", env=[])]),
     pod(containers=[container("a", env=[]), container("b", env=SHADOW)])),
    ("enableServiceLinks", pod(annotations={ANNOTATION_ORIGINAL: "true"}, links=False),
     pod(annotations={ANNOTATION_ORIGINAL: "true"})),
    ("metadata absent", {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [container()]}},
     {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": [container()]}}),
    ("annotations absent", pod(), pod(annotations={})),
    ("reinvocation", pod(annotations={ANNOTATION_ORIGINAL: "true"}), pod(annotations={"other": "x"})),
]


def catalog() -> ServiceCatalog:
    index = ClusterIndex(implicit_namespaces=True)
    index.begin()
    for obj in (svc("default", "kubernetes", "10.96.0.1", ("https", 443, "TCP")), svc("shop", "redis", "10.96.5.5", (6379,)),
                svc("other", "db", "10.96.6.6", (5432,))):
        index.upsert(service_from_dict(obj))
    index.commit()
    index.mark_synced(True)
    return ServiceCatalog(index)


def answer(cat: ServiceCatalog, obj: dict, uid: str = "u", settings: Settings = Settings()) -> dict:
    """The AdmissionReview response for `obj` in `shop`, without its uid."""
    outcome = review(json.dumps(admission_review(copy.deepcopy(obj), "shop", uid=uid)).encode(), cat, settings)
    response = dict(outcome.body["response"])
    assert response.pop("uid") == uid
    return response


@pytest.mark.parametrize("what, a, b", CASES, ids=[c[0] for c in CASES])
def test_pods_differing_in_one_input_get_their_own_answer(what, a, b):
    fresh = answer(catalog(), b)  # nothing remembered: computed
    assert answer(catalog(), a) != fresh, f"{what}: the case must change the answer to test anything"
    warm = catalog()
    answer(warm, a)
    assert warm.answers.misses == 1 and len(warm.answers) == 1
    assert answer(warm, b) == fresh, f"{what}: pod B got pod A's remembered answer"
    assert answer(warm, a, uid="again") == answer(catalog(), a) and warm.answers.hits == 1


def test_replicas_share_one_answer_and_a_service_change_drops_it():
    cat = catalog()
    first = answer(cat, pod(name="web-1"))
    assert answer(cat, pod(name="web-2"), uid="u2") == first and (cat.answers.hits, cat.answers.misses) == (1, 1)
    kept = cat.answers.bytes
    assert kept > 2 * len(first["patch"])  # the patch as text and as bytes
    # a change in another namespace keeps the plan and its answers
    cat.index.begin()
    cat.index.upsert(service_from_dict(svc("other", "cache", "10.96.7.7", (11211,))))
    cat.index.commit()
    assert len(cat.answers) == 1 and cat.answers.bytes == kept
    # one in the pod's namespace drops them; the next answer has the new service
    cat.index.begin()
    cat.index.upsert(service_from_dict(svc("shop", "api", "10.96.8.8", (8080,))))
    cat.index.commit()
    assert len(cat.answers) == 0 and cat.answers.bytes == 0
    env = [op for op in decoded_patch(answer(cat, pod(name="web-3"))) if op["path"] == "/spec/containers/0/env"]
    assert {"name": "API_SERVICE_HOST", "value": "10.96.8.8"} in env[0]["value"]


def test_keep_enable_service_links_gets_its_own_answer():
    cat = catalog()
    default = answer(cat, pod())
    keep = answer(cat, pod(), settings=Settings(disable_kubelet_links=False))
    assert default != keep and answer(catalog(), pod(), settings=Settings(disable_kubelet_links=False)) == keep


def test_memo_bounds_entries_and_bytes():
    memo = AnswerMemo(max_entries=2, max_bytes=100)
    memo.put(1, "a", "A", 10)
    memo.put(1, "b", "B", 10)
    assert memo.get(1, "a") == "A"  # now "b" is the least recently used
    memo.put(2, "c", "C", 10)
    assert (memo.get(1, "b"), memo.get(1, "a"), memo.get(2, "c")) == (None, "A", "C") and memo.bytes == 20
    memo.put(2, "d", "D", 95)  # over the byte bound with anything else: the rest goes
    assert len(memo) == 1 and memo.get(2, "d") == "D" and memo.bytes == 95
    memo.put(3, "e", "E", 101)  # alone larger than the bound: not kept
    assert memo.get(3, "e") is None and memo.bytes == 95
    memo.put(2, "d", "D2", 5)  # replaced, counted once
    assert memo.bytes == 5 and memo.get(2, "d") == "D2"
    memo.put(3, "f", "F", 5)
    memo.drop(2)
    assert len(memo) == 1 and memo.get(2, "d") is None and memo.get(3, "f") == "F" and memo.bytes == 5


def test_a_plan_pushed_out_of_the_plan_memo_takes_its_answers(monkeypatch):
    import webhook.cluster
    monkeypatch.setattr(webhook.cluster, "MEMO_SIZE", 1)
    cat = catalog()
    answer(cat, pod())
    assert len(cat.answers) == 1
    answer(cat, pod(annotations={"kdns.io/services": "redis"}))  # another plan: the first one is forgotten
    assert len(cat.answers) == 1 and cat.answers.bytes == cat.answers._entries[next(iter(cat.answers._entries))][1]


def test_replicas_over_https_are_answered_from_the_memo(webhook):
    webhook.set_objects(*BASE, svc("shop", "redis", "10.96.5.5", (6379,)))
    shape = {"containers": [container(env=SHADOW)]}
    patched, first = webhook.admit(pod(name="web-0", **shape))
    assert [e["name"] for e in patched["spec"]["containers"][0]["env"]][:1] == ["KUBERNETES_SERVICE_HOST"]
    assert any("shadowing" in w for w in first["warnings"])
    hits = webhook.metric("kdns_webhook_answer_memo_hits_total")
    for i in (1, 2):
        _, response = webhook.admit(pod(name=f"web-{i}", **shape))
        assert dict(response, uid="") == dict(first, uid="")
    assert webhook.metric("kdns_webhook_answer_memo_hits_total") == hits + 2
    assert webhook.metric("kdns_webhook_answer_memo_bytes") >= 2 * len(first["patch"])


@pytest.mark.parametrize("uid", ["u", "é\u2028\"\\", "\ud800x"])
def test_the_answer_is_written_as_json_dumps_writes_it(uid):
    """review.dump writes the base64 patch without json.dumps scanning it; every other byte is json.dumps's."""
    cat = catalog()
    for obj in (pod(containers=[container(env=SHADOW)]), pod(annotations={"kdns.io/service-links": "false"}), []):
        body = review(json.dumps(admission_review(obj, "shop", uid=uid)).encode(), cat, Settings()).body
        assert dump(body) == json.dumps(body).encode()

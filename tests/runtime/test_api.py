"""The production API on Ray Serve over HTTP: keys, quotas, usage with two ingress replicas
(and after killing one, and the ledger), limits, request ids, client compatibility
(the real Cohere SDK; Jina and TEI bodies as their clients send them), Ray metrics.
Two small models; one Serve instance for the module (the fuzz test shares it)."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from serve_app.service.auth import hash_key
from tests.conftest import app_args, free_port, start_serve_app, wait_until

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L2 = "cross-encoder/ms-marco-MiniLM-L2-v2"
KEYS = {
    "main": "rr-main-key-for-tests",
    "billing": "rr-billing-key-for-tests",
    "slow": "rr-one-request-per-1000s",
    "small": "rr-five-documents-per-minute",
    "fuzz": "rr-fuzz-key",
    "cascade": "rr-cascade-billing-key",
}
MAX_BODY = 65536
FUZZ_EXAMPLES = 40  # per operation
METRICS_PORT = free_port()
QUERY = "how do cross-encoders rerank search results"
DOCS = [
    "A cross-encoder reads the query and the document together.",
    "Bi-encoders embed queries and documents separately.",
    "",
    "The weather in Lisbon is mild in winter.",
]


def bearer(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key_id]}"}


@pytest.fixture(scope="module")
def usage_db(tmp_path_factory):
    return tmp_path_factory.mktemp("ledger") / "usage.db"


@pytest.fixture(scope="module")
def url(checkpoint_root, usage_db):
    quotas = {
        "slow": {"requests_per_second": 0.001},
        "small": {"documents_per_minute": 5},
    }
    args = app_args(
        checkpoint_root,
        [TINY, L2],
        default_model=L2,
        ingress={"num_cpus": 0.1, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
        auth={
            "enabled": True,
            "keys": [
                {"id": key_id, "sha256": hash_key(key), "quota": quotas.get(key_id)}
                for key_id, key in KEYS.items()
            ],
        },
        limits={
            "max_documents_per_request": 150,
            "max_body_bytes": MAX_BODY,
            "max_query_chars": 2000,
            "max_top_n": 40,
        },
        pricing={"default_usd_per_1k_documents": 0.008, "usd_per_1k_documents": {TINY: 0.004}},
        usage={"sqlite_path": str(usage_db), "timeout_s": 1},
        chunking={"long_documents": "chunk"},  # as the shipped configs
    )
    yield from start_serve_app(
        args,
        _metrics_export_port=METRICS_PORT,
        _system_config={"metrics_report_interval_ms": 500},
    )


def post(url: str, path: str, body, key: str | None = "main", **kw) -> httpx.Response:
    headers = {**(bearer(key) if key else {}), **kw.pop("headers", {})}
    if not isinstance(body, (dict, list)):  # raw bytes, text or a generator (chunked)
        return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=60, **kw)
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60, **kw)


def assert_error(r: httpx.Response, status: int, type_: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == type_ and error["message"], error
    if param is not None:
        assert error["param"] == param
    assert r.headers["x-request-id"]
    return error


def usage(url: str, key_id: str) -> dict:
    r = httpx.get(f"{url}/v1/usage", headers=bearer(key_id), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# -- keys and request ids ----------------------------------------------------------------


def test_keys_are_required_except_on_health_and_docs(url):
    body = {"query": QUERY, "documents": DOCS}
    assert_error(post(url, "/v1/rerank", body, key=None), 401, "unauthorized")
    assert_error(
        post(url, "/v1/rerank", body, key=None, headers={"Authorization": "Bearer not-a-key"}),
        401,
        "unauthorized",
    )
    assert_error(
        post(url, "/v1/rerank", body, key=None, headers={"Authorization": KEYS["main"]}),
        401,
        "unauthorized",
    )
    assert_error(httpx.get(f"{url}/v1/models", timeout=10), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/v1/usage", timeout=10), 401, "unauthorized")
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
    assert post(url, "/v1/rerank", body).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=bearer("main"), timeout=30).status_code == 200


def test_every_response_carries_a_request_id_echoing_the_clients(url):
    mine = post(
        url,
        "/v1/rerank",
        {"query": "q", "documents": ["a"]},
        headers={"X-Request-ID": "client-chosen-id-42"},
    )
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "client-chosen-id-42"
    generated = {
        post(url, "/v1/rerank", {"query": "q", "documents": ["a"]}).headers["x-request-id"],
        post(url, "/v1/rerank", {"query": "q"}).headers["x-request-id"],  # 422
        httpx.get(f"{url}/healthz", timeout=10).headers["x-request-id"],
        httpx.get(f"{url}/no/such/path", headers=bearer("main"), timeout=10).headers[
            "x-request-id"
        ],
        httpx.get(f"{url}/v1/usage", timeout=10).headers["x-request-id"],  # 401
    }
    assert len(generated) == 5 and all(len(i) >= 16 for i in generated)


# -- compatibility -----------------------------------------------------------------------


def test_cohere_v2_sdk_works_unchanged(url):
    import cohere

    client = cohere.ClientV2(api_key=KEYS["main"], base_url=url, client_name="compat-test")
    response = client.rerank(model=TINY, query=QUERY, documents=DOCS, top_n=3)
    assert len(response.results) == 3
    assert all(0.0 <= r.relevance_score <= 1.0 for r in response.results)
    assert [r.relevance_score for r in response.results] == sorted(
        (r.relevance_score for r in response.results), reverse=True
    )
    assert response.meta.billed_units.search_units == 1
    assert response.id.startswith("rerank-")
    # Same ranking as our own API.
    ours = post(url, "/v1/rerank", {"model": TINY, "query": QUERY, "documents": DOCS}).json()
    assert [r.index for r in response.results] == [r["index"] for r in ours["results"][:3]]

    # The v1 client (POST /v1/rerank), with object documents and returned documents.
    v1 = cohere.Client(api_key=KEYS["main"], base_url=url)
    old = v1.rerank(
        model=TINY,
        query=QUERY,
        documents=[{"text": d} for d in DOCS],
        top_n=3,
        return_documents=True,
    )
    assert [r.index for r in old.results] == [r.index for r in response.results]
    assert [r.document.text for r in old.results] == [DOCS[r.index] for r in old.results]

    bad = cohere.ClientV2(api_key="wrong", base_url=url)
    with pytest.raises(cohere.errors.UnauthorizedError):
        bad.rerank(model=TINY, query=QUERY, documents=DOCS)
    with pytest.raises(cohere.errors.NotFoundError):
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)


def test_a_long_document_is_chunked_and_the_cohere_sdk_reads_the_answer(url):
    import cohere

    filler = " ".join(f"filler{i % 89} words" for i in range(1000))
    long_doc = f"{filler} {DOCS[0]} {filler}"
    docs = [DOCS[1], long_doc]
    body = {"model": TINY, "query": QUERY, "documents": docs, "raw_scores": True}
    chunked = post(url, "/v1/rerank", body).json()
    truncated = post(url, "/v1/rerank", {**body, "long_documents": "truncate"}).json()
    long_result = next(r for r in chunked["results"] if r["index"] == 1)
    assert long_result["chunks"] >= 4
    assert chunked["usage"]["windows"] == 1 + long_result["chunks"]
    span = long_result["span"]
    assert 0 <= span["start"] < span["end"] <= len(long_doc)
    assert all("chunks" not in r for r in truncated["results"])
    short = [
        next(r for r in answer["results"] if r["index"] == 0) for answer in (chunked, truncated)
    ]
    assert short[0]["relevance_score"] == pytest.approx(short[1]["relevance_score"], abs=1e-6)
    # The SDK parses the extra fields away and sees the same ranking.
    client = cohere.ClientV2(api_key=KEYS["main"], base_url=url, client_name="compat-test")
    response = client.rerank(model=TINY, query=QUERY, documents=docs)
    assert [r.index for r in response.results] == [r["index"] for r in chunked["results"]]


def test_cohere_v2_request_exactly_as_the_sdk_sends_it(url):
    # The body and headers cohere.ClientV2.rerank puts on the wire.
    r = post(
        url,
        "/v2/rerank",
        {
            "model": L2,
            "query": QUERY,
            "documents": DOCS * 30,
            "top_n": 2,
            "max_tokens_per_doc": 4096,
        },
        key=None,
        headers={
            "Authorization": f"Bearer {KEYS['main']}",
            "X-Client-Name": "my-app",
            "X-Fern-Language": "Python",
            "X-Fern-SDK-Name": "cohere",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 2 and all("document" not in x for x in body["results"])
    assert body["meta"]["billed_units"]["search_units"] == math.ceil(len(DOCS) * 30 / 100)


def test_max_tokens_per_doc_cuts_documents_before_scoring(url):
    long_doc = "paris is the capital of france and has many museums"
    cut = post(
        url,
        "/v1/rerank",
        {
            "model": L2,
            "query": QUERY,
            "documents": [long_doc],
            "max_tokens_per_doc": 3,
            "raw_scores": True,
        },
    ).json()
    by_hand = post(
        url,
        "/v1/rerank",
        {"model": L2, "query": QUERY, "documents": ["paris is the"], "raw_scores": True},
    ).json()
    full = post(
        url,
        "/v1/rerank",
        {"model": L2, "query": QUERY, "documents": [long_doc], "raw_scores": True},
    ).json()
    assert cut["results"][0]["relevance_score"] == pytest.approx(
        by_hand["results"][0]["relevance_score"], abs=1e-5
    )
    assert cut["results"][0]["relevance_score"] != pytest.approx(
        full["results"][0]["relevance_score"], abs=1e-5
    )
    assert cut["results"][0]["document"]["text"] == long_doc  # returned as sent


def test_jina_request_exactly_as_its_clients_send_it(url):
    r = post(
        url,
        "/v1/rerank",
        {"model": TINY, "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == TINY and body["usage"]["total_tokens"] > len(DOCS)
    assert [x["document"]["text"] for x in body["results"]] == [
        DOCS[x["index"]] for x in body["results"]
    ]
    assert len(body["results"]) == 3


def test_tei_rerank_answers_a_bare_array(url):
    body = {
        "query": QUERY,
        "texts": DOCS,
        "raw_scores": False,
        "return_text": True,
        "truncate": True,
    }
    r = post(url, "/rerank", body)
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(results) == len(DOCS)
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    assert all(x["text"] == DOCS[x["index"]] and 0 <= x["score"] <= 1 for x in results)
    raw = post(url, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert all(set(x) == {"index", "score"} for x in raw)
    ours = post(url, "/v1/rerank", {"query": QUERY, "documents": DOCS, "raw_scores": True}).json()
    assert [x["index"] for x in raw] == [x["index"] for x in ours["results"]]
    assert [x["score"] for x in raw] == pytest.approx(
        [x["relevance_score"] for x in ours["results"]], abs=1e-5
    )
    assert_error(
        post(url, "/rerank", {"query": QUERY, "texts": []}), 422, "invalid_request", "texts"
    )
    assert_error(
        post(url, "/rerank", {"query": QUERY, "texts": ["a"], "truncation_direction": "Left"}),
        422,
        "invalid_request",
        "truncation_direction",
    )


# -- limits ------------------------------------------------------------------------------


def test_limits_are_enforced_with_clear_errors(url):
    assert_error(
        post(url, "/v1/rerank", {"query": "q", "documents": ["d"] * 151}),
        422,
        "invalid_request",
        "documents",
    )
    assert_error(
        post(url, "/rerank", {"query": "q", "texts": ["d"] * 151}), 422, "invalid_request", "texts"
    )
    assert_error(
        post(url, "/v1/rerank", {"query": "q" * 2001, "documents": ["d"]}),
        422,
        "invalid_request",
        "query",
    )
    assert_error(
        post(url, "/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 41}),
        422,
        "invalid_request",
        "top_n",
    )
    big = {"query": "q", "documents": ["x" * 1000] * 70}
    assert_error(post(url, "/v1/rerank", big), 413, "request_too_large")

    def chunked():
        yield b'{"query": "q", "documents": ['
        for _ in range(70):
            yield b'"' + b"x" * 1000 + b'",'
        yield b'"x"]}'

    assert_error(
        post(url, "/v1/rerank", chunked(), headers={"content-type": "application/json"}),
        413,
        "request_too_large",
    )
    # Client input that no tokenizer can take is a 422, not a failed model replica.
    assert_error(
        post(
            url,
            "/v1/rerank",
            '{"query": "q", "documents": ["ok", "a\\ud800"]}',
            headers={"content-type": "application/json"},
        ),
        422,
        "invalid_request",
        "documents.1",
    )
    huge = post(url, "/v2/rerank", {"query": "q", "documents": ["d"], "max_tokens_per_doc": 10**30})
    assert huge.status_code == 200, huge.text
    # top_n beyond the documents returns them all; empty strings are scored.
    ok = post(url, "/v1/rerank", {"query": "q", "documents": ["", "d"], "top_n": 40})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


# -- quotas ------------------------------------------------------------------------------


def test_request_rate_quota_answers_429_with_retry_after(url):
    body = {"query": "q", "documents": ["d"]}
    assert post(url, "/v1/rerank", body, key="slow").status_code == 200
    # Two ingress replicas share one bucket: the next requests are refused wherever they land.
    for _ in range(4):
        r = post(url, "/v1/rerank", body, key="slow")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) > 100
    assert usage(url, "slow")["requests"] == 1
    assert post(url, "/v1/rerank", body, key="main").status_code == 200  # other keys unaffected


def test_document_quota_answers_429_and_refusals_cost_nothing(url):
    assert (
        post(url, "/v1/rerank", {"query": "q", "documents": ["a"] * 3}, key="small").status_code
        == 200
    )
    r = post(url, "/v1/rerank", {"query": "q", "documents": ["a"] * 3}, key="small")
    assert_error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # More than a whole minute's allowance: no wait helps, so not a 429 with Retry-After.
    too_many = post(url, "/v1/rerank", {"query": "q", "documents": ["a"] * 6}, key="small")
    assert "retry-after" not in too_many.headers
    assert "never" in assert_error(too_many, 422, "invalid_request", "documents")["message"]
    assert (
        post(url, "/v1/rerank", {"query": "q", "documents": ["a"] * 2}, key="small").status_code
        == 200
    )
    assert usage(url, "small")["documents"] == 5


# -- usage -------------------------------------------------------------------------------


def _ingress_replicas() -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "RerankIngress" in a["name"]
    )


def _running(deployment: str, count: int) -> bool:
    from ray import serve

    status = serve.status().applications["rerank"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0) == count


def _send_batch(url: str, n: int, seed: int) -> tuple[int, int, dict[str, int]]:
    """n requests at once, some invalid; (requests, documents) of the successful ones."""
    bodies = []
    for i in range(n):
        model = (TINY, L2)[(i + seed) % 2]
        docs = [f"document {j} for request {i}" for j in range(1 + (i * 7 + seed) % 9)]
        bodies.append({"model": model, "query": f"query {i}", "documents": docs})
        if i % 5 == 0:
            bodies.append({"model": model, "query": "q", "documents": docs, "top_n": 0})
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda b: post(url, "/v1/rerank", b, key="billing"), bodies))
    ok = [(b, r) for b, r in zip(bodies, responses) if r.status_code == 200]
    assert all(r.status_code in (200, 422) for r in responses)
    assert len(ok) == n
    per_model: dict[str, int] = {}
    for b, r in ok:
        assert r.json()["usage"]["documents"] == len(b["documents"])
        per_model[b["model"]] = per_model.get(b["model"], 0) + len(b["documents"])
    return len(ok), sum(per_model.values()), per_model


def test_a_cascade_is_billed_each_stage_at_its_models_price(url):
    body = {
        "model": "cascade",
        "cascade": {"first": TINY, "second": L2, "keep": 2},
        "query": QUERY,
        "documents": DOCS,
    }
    r = post(url, "/v1/rerank", body, key="cascade")
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["documents"] == len(DOCS) + 2
    totals = usage(url, "cascade")
    # All four at TinyBERT's $0.004 per 1k, then the best two at L2's (the default) $0.008.
    assert totals["cost_usd"] == pytest.approx((4 * 0.004 + 2 * 0.008) / 1000, rel=1e-12)
    assert totals["models"]["cascade"]["documents"] == len(DOCS) + 2


def test_usage_is_exact_across_ingress_replicas_and_a_replica_kill(url):
    import ray

    assert len(_ingress_replicas()) == 2
    requests, documents, per_model = _send_batch(url, 30, seed=1)
    totals = usage(url, "billing")
    assert (totals["requests"], totals["documents"]) == (requests, documents)
    assert {m: u["documents"] for m, u in totals["models"].items()} == per_model
    expected_cost = per_model.get(TINY, 0) * 0.004 / 1000 + per_model.get(L2, 0) * 0.008 / 1000
    assert totals["cost_usd"] == pytest.approx(expected_cost, rel=1e-12)
    assert totals["tokens"] > documents

    victim = _ingress_replicas()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_until(
        lambda: victim not in _ingress_replicas() and _running("RerankIngress", 2),
        120,
        "a replacement ingress replica",
    )
    more_requests, more_documents, _ = _send_batch(url, 20, seed=2)
    totals = usage(url, "billing")
    assert totals["requests"] == requests + more_requests
    assert totals["documents"] == documents + more_documents


def test_usage_survives_a_ledger_restart_in_its_database(url):
    import ray

    before = usage(url, "billing")
    (ledger,) = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "UsageLedger" in a["name"]
    ]
    ray.kill(ray.get_actor(ledger, namespace="serve"), no_restart=True)
    wait_until(
        lambda: _running("UsageLedger", 1) and usage(url, "billing") == before,
        120,
        "the ledger to restart over its database",
    )
    assert (
        post(url, "/v1/rerank", {"query": "q", "documents": ["a", "b"]}, key="billing").status_code
        == 200
    )
    after = usage(url, "billing")
    assert (after["requests"], after["documents"]) == (
        before["requests"] + 1,
        before["documents"] + 2,
    )


def test_a_database_that_cannot_write_is_503_at_once_and_then_recovers(url, usage_db):
    before = usage(url, "billing")
    blocker = sqlite3.connect(usage_db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file past timeout_s
    try:
        refused = post(url, "/v1/rerank", {"query": "q", "documents": ["a"]}, key="billing")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert_error(refused, 503, "ledger_unavailable")
    assert refused.headers["retry-after"] == "1"
    assert usage(url, "billing") == before  # refused: not billed
    ok = post(url, "/v1/rerank", {"query": "q", "documents": ["a"]}, key="billing")
    assert ok.status_code == 200
    assert usage(url, "billing")["requests"] == before["requests"] + 1


# -- metrics -----------------------------------------------------------------------------


def _scrape() -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+-]+|NaN)$", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def _total(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_ray_metrics_give_service_totals_across_ingress_replicas(url):
    base = _scrape()
    before = _total(base, "ray_rerank_documents_total", model=TINY)
    before_ok = _total(base, "ray_rerank_requests_total", model=TINY, status="200")
    before_401 = _total(base, "ray_rerank_requests_total", status="401")
    before_unauthorized = _total(base, "ray_rerank_request_failures_total", type="unauthorized")
    bodies = [
        {"model": TINY, "query": f"q{i}", "documents": ["a"] * (1 + i % 4)} for i in range(12)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(
            r.status_code == 200 for r in pool.map(lambda b: post(url, "/v1/rerank", b), bodies)
        )
    sent = sum(len(b["documents"]) for b in bodies)
    assert post(url, "/v1/rerank", bodies[0], key=None).status_code == 401

    def settled() -> bool:
        s = _scrape()
        return (
            _total(s, "ray_rerank_documents_total", model=TINY) == before + sent
            and _total(s, "ray_rerank_requests_total", model=TINY, status="200")
            == before_ok + len(bodies)
            and _total(s, "ray_rerank_requests_total", status="401") == before_401 + 1
            and _total(s, "ray_rerank_request_failures_total", type="unauthorized")
            == before_unauthorized + 1
        )

    wait_until(settled, 60, "Ray's metrics agent to export the counts")
    samples = _scrape()
    names = {n for n, _ in samples}
    assert {
        "ray_rerank_request_duration_seconds_bucket",
        "ray_rerank_tokens_total",
        # Phases, one family: ingress tokenization and model calls; the replica's
        # queue wait and forward pass.
        "ray_rerank_tokenization_duration_seconds_bucket",
        "ray_rerank_model_call_duration_seconds_bucket",
        "ray_rerank_queue_duration_seconds_bucket",
        "ray_rerank_inference_duration_seconds_bucket",
        "ray_rerank_request_documents_bucket",
        # Serve's own, documented in docs/api.md: queueing, batch sizes, replicas.
        "ray_serve_deployment_request_counter_total",
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_batch_wait_time_ms_bucket",
        "ray_serve_batch_execution_time_ms_bucket",
        "ray_serve_actual_batch_size_bucket",
        "ray_serve_deployment_replica_healthy",
    } <= names, sorted(n for n in names if "serve" in n or "rerank" in n)
    healthy = {
        dict(ls).get("deployment"): v
        for (n, ls), v in samples.items()
        if n == "ray_serve_deployment_replica_healthy"
    }
    assert healthy.get("RerankIngress") is not None
    # Series come from more than one ingress replica: summing them is what gives totals.
    replicas = {dict(ls).get("replica") for (n, ls) in samples if n == "ray_rerank_requests_total"}
    assert len(replicas - {None}) >= 2


# -- OpenAPI and fuzzing -----------------------------------------------------------------


def test_openapi_describes_every_endpoint_field_and_the_bearer_scheme(url):
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {
        "/v1/rerank",
        "/v2/rerank",
        "/rerank",
        "/v1/usage",
        "/v1/models",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {
        "model",
        "query",
        "documents",
        "top_n",
        "return_documents",
        "raw_scores",
        "max_tokens_per_doc",
    } <= set(schemas["RerankRequest"]["properties"])
    assert {"query", "texts", "raw_scores", "return_text", "truncate"} <= set(
        schemas["TEIRerankRequest"]["properties"]
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for status in ("401", "413", "422", "429", "503", "504"):
        assert status in spec["paths"]["/v1/rerank"]["post"]["responses"]


def test_fuzzing_the_openapi_finds_no_server_error(url):
    """Schemathesis generates requests for every operation from the app's own OpenAPI
    (valid and invalid bodies, with a valid key); none may answer 5xx. Bounded and
    derandomised, so each run sends the same requests."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case) -> None:
            response = case.call(headers=bearer("fuzz"), timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
            )
            if response.status_code >= 400:
                assert response.json()["error"]["type"], response.text

        no_server_error()
    # It reached the models and the validators, not only the front door.
    assert 200 in statuses and 422 in statuses, sorted(set(statuses))


def test_access_logs_are_json_lines_without_keys_or_text(url):
    import glob
    import os

    import ray

    secret_query = "confidential-query-text-7f3a"
    secret_doc = "confidential-document-text-9c2e"
    r = post(
        url,
        "/v1/rerank",
        {"query": secret_query, "documents": [secret_doc]},
        headers={"X-Request-ID": "access-log-probe-1", "X-Client-Name": "probe"},
    )
    assert r.status_code == 200
    logs = os.path.join(ray._private.worker.global_worker.node.get_logs_dir_path(), "serve")

    def probe_line() -> dict | None:
        for path in glob.glob(os.path.join(logs, "replica_rerank_RerankIngress_*.log")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if '"request_id":"access-log-probe-1"' in line:
                        return json.loads(line[line.index('{"event"') :])
        return None

    wait_until(lambda: probe_line() is not None, 30, "the access log line")
    line = probe_line()
    assert line["key_id"] == "main" and line["status"] == 200 and line["documents"] == 1
    assert line["path"] == "/v1/rerank" and line["client_name"] == "probe"
    for path in glob.glob(os.path.join(logs, "*.log")):
        text = open(path, encoding="utf-8", errors="replace").read()
        for secret in (*KEYS.values(), secret_query, secret_doc):
            assert secret not in text, (path, secret)

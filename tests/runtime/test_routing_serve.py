"""Budget routing, the cascade and shadow scoring through HTTP on one Ray Serve instance with
three random-weight demo models. Nothing here asserts a time: budgets are derived from the
service's own measurements, and the test compares model mixes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_app.model.tokenization import PairEncoder
from tests.conftest import app_args, checkpoint_path, start_serve_app, wait_until

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L2 = "cross-encoder/ms-marco-MiniLM-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
BURST = 16
QUERY = "which model should rerank these passages"
DOCS = [
    f"passage {i} about reranking with cross encoders and budgets " * (3 + i % 4) for i in range(12)
]


@pytest.fixture(scope="module")
def url(checkpoint_root):
    args = app_args(
        checkpoint_root,
        [TINY, L2, L12],
        default_model=TINY,
        routing={
            "stats_interval_s": 0.25,
            "shadow": {"model": L2, "against": TINY, "fraction": 1.0},
        },
    )
    yield from start_serve_app(args)


def rerank(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=120)


def routing_state(url: str) -> dict:
    return httpx.get(f"{url}/v1/routing", timeout=30).json()


def burst(url: str, body: dict) -> list[httpx.Response]:
    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(lambda _: rerank(url, body), range(BURST)))


def drained(url: str) -> bool:
    return all(m["queued_tokens"] == 0 for m in routing_state(url)["models"].values())


def test_tight_budget_burst_shifts_the_mix_to_smaller_models(url):
    # Measure every model first, so budgets are relative to this machine's speed.
    for model in (TINY, L2, L12):
        assert rerank(url, {"model": model, "query": QUERY, "documents": DOCS}).status_code == 200
    wait_until(
        lambda: all(m["seconds_per_token"] for m in routing_state(url)["models"].values()),
        60,
        "stats from every model",
    )
    body = {"model": "auto", "query": QUERY, "documents": DOCS}

    loose = burst(url, {**body, "max_latency_ms": 1e7})
    for r in loose:
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["routing"]["policy"] == "budget" and got["routing"]["budget_met"] is True
        assert r.headers["x-rerank-model"] == got["model"]
    loose_mix = Counter(r.json()["model"] for r in loose)
    assert loose_mix == {L12: BURST}  # nothing queued can push L12 past 10^7 ms

    wait_until(lambda: drained(url), 60, "queues to drain")
    # L12 fits this budget on its own, but not behind one other request of the burst.
    tokens = loose[0].json()["usage"]["total_tokens"]
    l12 = routing_state(url)["models"][L12]
    service_ms = tokens * l12["seconds_per_token"] * 1000
    budget_ms = (l12["overhead_ms"] or 0.0) + 1.5 * service_ms
    tight = burst(url, {**body, "max_latency_ms": budget_ms})
    for r in tight:
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["routing"]["policy"] == "budget"
        assert isinstance(got["routing"]["budget_met"], bool) and got["routing"]["predicted_ms"] > 0
        assert r.headers["x-rerank-model"] == got["model"]
        assert got["usage"] == {
            "documents": len(DOCS),
            "total_tokens": tokens,
            "windows": len(DOCS),
        }
    tight_mix = Counter(r.json()["model"] for r in tight)
    assert tight_mix[L12] < loose_mix[L12]
    assert tight_mix[TINY] + tight_mix[L2] > 0

    state = routing_state(url)["models"][L12]
    assert state["stats_age_s"] is not None and state["batches_measured"] >= 2


def test_cascade_through_http_orders_and_bills_both_stages(url, checkpoint_root):
    docs = DOCS[:8]
    first = rerank(url, {"model": TINY, "query": QUERY, "documents": docs, "raw_scores": True})
    second = rerank(url, {"model": L12, "query": QUERY, "documents": docs, "raw_scores": True})
    first_order = [r["index"] for r in first.json()["results"]]
    l12_logit = {r["index"]: r["relevance_score"] for r in second.json()["results"]}
    kept = first_order[:3]
    expected = sorted(kept, key=lambda i: (-l12_logit[i], i)) + first_order[3:]

    r = rerank(
        url,
        {
            "model": "cascade",
            "cascade": {"keep": 3},
            "query": QUERY,
            "documents": docs,
            "raw_scores": True,
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert [x["index"] for x in got["results"]] == expected
    assert got["model"] == "cascade" and r.headers["x-rerank-model"] == f"{TINY},{L12}"
    assert got["routing"]["policy"] == "cascade" and got["routing"]["stages"] == [TINY, L12]
    for x in got["results"][:3]:
        assert x["relevance_score"] == pytest.approx(l12_logit[x["index"]], abs=1e-4)
    encoder = PairEncoder.from_pretrained(checkpoint_path(checkpoint_root, TINY), 64)
    lengths = encoder.encode(QUERY, docs).pair_lengths
    assert got["usage"] == {
        "documents": len(docs) + 3,
        "total_tokens": int(lengths.sum()) + int(lengths[kept].sum()),
        "windows": len(docs) + 3,
    }

    # A cascade object alone uses the configured defaults for what it leaves out.
    alone = rerank(url, {"cascade": {"keep": 3}, "query": QUERY, "documents": docs, "top_n": 2})
    assert [x["index"] for x in alone.json()["results"]] == expected[:2]


@pytest.mark.parametrize(
    "body,status,type_,param",
    [
        ({"model": "auto", "min_ndcg": 80}, 400, "budget_unsatisfiable", "min_ndcg"),
        ({"model": "auto", "max_latency_ms": -1}, 422, "invalid_request", "max_latency_ms"),
        ({"model": "auto", "min_mrr": "high"}, 422, "invalid_request", "min_mrr"),
        ({"model": "cascade", "cascade": {"keep": 0}}, 422, "invalid_request", "cascade.keep"),
        (
            {"model": "cascade", "cascade": {"second": "ms-marco-MiniLM-L6-v2"}},
            404,
            "model_not_found",
            "cascade.second",
        ),
        ({"model": L2, "cascade": {"keep": 2}}, 422, "invalid_request", "cascade"),
    ],
)
def test_budget_and_cascade_errors_are_clear_4xx(url, body, status, type_, param):
    r = rerank(url, {"query": QUERY, "documents": DOCS[:2], **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == (type_, param)
    if status == 400:
        assert L12 in error["message"]  # names the best available model
    assert rerank(url, {"model": TINY, "query": QUERY, "documents": ["ok"]}).status_code == 200


def test_shadow_scoring_records_agreement_without_changing_the_response(url):
    before = routing_state(url)["shadow"]["compared"]
    r = rerank(url, {"model": TINY, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200 and r.json()["model"] == TINY
    assert r.headers["x-rerank-model"] == TINY
    wait_until(lambda: routing_state(url)["shadow"]["compared"] > before, 60, "shadow record")
    shadow = routing_state(url)["shadow"]
    assert shadow["model"] == L2 and shadow["against"] == TINY and shadow["failed"] == 0
    assert 0.0 <= shadow["mean_overlap_at_10"] <= 1.0
    assert -1.0 <= shadow["mean_kendall_tau"] <= 1.0

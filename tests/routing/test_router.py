"""The router end to end without Ray: real tokenization, a fake `score` per model, so
budget routing, splits, in-flight queue accounting, the cascade and shadow scoring are
checked exactly and fast."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.catalog import load_catalog
from serve_app.config import AppConfig
from serve_app.errors import BudgetUnsatisfiable, InvalidRequest, ModelNotFound
from serve_app.model.tokenization import EncodedPairs, PairEncoders
from serve_app.routing.loads import LoadBoard
from serve_app.routing.router import Router
from serve_app.types import Budget, CascadeSpec, RerankRequest
from tests.conftest import checkpoint_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L2 = "cross-encoder/ms-marco-MiniLM-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
DOCS = ["a", "bb bb", "ccc ccc ccc", "dd dd dd dd", "e e e e e", "ffffff", "g g"]

# Fake models: TinyBERT prefers long documents, L12 short ones, L2 an index order.
FAKE_LOGITS = {
    TINY: lambda p: p.doc_lengths.astype(np.float32),
    L12: lambda p: -p.doc_lengths.astype(np.float32),
    L2: lambda p: np.arange(len(p), dtype=np.float32),
}


class FakeModels:
    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.tokens: list[tuple[str, int]] = []  # (model, total tokens) per call
        self.gate: asyncio.Event | None = None  # when set, L12 waits on it
        self.failing: set[str] = set()

    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        self.calls.append((model, len(pairs)))
        self.tokens.append((model, pairs.total_tokens))
        if model in self.failing:
            raise RuntimeError("replica died")
        if model == L12 and self.gate is not None:
            await self.gate.wait()
        return FAKE_LOGITS[model](pairs)


def make(
    checkpoint_root,
    routing: dict | None = None,
    default_model: str | None = None,
    model_options: dict | None = None,
):
    config = AppConfig.model_validate(
        {
            "models": [
                {
                    "name": m,
                    "source": checkpoint_path(checkpoint_root, m),
                    **(model_options or {}).get(m, {}),
                }
                for m in (TINY, L2, L12)
            ],
            "default_model": default_model or L2,
            "routing": routing or {},
        }
    )
    models = FakeModels()
    board = LoadBoard(config.enabled_models)
    # A stopped clock: predictions do not depend on how long this machine takes to tokenize.
    router = Router(
        config,
        load_catalog(),
        PairEncoders.load(config.models, 2),
        models.score,
        board,
        clock=lambda: 0.0,
    )
    return router, models, board


def request(
    query: str = "q q",
    documents: list[str] = DOCS,
    max_latency_ms: float | None = None,
    min_ndcg: float | None = None,
    min_mrr: float | None = None,
    cascade: dict | None = None,
    **fields,
) -> RerankRequest:
    return RerankRequest(
        query=query,
        texts=list(documents),
        budget=Budget.of(max_latency_ms, min_ndcg, min_mrr),
        cascade=None if cascade is None else CascadeSpec(**cascade),
        **fields,
    )


def run(router: Router, **body):
    req = request(**body)
    return asyncio.run(router.rerank(req))


@pytest.fixture(scope="module")
def plain(checkpoint_root):
    return make(checkpoint_root)


def test_named_and_default_routes_report_the_policy_and_a_prediction(plain):
    router, _, _ = plain
    named = run(router, model="ms-marco-MiniLM-L-12-v2", max_latency_ms=1e9)
    assert named.model == named.served_by == L12
    assert named.routing.policy == "named" and named.routing.predicted_ms > 0
    assert named.routing.budget_met is True
    default = run(router)
    assert default.model == L2 and default.routing.policy == "default"
    assert default.routing.budget_met is None


def test_auto_or_a_budget_without_model_uses_the_budget_policy(plain):
    router, _, _ = plain
    # budget_met only where a latency budget applied (docs/ROUTING.md): not for a floor alone.
    for body, met in (
        ({"model": "auto"}, None),
        ({"model": "AUTO", "max_latency_ms": 1e9}, True),
        ({"min_ndcg": 0.7}, None),
    ):
        out = run(router, **body)
        assert (out.model, out.routing.policy, out.routing.budget_met) == (L12, "budget", met)
    # Tiny budget: the fastest by the catalog priors, flagged as missed.
    out = run(router, model="auto", max_latency_ms=1e-6)
    assert (out.model, out.routing.budget_met) == (TINY, False)
    assert out.documents == len(DOCS) and out.total_tokens > len(DOCS)


def test_time_spent_before_the_decision_counts_against_the_budget(plain):
    router, _, _ = plain
    auto = request(model="auto", max_latency_ms=500)
    fresh = asyncio.run(router.rerank(auto, arrived=0.0))
    assert (fresh.model, fresh.routing.budget_met) == (L12, True)
    late = asyncio.run(router.rerank(auto, arrived=-1.0))  # 1 s already spent
    assert (late.model, late.routing.budget_met) == (TINY, False)
    assert late.routing.predicted_ms >= 1000


def test_a_floor_above_every_model_is_refused_naming_the_best(plain):
    router, _, _ = plain
    with pytest.raises(BudgetUnsatisfiable) as e:
        run(router, model="auto", min_ndcg=80)
    assert e.value.param == "min_ndcg"
    assert L12 in e.value.message


def test_inflight_requests_push_auto_traffic_to_smaller_models_and_back(checkpoint_root):
    router, models, board = make(checkpoint_root)
    one_request_ms = run(router, model=L12).routing.predicted_ms
    budget = 1.5 * one_request_ms  # L12 fits alone, not behind one other request

    async def scenario():
        models.gate = asyncio.Event()
        texts = list(DOCS)
        auto = request(model="auto", documents=texts, max_latency_ms=budget)
        first = asyncio.create_task(router.rerank(auto))

        async def first_is_at_l12():
            while board.inflight_tokens[L12] == 0:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(first_is_at_l12(), timeout=30)
        second = await router.rerank(auto)
        models.gate.set()
        first = await first
        third = await router.rerank(auto)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert [first.model, second.model, third.model] == [L12, L2, L12]
    assert all(o.routing.budget_met for o in (first, second, third))
    assert board.inflight_tokens == {TINY: 0, L2: 0, L12: 0}


def test_split_sends_the_configured_fraction_of_auto_traffic_and_respects_floors(checkpoint_root):
    router, _, _ = make(
        checkpoint_root, routing={"splits": [{"from": L12, "to": L2, "fraction": 0.5}]}
    )
    outs = [run(router, model="auto") for _ in range(4)]
    assert [o.model for o in outs] == [L12, L2, L12, L2]
    assert [o.routing.policy for o in outs] == ["budget", "split", "budget", "split"]
    # Named traffic is never split; a candidate below the floor is not used.
    assert run(router, model=L12).model == L12
    floored = [run(router, model="auto", min_ndcg=74).model for _ in range(2)]
    assert floored == [L12, L12]


def test_split_fraction_counts_only_requests_the_candidate_may_serve(checkpoint_root):
    # Requests whose floor excludes the candidate must not use up the split's picks:
    # otherwise plain requests alternating with floored ones are never diverted.
    router, _, _ = make(
        checkpoint_root, routing={"splits": [{"from": L12, "to": L2, "fraction": 0.5}]}
    )
    plain_models = []
    for _ in range(4):
        assert run(router, model="auto", min_ndcg=74).model == L12
        plain_models.append(run(router, model="auto").model)
    assert plain_models == [L12, L2, L12, L2]


def test_cascade_orders_kept_by_second_then_rest_by_first_and_bills_both(plain):
    router, models, _ = plain
    models.calls.clear()
    out = run(router, model="cascade", cascade={"keep": 3}, raw_scores=True)
    tiny = run(router, model=TINY, raw_scores=True)
    tiny_order = [i for i, _ in tiny.ranked]
    kept = tiny_order[:3]
    by_l12 = sorted(kept, key=lambda i: (dict(tiny.ranked)[i], i))  # L12 = -TinyBERT
    assert [i for i, _ in out.ranked] == by_l12 + tiny_order[3:]
    assert (out.model, out.served_by) == ("cascade", f"{TINY},{L12}")
    assert out.routing.policy == "cascade" and out.routing.stages == [TINY, L12]
    assert out.scored == [(TINY, len(DOCS)), (L12, 3)]  # billed per stage, at its price
    assert out.documents == len(DOCS) + 3
    kept_tokens = sum(int(dict(tiny.ranked)[i]) + 4 for i in kept)  # doc tokens + [CLS] q q [SEP]
    assert out.total_tokens == tiny.total_tokens + kept_tokens
    assert models.calls[:2] == [(TINY, len(DOCS)), (L12, 3)]


def test_chunked_documents_through_the_cascade_and_budget_routing(plain):
    router, models, _ = plain
    long = " ".join(f"river{i % 40} bank" for i in range(1500))
    docs = ["a", long, "bb bb", long + " tail"]
    models.calls.clear()
    out = run(router, model="cascade", cascade={"keep": 2}, documents=docs, long_documents="chunk")
    (_, first_pairs), (_, second_pairs) = models.calls[:2]
    assert first_pairs > len(docs) and second_pairs > 2  # windows, not documents
    assert out.scored == [(TINY, 4), (L12, 2)]  # billed per document
    assert out.windows == first_pairs + second_pairs
    # TinyBERT (longest pair best) keeps the long documents; L12 (shortest best) then scores
    # each by its last, shortest window, and that is the passage the answer gives.
    assert {i for i, _ in out.ranked[:2]} == {1, 3} and sorted(out.passages) == [1, 3]
    for i in (1, 3):
        assert out.passages[i].end == len(docs[i]) and out.passages[i].chunks > 3
    # Budget routing and the prediction price every window's tokens.
    chunked = run(router, model=L12, documents=docs, long_documents="chunk")
    truncated = run(router, model=L12, documents=docs, long_documents="truncate")
    assert chunked.total_tokens > 3 * truncated.total_tokens
    assert chunked.routing.predicted_ms > truncated.routing.predicted_ms
    assert truncated.passages == {} and truncated.windows == len(docs)


def test_cascade_object_alone_defaults_and_limits(plain):
    router, _, _ = plain
    out = run(router, cascade={"first": "ms-marco-MiniLM-L-2-v2", "keep": 100}, top_n=2)
    assert out.routing.stages == [L2, L12] and out.documents == 2 * len(DOCS)
    assert len(out.ranked) == 2 and all(0 < s < 1 for _, s in out.ranked)


@pytest.mark.parametrize(
    "body,error,param",
    [
        ({"model": "cascade", "cascade": {"first": "nope"}}, ModelNotFound, "cascade.first"),
        (
            {"model": "cascade", "cascade": {"second": "ms-marco-MiniLM-L6-v2"}},
            ModelNotFound,
            "cascade.second",
        ),
        ({"model": L12, "cascade": {"keep": 2}}, InvalidRequest, "cascade"),
        ({"model": "nope"}, ModelNotFound, "model"),
    ],
)
def test_cascade_and_model_errors(plain, body, error, param):
    router, _, _ = plain
    with pytest.raises(error) as e:
        run(router, **body)
    assert e.value.param == param


def test_shadow_scores_in_the_background_and_records_agreement(checkpoint_root):
    router, models, _ = make(
        checkpoint_root, routing={"shadow": {"model": L12, "against": TINY, "fraction": 0.5}}
    )

    async def scenario():
        outs = [await router.rerank(req) for req in requests]
        await asyncio.gather(*list(router._background))
        return outs

    requests = [request(model=m, query="q") for m in (TINY, TINY, L2, TINY, TINY)]
    outs = asyncio.run(scenario())
    assert [o.model for o in outs] == [TINY, TINY, L2, TINY, TINY]
    summary = router.agreement.as_dict()
    # Half of the 4 TinyBERT requests; L12 ranks in exactly the reverse order of TinyBERT
    # (ties aside), so the agreement is strongly negative.
    assert summary["compared"] == 2 and summary["failed"] == 0
    assert summary["mean_kendall_tau"] < -0.9
    assert [c for c in models.calls if c[0] == L12] == [(L12, len(DOCS))] * 2

    models.failing.add(L12)
    asyncio.run(scenario())
    assert router.agreement.failed == 2  # responses still fine


def test_a_shadow_model_with_its_own_encoder_cuts_documents_as_the_served_model_did(
    checkpoint_root,
):
    # L12 with another query cap has its own encoder, so its shadow pairs are re-encoded.
    router, models, _ = make(
        checkpoint_root,
        routing={"shadow": {"model": L12, "fraction": 1.0}},
        model_options={L12: {"max_query_tokens": 32}},
    )
    assert not router.encoders.same_encoding(L12, TINY)
    served_request = request(model=TINY, query="q", max_tokens_per_doc=1)

    async def scenario():
        await router.rerank(served_request)
        await asyncio.gather(*list(router._background))

    asyncio.run(scenario())
    (served,), (shadowed,) = ([t for m, t in models.tokens if m == x] for x in (TINY, L12))
    assert shadowed == served
    assert router.agreement.as_dict()["compared"] == 1


@pytest.mark.parametrize("count", [0, 1, 31, 32, 33, 100, 257])
def test_sliced_parallel_encoding_equals_one_serial_encode(plain, count, monkeypatch):
    """Requests are tokenized in slices on the pool's threads and joined: the result must
    be exactly the one-call encoding, in document order, with the query encoded once."""
    router, _, _ = plain
    texts = [f"doc {i} " + "word " * (i * 7 % 60) for i in range(count)]
    encoder = router.encoders.encoders[TINY]
    whole = encoder.encode("a query", texts)

    class CountingQueries:
        def __init__(self, backend):
            self.backend, self.calls = backend, 0

        def encode(self, *args, **kwargs):
            self.calls += 1
            return self.backend.encode(*args, **kwargs)

    queries = CountingQueries(encoder._queries)
    monkeypatch.setattr(encoder, "_queries", queries)
    sliced = asyncio.run(router.encoders.encode(TINY, "a query", texts))
    assert queries.calls == 1
    assert sliced.head.tolist() == whole.head.tolist()
    assert sliced.doc_lengths.tolist() == whole.doc_lengths.tolist()
    assert sliced.doc_ids.tolist() == whole.doc_ids.tolist()


def test_a_model_without_figures_has_no_prediction_until_measured(checkpoint_root):
    """Named, it is served with `predicted_ms`/`budget_met` null (not a made-up number);
    `auto` and the cascade around it likewise, and a floor never picks it."""
    free = "someone/tiny-reranker"
    config = AppConfig.model_validate(
        {
            "models": [
                {"name": TINY, "source": checkpoint_path(checkpoint_root, TINY)},
                {"name": free, "source": checkpoint_path(checkpoint_root, TINY)},
            ],
        }
    )
    calls: list[str] = []

    async def score(model: str, pairs: EncodedPairs) -> np.ndarray:
        calls.append(model)
        return pairs.doc_lengths.astype(np.float32)

    router = Router(
        config,
        config.catalog(),
        PairEncoders.load(config.models, 2),
        score,
        LoadBoard(config.enabled_models),
        clock=lambda: 0.0,
    )
    named = run(router, model="tiny-reranker", max_latency_ms=50)
    assert named.model == free and calls == [free]
    assert (named.routing.predicted_ms, named.routing.budget_met) == (None, None)
    # `auto` under a budget: the catalog model has a prior, the free one nothing yet.
    auto = run(router, max_latency_ms=1e-9)
    assert auto.model == TINY and auto.routing.budget_met is False
    cascade = run(router, cascade={"first": TINY, "second": free, "keep": 2})
    assert cascade.routing.predicted_ms is None and cascade.routing.stages == [TINY, free]
    assert run(router, min_ndcg=60).model == TINY
    with pytest.raises(BudgetUnsatisfiable):
        run(router, min_ndcg=70)

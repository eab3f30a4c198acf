"""Budget routing, cascade merge, traffic split sampling, shadow agreement math and the
stats bookkeeping, with synthetic stats: plain Python, no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from serve_app.catalog import load_catalog
from serve_app.config import AppConfig
from serve_app.errors import BudgetUnsatisfiable
from serve_app.model.stats import ReplicaStats
from serve_app.model.tokenization import EncodedPairs, pair_ids
from serve_app.routing.budget import BudgetPolicy, LatencyPredictor, ModelLoad
from serve_app.routing.cascade import merge
from serve_app.routing.loads import LoadBoard
from serve_app.routing.ranking import top_indices
from serve_app.routing.shadow import kendall_tau_b, overlap_at_k
from serve_app.routing.splits import FractionSampler, TrafficSplitter
from serve_app.types import Budget, as_percent

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L2 = "cross-encoder/ms-marco-MiniLM-L2-v2"
L4 = "cross-encoder/ms-marco-MiniLM-L4-v2"
L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
ALL = [TINY, L2, L4, L6, L12]

# Synthetic measured rates (seconds per token): each model ~2x the cost of the one below.
RATES = {TINY: 1e-6, L2: 2e-6, L4: 4e-6, L6: 6e-6, L12: 12e-6}
SETTLED = 10**9  # batches: the prior's weight vanishes


def measured(queued: dict[str, int] | None = None, replicas: int = 1) -> dict[str, ModelLoad]:
    queued = queued or {}
    return {m: ModelLoad(RATES[m], SETTLED, queued.get(m, 0), replicas) for m in ALL}


@pytest.fixture(scope="module")
def policy() -> BudgetPolicy:
    return BudgetPolicy(load_catalog(), ALL)


# -- budget policy ---------------------------------------------------------------------


def test_no_latency_budget_picks_the_most_accurate_model(policy):
    choice = policy.choose(Budget(), 1000, measured())
    assert choice.model == L12 and choice.budget_met is None  # no budget: nothing to meet
    assert choice.predicted_ms == pytest.approx(1000 * RATES[L12] * 1000)


def test_the_most_accurate_model_that_fits_the_budget(policy):
    # 1000 tokens: L12 12 ms, L6 6 ms, L4 4 ms.
    assert policy.choose(Budget(max_latency_ms=13), 1000, measured()).model == L12
    assert policy.choose(Budget(max_latency_ms=7), 1000, measured()).model == L6
    choice = policy.choose(Budget(max_latency_ms=5), 1000, measured())
    assert (choice.model, choice.budget_met) == (L4, True)
    assert choice.predicted_ms == pytest.approx(4.0)


def test_time_already_spent_counts_against_the_budget(policy):
    # 1000 tokens: L12 12 ms, L6 6 ms. With 5 ms spent in the ingress, 13 ms fits only L6.
    choice = policy.choose(Budget(max_latency_ms=13), 1000, measured(), spent_ms=5)
    assert (choice.model, choice.budget_met) == (L6, True)
    assert choice.predicted_ms == pytest.approx(11.0)
    late = policy.choose(Budget(max_latency_ms=13), 1000, measured(), spent_ms=20)
    assert (late.model, late.budget_met) == (TINY, False)


def test_nothing_fits_gives_the_fastest_with_budget_not_met(policy):
    choice = policy.choose(Budget(max_latency_ms=0.5), 10_000, measured())
    assert (choice.model, choice.budget_met) == (TINY, False)


def test_floor_is_respected_even_when_the_budget_is_missed(policy):
    # The floor excludes TinyBERT and MiniLM-L2; the fastest remaining is L4.
    choice = policy.choose(Budget(max_latency_ms=0.5, min_ndcg=72), 10_000, measured())
    assert (choice.model, choice.budget_met) == (L4, False)
    # An MRR floor of 39 leaves L6 (39.01) and L12 (39.02).
    choice = policy.choose(Budget(max_latency_ms=0.5, min_mrr=39), 10_000, measured())
    assert choice.model == L6
    assert policy.eligible(Budget(min_ndcg=74.31)) == [L12]


def test_floor_above_every_model_names_the_best_available(policy):
    with pytest.raises(BudgetUnsatisfiable) as e:
        policy.eligible(Budget(min_ndcg=80))
    assert e.value.param == "min_ndcg"
    assert "74.31" in str(e.value) and L12 in str(e.value)
    with pytest.raises(BudgetUnsatisfiable) as e:
        policy.choose(Budget(min_mrr=45), 10, measured())
    assert e.value.param == "min_mrr" and "39.02" in str(e.value)


def test_choice_moves_to_smaller_models_as_the_large_queue_grows_and_back_as_it_drains(
    policy,
):
    budget = Budget(max_latency_ms=20)
    tokens = 1000  # L12 alone: 12 ms
    picks = []
    for queued in [0, 500, 1000, 5000, 20_000, 5000, 1000, 0]:
        picks.append(policy.choose(budget, tokens, measured({L12: queued})).model)
    assert picks == [L12, L12, L6, L6, L6, L6, L6, L12]
    # L6 saturated too: down to L4, and back up once both drain.
    assert policy.choose(budget, tokens, measured({L12: 5000, L6: 5000})).model == L4
    assert policy.choose(budget, tokens, measured({L12: 0, L6: 0})).model == L12


def test_more_replicas_shorten_the_predicted_queue(policy):
    loads = measured({L12: 2000})
    assert policy.choose(Budget(max_latency_ms=20), 1000, loads).model == L6
    loads_4 = measured({L12: 2000}, replicas=4)
    assert policy.choose(Budget(max_latency_ms=20), 1000, loads_4).model == L12


def test_equal_predictions_prefer_the_more_accurate_model():
    catalog = load_catalog()
    policy = BudgetPolicy(catalog, [TINY, L2])
    policy.predictor.rates = lambda models, loads: {m: 1e-6 for m in models}  # an exact tie
    choice = policy.choose(Budget(max_latency_ms=0.001), 1000, {})
    assert (choice.model, choice.budget_met) == (L2, False)


def test_one_enabled_model_is_always_chosen():
    policy = BudgetPolicy(load_catalog(), [L6])
    assert policy.choose(Budget(max_latency_ms=1e-6), 100, {}).model == L6
    with pytest.raises(BudgetUnsatisfiable) as e:
        policy.eligible(Budget(min_ndcg=74.31))
    assert L6 in str(e.value)


def test_no_stats_yet_uses_catalog_priors(policy):
    prior = LatencyPredictor(load_catalog()).prior_rate
    # Priors follow the catalog's docs/s: TinyBERT (9000/s) is ~9x cheaper than L12 (960/s).
    assert prior[L12] / prior[TINY] == pytest.approx(9000 / 960)
    choice = policy.choose(Budget(), 128, {})
    assert choice.model == L12 and choice.predicted_ms == pytest.approx(1000 / 960)
    # A budget between the L6 and L12 priors for one 128-token document.
    assert policy.choose(Budget(max_latency_ms=0.8), 128, {}).model == L6


def test_unmeasured_models_get_priors_calibrated_by_measured_ones():
    catalog = load_catalog()
    predictor = LatencyPredictor(catalog)
    prior = predictor.prior_rate
    # Only TinyBERT measured, at 50x its prior (a slow CPU): the others scale alike.
    loads = {TINY: ModelLoad(prior[TINY] * 50, batches_measured=10)}
    rates = predictor.rates(ALL, loads)
    assert rates[TINY] == pytest.approx(prior[TINY] * 50)
    assert rates[L12] == pytest.approx(prior[L12] * 50)


def test_a_rate_from_few_batches_is_shrunk_towards_the_calibrated_prior():
    predictor = LatencyPredictor(load_catalog())
    prior = predictor.prior_rate
    # TinyBERT and L12 settled at 10x their priors; L4's single batch says 30x.
    loads = {
        TINY: ModelLoad(prior[TINY] * 10, SETTLED),
        L12: ModelLoad(prior[L12] * 10, SETTLED),
        L4: ModelLoad(prior[L4] * 30, batches_measured=1),
    }
    rate = predictor.rates(ALL, loads)[L4]
    # Calibration is the median ratio (10); one batch weighs 1 against the prior's 4.
    assert rate == pytest.approx(prior[L4] * (30 + 4 * 10) / 5)
    loads[L4] = ModelLoad(prior[L4] * 30, SETTLED)
    assert predictor.rates(ALL, loads)[L4] == pytest.approx(prior[L4] * 30)


# -- stats bookkeeping -----------------------------------------------------------------


def test_replica_stats_rate_over_a_window_and_pending_tokens():
    stats = ReplicaStats(window=2)
    assert stats.snapshot().seconds_per_token is None
    stats.record_batch(1.0, 1000)
    stats.record_batch(3.0, 1000)
    assert stats.snapshot().seconds_per_token == pytest.approx(2e-3)
    stats.record_batch(1.0, 1000)  # the first batch leaves the window
    assert stats.snapshot().seconds_per_token == pytest.approx(2e-3)
    stats.record_batch(1.0, 1000)
    assert stats.snapshot().seconds_per_token == pytest.approx(1e-3)
    stats.request_started(300)
    stats.request_started(200)
    stats.request_finished(300)
    snap = stats.snapshot()
    assert (snap.pending_tokens, snap.ongoing_requests, snap.batches_measured) == (200, 1, 4)


def test_load_board_counts_local_inflight_and_only_foreign_replica_load():
    board = LoadBoard([L12])
    stats = ReplicaStats()
    stats.record_batch(1.0, 1000)
    with board.dispatched(L12, 400):
        assert board.loads()[L12].queued_tokens == 400
        stats.request_started(400)  # ours, now at the replica
        stats.request_started(100)  # another ingress's
        board.update(L12, stats.snapshot(), inflight_when_sent=400)
        load = board.loads()[L12]
        assert load.queued_tokens == 500 and load.seconds_per_token == pytest.approx(1e-3)
    assert board.loads()[L12].queued_tokens == 100  # ours finished at once


# -- cascade ---------------------------------------------------------------------------


def test_cascade_merge_second_order_for_kept_then_first_order():
    first = [0.1, 0.9, 0.5, 0.7, 0.3, 0.9]
    kept = top_indices(first, 3)
    assert kept == [1, 5, 3]  # ties by index
    second = [0.2, 0.8, 0.5]  # for documents 1, 5, 3
    merged = merge(first, kept, second)
    assert [i for i, _ in merged] == [5, 3, 1, 2, 4, 0]
    assert [s for _, s in merged] == [0.8, 0.5, 0.2, 0.5, 0.3, 0.1]


def test_cascade_keeping_everything_is_the_second_models_order():
    first = [3.0, 1.0, 2.0]
    merged = merge(first, top_indices(first, 3), [0.0, 5.0, 5.0])  # docs 0, 2, 1
    assert [i for i, _ in merged] == [1, 2, 0]


def test_select_picks_the_kept_pairs_without_retokenizing():
    head = np.array([101, 7, 102], dtype=np.int32)
    docs = [[11, 102], [21, 22, 23, 102], [31, 102]]
    pairs = EncodedPairs(
        head,
        np.array([t for d in docs for t in d], dtype=np.int32),
        np.array([len(d) for d in docs], dtype=np.int32),
    )
    picked = pairs.select([2, 0])
    assert pair_ids(picked) == [[101, 7, 102, 31, 102], [101, 7, 102, 11, 102]]
    assert picked.total_tokens == 10 and len(pairs.select([])) == 0


# -- traffic split ---------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1 / 3, 1.0])
def test_fraction_sampler_picks_exactly_the_fraction_evenly(fraction):
    sample = FractionSampler(fraction)
    picks = [sample() for _ in range(300)]
    assert sum(picks) == math.floor(300 * fraction + 1e-9)
    assert sum(picks[:150]) == math.floor(150 * fraction + 1e-9)


def test_fraction_sampler_count_is_exact_where_the_float_product_falls_short():
    # 90 * 0.7 is 62.99999999999999 in floating point: 63 picks are due, not 62.
    sample = FractionSampler(0.7)
    assert sum(sample() for _ in range(90)) == 63


def test_splitter_diverts_only_its_source_model():
    splitter = TrafficSplitter([(L12, L6, 0.5)])
    assert [splitter.divert(L12) for _ in range(4)] == [None, L6, None, L6]
    assert splitter.divert(L4) is None


def test_splitter_rejects_two_splits_from_one_source():
    # One would silently replace the other: its target would never get traffic.
    with pytest.raises(ValueError, match=L12):
        TrafficSplitter([(L12, L6, 0.1), (L12, L4, 0.1)])


def test_splitter_samples_only_requests_its_target_is_eligible_for():
    splitter = TrafficSplitter([(L12, L6, 0.5)])
    assert [splitter.divert(L12, eligible=[L12]) for _ in range(3)] == [None] * 3
    assert [splitter.divert(L12, eligible=[L12, L6]) for _ in range(4)] == [None, L6, None, L6]


# -- shadow agreement ------------------------------------------------------------------


def test_overlap_at_k():
    a = list(range(20))  # best: 19..10
    assert overlap_at_k(a, a) == 1.0
    assert overlap_at_k(a, [-x for x in a]) == 0.0
    b = list(a)
    b[19], b[0] = b[0], b[19]  # document 0 enters the top 10, 19 leaves
    assert overlap_at_k(a, b) == 0.9
    assert overlap_at_k([1.0, 2.0], [2.0, 1.0]) == 1.0  # fewer than k documents


def test_kendall_tau_b_matches_the_definition():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One swap among 4 items: 5 concordant, 1 discordant of 6 pairs.
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # Ties: x = [1,1,2], y = [1,2,3]: S = 2, pairs untied in x = 2, in y = 3.
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))
    assert kendall_tau_b([1], [1]) is None and kendall_tau_b([1, 1], [1, 2]) is None


def test_kendall_tau_b_chunks_agree_with_a_brute_force_count():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, 600).astype(float)  # ties included, more rows than one chunk
    y = x + rng.normal(0, 10, 600)
    s = nx = ny = 0
    xs, ys = x.tolist(), y.tolist()
    for i in range(600):
        for j in range(i + 1, 600):
            dx = (xs[i] > xs[j]) - (xs[i] < xs[j])
            dy = (ys[i] > ys[j]) - (ys[i] < ys[j])
            s += dx * dy
            nx += dx != 0
            ny += dy != 0
    assert kendall_tau_b(x, y) == pytest.approx(s / math.sqrt(nx * ny))


# -- request and config edges ----------------------------------------------------------


def test_floors_accept_fractions_or_percent():
    assert as_percent(0.72) == pytest.approx(72.0) and as_percent(72) == 72
    assert as_percent(None) is None


def test_routing_config_names_must_be_enabled():
    base = {"models": [{"name": L6}, {"name": L12}]}
    ok = AppConfig.model_validate(
        {
            **base,
            "routing": {
                "splits": [{"from": "ms-marco-MiniLM-L-12-v2", "to": L6, "fraction": 0.1}],
                "shadow": {"model": L6, "against": L12, "fraction": 0.05},
            },
        }
    )
    assert ok.routing.splits[0].source == L12 and ok.routing.shadow.against == L12
    for routing in (
        {"splits": [{"from": L12, "to": TINY, "fraction": 0.1}]},
        {"splits": [{"from": L12, "to": L6, "fraction": 1.5}]},
        # Two splits from one model (one spelled as an alias): one would shadow the other.
        {
            "splits": [
                {"from": L12, "to": L6, "fraction": 0.1},
                {"from": "ms-marco-MiniLM-L-12-v2", "to": L6, "fraction": 0.2},
            ]
        },
        {"shadow": {"model": TINY, "fraction": 0.1}},
        {"default_budget": {"max_latency_ms": -1}},
        {"cascade": {"keep": 0}},
    ):
        with pytest.raises(ValidationError):
            AppConfig.model_validate({**base, "routing": routing})


def test_overhead_is_added_and_borrowed_by_unmeasured_models(policy):
    loads = {m: ModelLoad(RATES[m], SETTLED) for m in ALL}
    loads[L12] = ModelLoad(RATES[L12], SETTLED, overhead_ms=5.0)
    loads[L6] = ModelLoad(RATES[L6], SETTLED, overhead_ms=3.0)
    assert policy.predict(L12, 1000, loads) == pytest.approx(12.0 + 5.0)
    assert policy.predict(TINY, 1000, loads) == pytest.approx(1.0 + 4.0)  # median 4
    assert policy.choose(Budget(max_latency_ms=16), 1000, loads).model == L6


def test_load_board_learns_overhead_only_from_calls_to_an_idle_model():
    board = LoadBoard([L12])
    with board.dispatched(L12, 100):  # no rate measured yet: nothing learnt
        pass
    assert board.loads()[L12].overhead_ms is None
    stats = ReplicaStats()
    stats.record_batch(1e-9, 1000)
    board.update(L12, stats.snapshot(), inflight_when_sent=0)
    with board.dispatched(L12, 100):
        pass
    learnt = board.loads()[L12].overhead_ms
    assert learnt is not None and learnt >= 0
    with board.dispatched(L12, 100):
        with board.dispatched(L12, 100):  # dispatched behind another: not a sample
            pass
        assert board.loads()[L12].overhead_ms == learnt


# -- a model without published figures --------------------------------------------------

FREE = "BAAI/bge-reranker-base"


def with_free_model(figures: dict | None = None) -> BudgetPolicy:
    config = AppConfig.model_validate(
        {
            "models": [
                {"name": TINY},
                {"name": L12},
                {"name": FREE, "source": "/unused", "figures": figures},
            ]
        }
    )
    return BudgetPolicy(config.catalog(), config.enabled_models)


def test_a_model_without_figures_ranks_last_and_never_meets_a_floor():
    policy = with_free_model()
    assert policy.by_quality == [L12, TINY, FREE]
    assert FREE not in policy.eligible(Budget(min_ndcg=1))
    assert FREE not in policy.eligible(Budget(min_mrr=1))
    alone = AppConfig.model_validate({"models": [{"name": FREE, "source": "/unused"}]})
    only = BudgetPolicy(alone.catalog(), alone.enabled_models)
    with pytest.raises(BudgetUnsatisfiable, match="no enabled model has a published figure"):
        only.eligible(Budget(min_ndcg=1))
    assert only.eligible(Budget()) == [FREE]


def test_a_model_without_figures_is_not_predicted_until_measured():
    policy = with_free_model()
    assert policy.predict(FREE, 1000, {}) is None
    # Nothing fits the budget: the fastest of the models with a prediction, never FREE.
    choice = policy.choose(Budget(max_latency_ms=1e-6), 1000, {})
    assert (choice.model, choice.budget_met) == (TINY, False)
    # The calibration of the others' priors is untouched by it.
    loads = {FREE: ModelLoad(1e-9, SETTLED)}
    assert policy.predictor.rates([TINY], {}) == policy.predictor.rates([TINY], loads)


def test_a_measured_model_without_figures_is_routed_by_its_own_speed():
    policy = with_free_model()
    slow = {TINY: ModelLoad(1e-3, SETTLED), L12: ModelLoad(1e-2, SETTLED)}
    fast = {**slow, FREE: ModelLoad(1e-6, batches_measured=1)}
    assert policy.predictor.rates([FREE], fast)[FREE] == 1e-6  # no prior to shrink towards
    # Only FREE fits 10 ms for 1000 tokens (1 ms); the others take 1 s and 10 s.
    choice = policy.choose(Budget(max_latency_ms=10), 1000, fast)
    assert (choice.model, choice.budget_met) == (FREE, True)
    assert choice.predicted_ms == pytest.approx(1.0)
    # With room for a model with figures, that one: FREE's quality is unknown.
    assert policy.choose(Budget(max_latency_ms=2000), 1000, fast).model == TINY
    # An accuracy floor excludes it whatever its speed.
    floor = policy.choose(Budget(max_latency_ms=10, min_ndcg=60), 1000, fast)
    assert (floor.model, floor.budget_met) == (TINY, False)


def test_only_unpredicted_models_the_most_accurate_goes_unjudged():
    alone = AppConfig.model_validate({"models": [{"name": FREE, "source": "/unused"}]})
    choice = BudgetPolicy(alone.catalog(), alone.enabled_models).choose(
        Budget(max_latency_ms=5), 100, {}
    )
    assert (choice.model, choice.predicted_ms, choice.budget_met) == (FREE, None, None)


def test_figures_in_config_make_it_a_budget_candidate_like_a_catalog_model():
    policy = with_free_model(
        {"ndcg10_trec_dl19": 80.0, "mrr10_msmarco_dev": 40.0, "v100_docs_per_s": 900}
    )
    assert policy.by_quality[0] == FREE
    assert policy.eligible(Budget(min_ndcg=79)) == [FREE]
    assert policy.predictor.prior_rate[FREE] == pytest.approx(1 / (900 * 128))

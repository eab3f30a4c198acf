"""Plain-Python units: catalog, config, ranking, router, batching, schemas. No Ray."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from pydantic import ValidationError

from serve_app.batching import PackingLimits, pack_by_token_budget
from serve_app.catalog import UnknownModelError, load_catalog
from serve_app.config import AppConfig, BatchingSettings, ModelDeploymentConfig
from serve_app.ranking import rank, sigmoid
from serve_app.router import ModelRouter
from serve_app.schemas import RerankRequest

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


# -- catalog ---------------------------------------------------------------------------


def test_catalog_has_the_five_models_with_published_figures():
    catalog = load_catalog()
    assert sorted(catalog.cards) == sorted(
        [
            "cross-encoder/ms-marco-TinyBERT-L2-v2",
            "cross-encoder/ms-marco-MiniLM-L2-v2",
            "cross-encoder/ms-marco-MiniLM-L4-v2",
            "cross-encoder/ms-marco-MiniLM-L6-v2",
            "cross-encoder/ms-marco-MiniLM-L12-v2",
        ]
    )
    l12 = catalog.cards["cross-encoder/ms-marco-MiniLM-L12-v2"]
    assert (l12.num_hidden_layers, l12.hidden_size) == (12, 384)
    assert l12.ndcg10_trec_dl19 == 74.31 and l12.v100_docs_per_s == 960


@pytest.mark.parametrize(
    "spelling",
    [
        L6,
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "CROSS-ENCODER/MS-MARCO-MINILM-L6-V2",
        "ms-marco-MiniLM-L-6-v2",
        " cross-encoder/ms-marco-MiniLM-L6-v2 ",
    ],
)
def test_aliases_resolve_to_the_canonical_name(spelling):
    assert load_catalog().resolve(spelling).name == L6


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UnknownModelError) as e:
        load_catalog().resolve("cross-encoder/ms-marco-MiniLM-L7-v2")
    assert L6 in e.value.available


# -- config ----------------------------------------------------------------------------


def test_model_defaults_merge_under_each_model_and_alias_is_canonicalised():
    config = AppConfig.model_validate(
        {
            "model_defaults": {"num_gpus": 0.2, "batching": {"max_batch_size": 8}},
            "models": [
                {"name": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
                {"name": "cross-encoder/ms-marco-MiniLM-L12-v2", "num_gpus": 0.5,
                 "batching": {"batch_wait_timeout_s": 0.01}},
            ],
        }
    )
    l6, l12 = config.models
    assert l6.name == L6 and l6.num_gpus == 0.2 and l6.batching.max_batch_size == 8
    assert l12.num_gpus == 0.5
    assert l12.batching.max_batch_size == 8 and l12.batching.batch_wait_timeout_s == 0.01
    options = l12.deployment_options()
    assert options["name"] == "ms-marco-MiniLM-L12-v2"
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert options["user_config"]["batch_wait_timeout_s"] == 0.01
    assert config.default_model is None and config.enabled_models[0] == L6


@pytest.mark.parametrize(
    "bad",
    [
        {"models": []},
        {"models": [{"name": "nope"}]},
        {"models": [{"name": L6}, {"name": "cross-encoder/ms-marco-MiniLM-L-6-v2"}]},
        {"models": [{"name": L6, "num_gpus": -1}]},
        {"models": [{"name": L6, "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]},
        {"models": [{"name": L6, "unknown_knob": 1}]},
        {"models": [{"name": L6}], "default_model": "cross-encoder/ms-marco-MiniLM-L12-v2"},
        {"models": [{"name": L6}], "ingress": {"max_ongoing_requests": 64, "max_in_flight": 64}},
        {"models": [{"name": L6}], "ingress": {"tokenizer_threads": 0}},
    ],
)
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValidationError):
        AppConfig.model_validate(bad)


def test_the_ingress_sheds_before_serve_would_queue():
    default = AppConfig.model_validate({"models": [{"name": L6}]}).ingress
    assert default.admission_limit == 240 < default.max_ongoing_requests
    tuned = {"max_ongoing_requests": 64, "max_in_flight": 10}
    assert AppConfig.model_validate({"models": [{"name": L6}], "ingress": tuned}
                                    ).ingress.admission_limit == 10


def test_source_defaults_to_hub_id_or_random_checkpoint_dir(monkeypatch, tmp_path):
    assert ModelDeploymentConfig(name=L6).resolved_source() == L6
    monkeypatch.setenv("RERANK_RANDOM_CHECKPOINTS", str(tmp_path))
    demo = ModelDeploymentConfig(name=L6, random_init=True)
    assert demo.resolved_source() == str(tmp_path / "ms-marco-MiniLM-L6-v2")


# -- ranking ---------------------------------------------------------------------------


def test_rank_orders_by_score_then_index_and_cuts_to_top_n():
    logits = [0.5, 2.0, 0.5, -1.0, 2.0]
    assert [i for i, _ in rank(logits, None, raw_scores=True)] == [1, 4, 0, 2, 3]
    assert [i for i, _ in rank(logits, 2, raw_scores=True)] == [1, 4]
    assert [i for i, _ in rank(logits, 99, raw_scores=True)] == [1, 4, 0, 2, 3]


def test_relevance_score_is_sigmoid_of_logit_or_the_logit_itself():
    ((_, raw),) = rank([1.5], None, raw_scores=True)
    ((_, prob),) = rank([1.5], None, raw_scores=False)
    assert raw == 1.5
    assert prob == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_sigmoid_is_stable_at_extremes_and_saturation_does_not_reorder():
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0
    # Both saturate to 1.0 in float, yet the larger logit still ranks first.
    assert [i for i, _ in rank([40.0, 41.0], None, raw_scores=False)] == [1, 0]


# -- router ----------------------------------------------------------------------------


def test_router_routes_by_name_alias_and_default():
    router = ModelRouter(load_catalog(), [L6, "cross-encoder/ms-marco-MiniLM-L12-v2"])
    assert router.route("cross-encoder/ms-marco-MiniLM-L-6-v2").model == L6
    assert router.route(None).model == L6 and router.route(None).policy == "default"
    assert router.route("cross-encoder/ms-marco-MiniLM-L12-v2").policy == "named"


def test_router_rejects_catalog_models_that_are_not_enabled():
    router = ModelRouter(load_catalog(), [L6])
    with pytest.raises(UnknownModelError) as e:
        router.route("cross-encoder/ms-marco-TinyBERT-L2-v2")
    assert e.value.available == [L6]


# -- batching --------------------------------------------------------------------------


@pytest.mark.parametrize("budget,max_docs", [(64, 100), (100, 3), (10_000, 1000), (1, 5)])
@pytest.mark.parametrize("overhead", [0, 40, 10_000])
def test_packing_covers_every_index_once_within_budget(budget, max_docs, overhead):
    lengths = [5, 40, 12, 12, 33, 7, 50, 1, 20, 20, 19]
    batches = pack_by_token_budget(lengths, PackingLimits(budget, max_docs, overhead))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= max_docs
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1


def test_packing_groups_similar_lengths():
    lengths = [10, 100, 11, 101, 12, 102]
    assert pack_by_token_budget(lengths, PackingLimits(320, 100, 20)) == [[5, 3, 1], [4, 2, 0]]


def test_a_long_tail_passage_is_not_allowed_to_pad_the_whole_batch():
    lengths = [50] * 31 + [300]
    batches = pack_by_token_budget(lengths, PackingLimits(100_000, 32, 40))
    assert batches == [[31], list(range(31))]


def _padded_cost(batches: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + overhead for b in batches)


@pytest.mark.parametrize("seed", range(20))
def test_packing_finds_the_cheapest_cut_of_the_sorted_pairs(seed):
    # Brute force over every way of cutting the sorted pairs, limits not binding.
    rng = random.Random(seed)
    lengths = [rng.choice([8, 9, 20, 21, 60, 61, 200]) for _ in range(rng.randint(1, 10))]
    overhead = rng.choice([0, 5, 40, 400])
    ranked = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    cheapest = min(
        _padded_cost(
            [ranked[a:b] for a, b in zip((0, *cuts), (*cuts, len(ranked)))], lengths, overhead
        )
        for k in range(len(ranked))
        for cuts in itertools.combinations(range(1, len(ranked)), k)
    )
    batches = pack_by_token_budget(lengths, PackingLimits(10**9, 10**9, overhead))
    assert _padded_cost(batches, lengths, overhead) == cheapest


def test_batching_config_sets_every_packing_limit():
    settings = BatchingSettings.model_validate(
        {"max_batch_tokens": 4096, "max_batch_docs": 16, "batch_overhead_tokens": 7}
    )
    assert settings.packing == PackingLimits(4096, 16, 7)
    assert BatchingSettings().packing == PackingLimits()


def test_packing_nothing_gives_no_batches():
    assert pack_by_token_budget([], PackingLimits(1000, 10, 40)) == []


# -- schemas ---------------------------------------------------------------------------


def test_documents_accept_strings_objects_and_empty_strings():
    req = RerankRequest.model_validate(
        {"query": "q", "documents": ["a", {"text": "b", "title": "ignored"}, ""]}
    )
    assert req.document_texts() == ["a", "b", ""]
    assert req.return_documents is True and req.raw_scores is False and req.model is None


@pytest.mark.parametrize(
    "body,field",
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": "a"}, "documents"),
        ({"query": "q", "documents": ["a", 3]}, "documents"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents"),
        ({"query": 7, "documents": ["a"]}, "query"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "5"}, "top_n"),
        ({"query": "q", "documents": ["a"], "raw_scores": "yes"}, "raw_scores"),
        ({"query": "q", "documents": ["a"], "model": 5}, "model"),
    ],
)
def test_invalid_requests_name_the_offending_field(body, field):
    with pytest.raises(ValidationError) as e:
        RerankRequest.model_validate(body)
    assert e.value.errors()[0]["loc"][0] == field

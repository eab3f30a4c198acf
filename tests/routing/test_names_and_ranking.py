"""Model names and ranking: plain Python."""

from __future__ import annotations

import math

import pytest

from serve_app.catalog import load_catalog
from serve_app.errors import ModelNotFound
from serve_app.routing.names import ModelNames
from serve_app.routing.ranking import rank, sigmoid

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


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


# -- names -----------------------------------------------------------------------------


def test_names_resolve_by_name_alias_and_default():
    names = ModelNames(load_catalog(), [L6, "cross-encoder/ms-marco-MiniLM-L12-v2"])
    assert names.resolve("cross-encoder/ms-marco-MiniLM-L-6-v2").model == L6
    assert names.resolve(None).model == L6 and names.resolve(None).policy == "default"
    assert names.resolve("cross-encoder/ms-marco-MiniLM-L12-v2").policy == "named"


def test_names_refuse_catalog_models_that_are_not_enabled():
    names = ModelNames(load_catalog(), [L6])
    for requested in ("cross-encoder/ms-marco-TinyBERT-L2-v2", "nope"):
        with pytest.raises(ModelNotFound) as e:
            names.resolve(requested, "cascade.first")
        assert e.value.param == "cascade.first"
        assert e.value.message.endswith(f"is not served here; available: {L6}")

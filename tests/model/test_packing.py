"""Length-sorted token-budget packing: plain Python and numpy."""

from __future__ import annotations

import itertools
import random

import pytest

from serve_app.config import BatchingSettings
from serve_app.model.packing import PackingLimits, pack_by_token_budget

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
    assert PackingLimits.from_settings(settings) == PackingLimits(4096, 16, 7)
    assert PackingLimits.from_settings() == PackingLimits(32768, 512, 64)


def test_packing_nothing_gives_no_batches():
    assert pack_by_token_budget([], PackingLimits(1000, 10, 40)) == []

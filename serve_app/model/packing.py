"""Length-aware packing of (query, document) pairs into forward passes under a token budget.

Plain Python and numpy, no Ray or torch: Serve's `@serve.batch` gathers whole requests;
this module decides how their pairs are cut into padded model batches.

A forward pass costs about its padded tokens (`rows * longest`) plus a fixed overhead
(`load_tests/batch_cost_probe.py` measures both). Cutting the length-sorted pairs wherever
a batch happens to fill pads a whole batch to the one long tail passage it caught, and a
100-document request has few pairs to sort. So the cut points are chosen to minimise padded
tokens plus `batch_overhead_tokens` per batch (docs/PERFORMANCE.md has the effect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.config import BatchingSettings


@dataclass(frozen=True)
class PackingLimits:
    """How one forward pass may be filled. `batch_overhead_tokens` prices a pass's fixed
    cost in padded tokens. Defaults and meaning: `BatchingSettings` in config."""

    max_batch_tokens: int
    max_batch_docs: int
    batch_overhead_tokens: int

    @classmethod
    def from_settings(cls, settings: BatchingSettings = BatchingSettings()) -> PackingLimits:
        return cls(
            settings.max_batch_tokens, settings.max_batch_docs, settings.batch_overhead_tokens
        )


def pack_by_token_budget(
    lengths: Sequence[int] | np.ndarray, limits: PackingLimits
) -> list[list[int]]:
    """Group indices of `lengths` into batches, longest first, at the least estimated cost.

    A batch never exceeds `limits.max_batch_tokens` padded tokens (`len(batch) * longest`)
    unless a single pair alone does, and never holds more than `limits.max_batch_docs`
    pairs. Every index appears exactly once.

    Pairs of equal length are interchangeable, so the search runs over runs of equal
    length (at most the model's maximum length of them, whatever the number of pairs):
    a batch group spans whole runs and, where it exceeds a limit, is split into as many
    batches as the limits need.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    values, counts = np.unique(lengths, return_counts=True)
    values, counts = values[::-1], counts[::-1]  # runs, longest first
    run_start = np.concatenate(([0], np.cumsum(counts)))  # position in `order` of each run
    rows_cap = np.clip(limits.max_batch_tokens // np.maximum(values, 1), 1, limits.max_batch_docs)
    # best[b]: least cost of packing runs [0, b); came_from[b]: where its last group starts.
    best = np.zeros(len(values) + 1)
    came_from = np.zeros(len(values) + 1, dtype=np.int64)
    for b in range(1, len(values) + 1):
        rows = run_start[b] - run_start[:b]
        batches_needed = -(-rows // rows_cap[:b])
        cost = best[:b] + rows * values[:b] + limits.batch_overhead_tokens * batches_needed
        came_from[b] = a = int(np.argmin(cost))
        best[b] = cost[a]
    batches: list[list[int]] = []
    b = len(values)
    while b > 0:
        a = came_from[b]
        start, stop, cap = run_start[a], run_start[b], rows_cap[a]
        batches[:0] = [order[i : min(i + cap, stop)].tolist() for i in range(start, stop, cap)]
        b = a
    return batches

"""Length-aware packing of (query, document) pairs into forward passes under a token budget,
and their padding into id matrices.

Plain Python and numpy, no Ray or torch: Serve's `@serve.batch` gathers whole requests;
this module decides how their pairs are cut into padded model batches.

A forward pass costs about its padded tokens (`rows * longest`) plus a fixed overhead
(`load_tests/batch_cost_probe.py` measures both). Cutting the length-sorted pairs wherever
a batch happens to fill pads a whole batch to the one long tail passage it caught, and a
100-document request has few pairs to sort. So the cut points are chosen to minimise padded
tokens plus `batch_overhead_tokens` per batch (docs/PERFORMANCE.md has the effect).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serve_app.config import BatchingSettings

if TYPE_CHECKING:
    from serve_app.model.tokenization import EncodedPairs


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


@dataclass(frozen=True)
class PaddedBatch:
    """One forward pass: `pairs` index the requests' pairs laid end to end."""

    pairs: np.ndarray
    ids: np.ndarray  # (rows, width) int64 `[CLS] query [SEP] document [SEP]`, zero-padded
    lengths: np.ndarray  # int64 real tokens per row
    heads: np.ndarray  # int64 `[CLS] query [SEP]` tokens per row (segment 0)


def padded_batches(
    requests: Sequence[EncodedPairs], limits: PackingLimits, pad_multiple: int = 1
) -> Iterator[PaddedBatch]:
    """The requests' pairs packed by `pack_by_token_budget` and padded, one batch at a
    time (a GPU computes one while the host pads the next). Width is the longest pair,
    rounded up to `pad_multiple`."""
    sizes = [len(r) for r in requests]
    owner = np.repeat(np.arange(len(requests)), sizes)
    head_lengths = np.array([len(r.head) for r in requests], dtype=np.int64)
    heads = head_lengths[owner]
    lengths = np.concatenate([r.pair_lengths for r in requests]).astype(np.int64)
    # Each pair's head and document as offsets into the requests' ids laid end to end.
    head_ids = np.concatenate([r.head for r in requests])
    doc_ids = np.concatenate([r.doc_ids for r in requests])
    doc_lengths = lengths - heads
    head_start = (np.cumsum(head_lengths) - head_lengths)[owner]
    doc_start = np.cumsum(doc_lengths) - doc_lengths
    for batch in pack_by_token_budget(lengths, limits):
        b = np.asarray(batch)
        width = -(-int(lengths[b].max()) // pad_multiple) * pad_multiple
        ids = _padded_ids(
            head_ids, head_start[b], heads[b], doc_ids, doc_start[b], lengths[b], width
        )
        yield PaddedBatch(b, ids, lengths[b], heads[b])


def _padded_ids(
    head_ids: np.ndarray,
    head_start: np.ndarray,
    head_len: np.ndarray,
    doc_ids: np.ndarray,
    doc_start: np.ndarray,
    pair_len: np.ndarray,
    width: int,
) -> np.ndarray:
    """Rows of `[head][document]` ids, zero-padded to `width` (padded positions are masked
    out, so their value is irrelevant). Vectorised: no Python loop per row."""
    positions = np.arange(width)[None, :]
    in_head = positions < head_len[:, None]
    in_pair = positions < pair_len[:, None]
    from_head = np.take(head_ids, head_start[:, None] + positions, mode="clip")
    from_doc = np.take(doc_ids, doc_start[:, None] + positions - head_len[:, None], mode="clip")
    return np.where(in_head, from_head, np.where(in_pair, from_doc, 0)).astype(np.int64)

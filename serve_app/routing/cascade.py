"""Two-stage cascade: a fast model scores every document, the `keep` best go to an accurate
model; the result is the second model's order for those, then the rest in the first
model's order. Plain Python/numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_app.model.tokenization import EncodedPairs
from serve_app.routing.ranking import top_indices


def select_pairs(pairs: EncodedPairs, indices: Sequence[int]) -> EncodedPairs:
    """The pairs of `indices`, in that order, without tokenizing again."""
    starts = np.concatenate(([0], np.cumsum(pairs.doc_lengths)[:-1]))
    pieces = [pairs.doc_ids[starts[i] : starts[i] + pairs.doc_lengths[i]] for i in indices]
    doc_ids = np.concatenate(pieces) if pieces else np.empty(0, dtype=pairs.doc_ids.dtype)
    return EncodedPairs(pairs.head, doc_ids, pairs.doc_lengths[list(indices)])


def merge(
    first_logits: Sequence[float], kept: Sequence[int], second_logits: Sequence[float]
) -> list[tuple[int, float]]:
    """(index, logit) best first: kept documents by the second model's logits (ties by
    index), then the others in the first model's order. Each logit is from the model
    that placed the document."""
    if len(kept) != len(second_logits):
        raise ValueError("one second-stage logit per kept document")
    second = sorted(zip(kept, map(float, second_logits)), key=lambda p: (-p[1], p[0]))
    kept_set = set(kept)
    rest = [(i, float(first_logits[i])) for i in top_indices(first_logits) if i not in kept_set]
    return second + rest

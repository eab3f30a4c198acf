"""Ordering and scoring: the one place that turns logits into a ranked, cut result list.
Plain Python. Every path (named, budget, cascade, shadow agreement) orders through here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def sigmoid(x: float) -> float:
    # Two branches so neither exp() can overflow for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def top_indices(logits: Sequence[float], k: int | None = None) -> list[int]:
    """Indices best first, ties by index ascending, cut to `k` (None: all).

    Ordering uses the logits themselves: the sigmoid saturates in floating point, and
    must not turn two distinct logits into a tie.
    """
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    return order if k is None else order[:k]


def scored(
    ranked: Sequence[tuple[int, float]], top_n: int | None, raw_scores: bool
) -> list[tuple[int, float]]:
    """(index, logit) pairs already best first, cut to `top_n`, as the client's scores:
    the logit (`raw_scores`) or its sigmoid."""
    if top_n is not None:
        ranked = ranked[:top_n]
    if raw_scores:
        return [(i, float(s)) for i, s in ranked]
    return [(i, sigmoid(s)) for i, s in ranked]


def rank(logits: Sequence[float], top_n: int | None, raw_scores: bool) -> list[tuple[int, float]]:
    """(index, score) pairs, best first, ties by index ascending, cut to `top_n`."""
    order = top_indices(logits, top_n)
    return scored([(i, logits[i]) for i in order], None, raw_scores)

"""Turning per-document logits into the ordered, cut result list. Plain Python."""

from __future__ import annotations

import math
from collections.abc import Sequence


def sigmoid(x: float) -> float:
    # Two branches so neither exp() can overflow for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def rank(logits: Sequence[float], top_n: int | None, raw_scores: bool) -> list[tuple[int, float]]:
    """(index, score) pairs, best first, ties by index ascending, cut to `top_n`.

    Ordering uses the logits themselves: the sigmoid saturates in floating point, and
    must not turn two distinct logits into a tie.
    """
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    if top_n is not None:
        order = order[:top_n]
    score = (lambda x: float(x)) if raw_scores else sigmoid
    return [(i, score(logits[i])) for i in order]

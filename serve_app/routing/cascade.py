"""Two-stage cascade: a fast model scores every document, the `keep` best go to an accurate
model; the result is the second model's order for those, then the rest in the first
model's order. Plain Python/numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.routing.ranking import top_indices


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

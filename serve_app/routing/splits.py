"""Traffic splitting for A/B tests: send a fraction of the `auto` traffic that the budget
policy gives one model to a candidate model instead. Plain Python, no Ray.

Sampling is deterministic (an even spread, no RNG): of the first n eligible requests exactly
floor(n * fraction) are picked, so tests and small experiments see the configured fraction.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from fractions import Fraction


class FractionSampler:
    def __init__(self, fraction: float):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        self.fraction = fraction
        # Counted in exact rationals: in floats 90 * 0.7 is 62.99999999999999, one pick short.
        self._rational = Fraction(fraction).limit_denominator(10**6)
        self.seen = 0

    def __call__(self) -> bool:
        self.seen += 1
        rate = self._rational
        return math.floor(self.seen * rate) > math.floor((self.seen - 1) * rate)


class TrafficSplitter:
    def __init__(self, splits: Iterable[tuple[str, str, float]]):
        self._splits: dict[str, tuple[str, FractionSampler]] = {}
        for source, target, f in splits:
            # A second split from one source would silently replace the first.
            if source in self._splits:
                raise ValueError(f"routing.splits: more than one split from {source}")
            self._splits[source] = (target, FractionSampler(f))

    def divert(self, model: str, eligible: Collection[str] | None = None) -> str | None:
        """The candidate to use instead of `model` for this request, or None. `eligible`:
        the models this request may use (None: any)."""
        split = self._splits.get(model)
        if split is None:
            return None
        target, sample = split
        # A request the target may not serve is not counted: it must not use up a pick,
        # or the fraction of the requests that could be diverted falls short.
        if eligible is not None and target not in eligible:
            return None
        return target if sample() else None

    def describe(self) -> list[dict]:
        return [
            {"from": source, "to": target, "fraction": sample.fraction, "seen": sample.seen}
            for source, (target, sample) in self._splits.items()
        ]

"""Shadow scoring agreement: how closely a second model's ranking matches the served one.
Plain numpy; the router keeps an `AgreementSummary` for `/v1/routing` and reports each
comparison to the observer (Prometheus, through the runtime).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.routing.ranking import top_indices

OVERLAP_K = 10
_TAU_CHUNK_ROWS = 256  # bounds the pairwise sign matrix to 256 x n


def overlap_at_k(primary: Sequence[float], shadow: Sequence[float], k: int = OVERLAP_K) -> float:
    """|top-k(primary) ∩ top-k(shadow)| / min(k, n): 1.0 when both put the same documents
    in the first k places, in any order."""
    n = min(k, len(primary))
    if n == 0:
        return 1.0
    return len(set(top_indices(primary, n)) & set(top_indices(shadow, n))) / n


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two score vectors over the same documents (ties counted as
    neither concordant nor discordant); None when undefined (fewer than 2 documents, or one
    side all tied). O(n^2) work in bounded-size numpy chunks."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n = len(x)
    if n != len(y):
        raise ValueError("score vectors differ in length")
    if n < 2:
        return None
    concordance = 0.0  # sum over ordered pairs i != j of sign(dx) * sign(dy)
    untied_x = untied_y = 0.0
    for start in range(0, n, _TAU_CHUNK_ROWS):
        sx = np.sign(x[start : start + _TAU_CHUNK_ROWS, None] - x[None, :])
        sy = np.sign(y[start : start + _TAU_CHUNK_ROWS, None] - y[None, :])
        concordance += float((sx * sy).sum())
        untied_x += float(np.abs(sx).sum())
        untied_y += float(np.abs(sy).sum())
    if untied_x == 0 or untied_y == 0:
        return None
    return concordance / math.sqrt(untied_x * untied_y)


def agreement(primary: Sequence[float], shadow: Sequence[float]) -> tuple[float, float | None]:
    """(overlap@10, Kendall tau-b) of two models' scores for the same documents."""
    return overlap_at_k(primary, shadow), kendall_tau_b(primary, shadow)


@dataclass
class AgreementSummary:
    compared: int = 0
    failed: int = 0
    overlap_sum: float = 0.0
    tau_sum: float = 0.0
    tau_count: int = 0

    def add(self, overlap: float, tau: float | None) -> None:
        self.compared += 1
        self.overlap_sum += overlap
        if tau is not None:
            self.tau_sum += tau
            self.tau_count += 1

    @property
    def mean_overlap(self) -> float | None:
        return self.overlap_sum / self.compared if self.compared else None

    @property
    def mean_tau(self) -> float | None:
        return self.tau_sum / self.tau_count if self.tau_count else None

    def as_dict(self) -> dict:
        return {
            "compared": self.compared,
            "failed": self.failed,
            "mean_overlap_at_10": self.mean_overlap,
            "mean_kendall_tau": self.mean_tau,
        }

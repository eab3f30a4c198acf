"""Shadow scoring agreement: how closely a second model's ranking matches the served one.
The math is plain numpy; `ShadowMetrics` exports it through `ray.util.metrics` (Prometheus
via Ray's metrics agent) and keeps an in-process summary for `/v1/routing`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_app.cascade import top_indices

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

    def as_dict(self) -> dict:
        return {
            "compared": self.compared,
            "failed": self.failed,
            "mean_overlap_at_10": self.overlap_sum / self.compared if self.compared else None,
            "mean_kendall_tau": self.tau_sum / self.tau_count if self.tau_count else None,
        }


@dataclass
class ShadowMetrics:
    primary: str
    shadow: str
    summary: AgreementSummary = field(default_factory=AgreementSummary)
    _metrics: tuple | None = None

    def _exported(self) -> tuple:
        # Created lazily inside the Ray worker that records them. Ray histograms take only
        # positive bucket bounds, so tau (-1..1) is exported as a running mean gauge.
        if self._metrics is None:
            from ray.util import metrics

            tags = ("primary", "shadow")
            self._metrics = (
                metrics.Histogram(
                    "rerank_shadow_overlap_at_10",
                    "Overlap of the served and the shadow model's top 10 (0..1).",
                    boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99],
                    tag_keys=tags,
                ),
                metrics.Gauge(
                    "rerank_shadow_mean_overlap_at_10",
                    "Mean overlap@10 of served vs shadow rankings since start.",
                    tag_keys=tags,
                ),
                metrics.Gauge(
                    "rerank_shadow_mean_kendall_tau",
                    "Mean Kendall tau-b of served vs shadow scores since start (-1..1).",
                    tag_keys=tags,
                ),
                metrics.Counter(
                    "rerank_shadow_requests",
                    "Shadow-scored requests, by outcome (compared or failed).",
                    tag_keys=(*tags, "outcome"),
                ),
            )
        return self._metrics

    def record(self, overlap: float, tau: float | None) -> None:
        s = self.summary
        s.compared += 1
        s.overlap_sum += overlap
        if tau is not None:
            s.tau_sum += tau
            s.tau_count += 1
        overlap_hist, mean_overlap, mean_tau, requests = self._exported()
        tags = {"primary": self.primary, "shadow": self.shadow}
        overlap_hist.observe(overlap, tags=tags)
        mean_overlap.set(s.overlap_sum / s.compared, tags=tags)
        if s.tau_count:
            mean_tau.set(s.tau_sum / s.tau_count, tags=tags)
        requests.inc(1, tags={**tags, "outcome": "compared"})

    def record_failure(self) -> None:
        self.summary.failed += 1
        requests = self._exported()[-1]
        requests.inc(1, tags={"primary": self.primary, "shadow": self.shadow, "outcome": "failed"})

"""Recent traffic as one ingress replica saw it, for people (`GET /v1/traffic`, the status
page): rerank requests and errors since the replica started, and per model the latency
percentiles and documents per second over the last minute. Prometheus
(`serve_app/runtime/metrics.py`) stays the record for dashboards and alerts; this is the
at-a-glance view for a cluster that has none. Fed by the edge's `request_done`
observations, on the ingress's event loop only, so it needs no lock.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serve_app.observer import AccessRecord, Observer

WINDOW_S = 60.0
MAX_SAMPLES_PER_MODEL = 4096  # bounds memory at any rate; past it the window is shorter


@dataclass(frozen=True)
class _Sample:
    at: float
    duration_s: float
    documents: int


class RecentTraffic:
    """Counts requests to `paths` (the rerank routes); successful ones also go into their
    model's window."""

    def __init__(
        self,
        paths: frozenset[str],
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.paths = paths
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self._samples: dict[str, deque[_Sample]] = {}

    def request_done(self, record: AccessRecord) -> None:
        if record.path not in self.paths:
            return
        self.requests += 1
        failure = record.failure
        if failure is not None:
            self.errors[failure] += 1
            return
        if record.model is None:
            return
        samples = self._samples.setdefault(record.model, deque(maxlen=MAX_SAMPLES_PER_MODEL))
        samples.append(_Sample(self.clock(), record.duration_s, record.documents or 0))

    def snapshot(self, models: list[str]) -> dict:
        """Totals, and a window entry for each of `models` (served ones with no traffic
        too, with null percentiles)."""
        now = self.clock()
        # Young replicas divide by the time they have been up, not by a full window.
        span = max(min(self.window_s, now - self.started), 1e-9)
        per_model = {}
        for model in dict.fromkeys([*models, *self._samples]):
            samples = self._samples.get(model, deque())
            while samples and samples[0].at < now - self.window_s:
                samples.popleft()
            durations_ms = np.array([s.duration_s * 1000.0 for s in samples])
            per_model[model] = {
                "requests": len(samples),
                "p50_ms": _percentile(durations_ms, 50),
                "p99_ms": _percentile(durations_ms, 99),
                "docs_per_s": round(sum(s.documents for s in samples) / span, 3),
            }
        return {
            "window_s": self.window_s,
            "uptime_s": round(now - self.started, 3),
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "errors_by_type": dict(sorted(self.errors.items())),
            "models": per_model,
        }


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


class TeeObserver:
    """Hands every request to `extra` as well as to `main`; everything else to `main`."""

    def __init__(self, main: Observer, extra: RecentTraffic):
        self.main = main
        self.extra = extra

    def request_done(self, record: AccessRecord) -> None:
        try:
            self.extra.request_done(record)
        finally:
            self.main.request_done(record)

    def __getattr__(self, name: str):
        return getattr(self.main, name)

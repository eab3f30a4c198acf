"""What a model replica measures about itself, for latency prediction. Plain Python, no Ray.

A replica records each forward batch (service seconds, tokens) and the tokens of the
requests it holds (queued or running). `snapshot()` is what the ingress polls: it must be
cheap, so it is a few sums over a short window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_BATCHES = 32  # recent batches the service rate is measured over


@dataclass(frozen=True)
class ModelStatsSnapshot:
    """One replica's view, as sent to the ingress (plain data: pickles cheaply)."""

    seconds_per_token: float | None  # recent service seconds per (unpadded) pair token
    pending_tokens: int  # tokens of requests this replica holds, queued or running
    ongoing_requests: int
    batches_measured: int


class ReplicaStats:
    """Updated on the replica's event loop only, so no locks are needed."""

    def __init__(self, window: int = WINDOW_BATCHES):
        self._batches: deque[tuple[float, int]] = deque(maxlen=window)
        self._seconds = 0.0
        self._tokens = 0
        self.batches_measured = 0
        self.pending_tokens = 0
        self.ongoing_requests = 0

    def request_started(self, tokens: int) -> None:
        self.pending_tokens += tokens
        self.ongoing_requests += 1

    def request_finished(self, tokens: int) -> None:
        self.pending_tokens -= tokens
        self.ongoing_requests -= 1

    def record_batch(self, seconds: float, tokens: int) -> None:
        # Unpadded tokens: the router predicts from a request's real token count, so the
        # rate absorbs padding and per-batch overhead at the traffic's actual mix.
        if tokens <= 0:
            return
        if len(self._batches) == self._batches.maxlen:
            old_s, old_t = self._batches[0]
            self._seconds -= old_s
            self._tokens -= old_t
        self._batches.append((seconds, tokens))
        self._seconds += seconds
        self._tokens += tokens
        self.batches_measured += 1

    def snapshot(self) -> ModelStatsSnapshot:
        rate = self._seconds / self._tokens if self._tokens > 0 else None
        return ModelStatsSnapshot(
            seconds_per_token=rate,
            pending_tokens=max(0, self.pending_tokens),
            ongoing_requests=max(0, self.ongoing_requests),
            batches_measured=self.batches_measured,
        )

"""Admission: whether a model can take one more request, decided from the load board
before the request costs anything (no tokenization, truncation or model call), and how
long a refused client should wait. Plain Python: the board is read synchronously.

A model is full for this ingress when
- its Serve queue would refuse the call: Serve lets each caller hold at most
  replicas × `max_ongoing_requests` calls at the replicas plus `max_queued_requests`
  waiting (per caller, so this ingress's own count of calls in flight predicts it
  exactly, up to a replica count one poll old); or
- `max_queue_wait_s` is set and the work already queued would take longer than that to
  drain at the model's measured service rate.

`Retry-After` is the time the queued work needs to drain: queued tokens × measured
seconds per token / replicas, rounded up, at least 1 s (a 0 invites a retry storm) and
at most `RETRY_AFTER_CAP_S`. Before the rate is measured, the configured constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from serve_app.config import AppConfig
from serve_app.errors import Overloaded
from serve_app.routing.budget import ModelLoad

RETRY_AFTER_CAP_S = 30
RETRY_AFTER_MIN_S = 1


class LoadView(Protocol):
    """What admission reads; the load board (`serve_app/routing/loads.py`) is one."""

    def loads(self) -> Mapping[str, ModelLoad]: ...

    def requests_in_flight(self, model: str) -> int: ...


@dataclass(frozen=True)
class QueueBound:
    """One model's limits, as configured for its deployment."""

    max_ongoing_requests: int  # per replica (Serve's)
    max_queued_requests: int  # per caller (Serve's); -1: unbounded
    max_queue_wait_s: float | None = None  # ours; None: no bound on queued time
    fallback_retry_after_s: float = 1.0  # before a service rate is measured
    throttle: bool = False  # answer with 429 (`backpressure.status_code`)

    def calls_allowed(self, replicas: int) -> int | None:
        if self.max_queued_requests == -1:
            return None
        # No running replica is the model client's failover case (503 model_unavailable),
        # not a full queue: count at least one.
        return max(1, replicas) * self.max_ongoing_requests + self.max_queued_requests


def drain_seconds(load: ModelLoad) -> float | None:
    """How long the model's queued work takes at its measured rate; None: not measured."""
    if load.seconds_per_token is None or not load.batches_measured:
        return None
    return load.queued_tokens * load.seconds_per_token / max(1, load.replicas)


class Admission:
    def __init__(self, board: LoadView, bounds: Mapping[str, QueueBound]):
        self.board = board
        self.bounds = dict(bounds)

    @classmethod
    def from_config(cls, config: AppConfig, board: LoadView) -> Admission:
        return cls(
            board,
            {
                m.name: QueueBound(
                    max_ongoing_requests=m.max_ongoing_requests,
                    max_queued_requests=m.max_queued_requests,
                    max_queue_wait_s=m.max_queue_wait_s,
                    fallback_retry_after_s=m.backpressure.retry_after_s,
                    throttle=m.backpressure.status_code == 429,
                )
                for m in config.models
                if m.name in config.enabled_models
            },
        )

    def full_reason(self, model: str, load: ModelLoad) -> str | None:
        bound = self.bounds.get(model)
        if bound is None:
            return None
        allowed = bound.calls_allowed(load.replicas)
        if allowed is not None and self.board.requests_in_flight(model) >= allowed:
            return "its queue is full"
        drain = drain_seconds(load)
        if bound.max_queue_wait_s is not None and drain is not None:
            if drain > bound.max_queue_wait_s:
                return f"its queued work needs {drain:.1f}s, over its {bound.max_queue_wait_s}s"
        return None

    def retry_after_s(self, model: str, load: ModelLoad | None = None) -> float:
        load = load if load is not None else self.board.loads()[model]
        drain = drain_seconds(load)
        if drain is None:
            bound = self.bounds.get(model)
            return bound.fallback_retry_after_s if bound else float(RETRY_AFTER_MIN_S)
        return float(min(RETRY_AFTER_CAP_S, max(RETRY_AFTER_MIN_S, math.ceil(drain))))

    def check(self, models: Iterable[str]) -> None:
        """Raises `Overloaded` when every one of `models` is full (the request could be
        served by any of them), with the soonest of their drain times as Retry-After."""
        loads = self.board.loads()
        refusals = []
        for model in models:
            reason = self.full_reason(model, loads[model])
            if reason is None:
                return
            refusals.append((self.retry_after_s(model, loads[model]), model, reason))
        if not refusals:
            return
        retry_after, model, reason = min(refusals)
        bound = self.bounds[model]
        raise Overloaded(
            f"{model} is at capacity ({reason}); retry after the time in Retry-After",
            retry_after_s=retry_after,
            throttle=bound.throttle,
        )

    def full_models(self, models: Iterable[str]) -> set[str]:
        loads = self.board.loads()
        return {m for m in models if self.full_reason(m, loads[m]) is not None}

    def soonest_retry_after_s(self, models: Iterable[str]) -> float:
        """For a refusal that is not about one model (the ingress's own in-flight limit):
        the soonest any of them drains."""
        loads = self.board.loads()
        return min((self.retry_after_s(m, loads[m]) for m in models), default=1.0)

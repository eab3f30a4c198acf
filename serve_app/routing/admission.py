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

A request admitted holds a `Reservation`: a place counted against its model's bound from
the moment it is admitted until it has been scored or has ended otherwise. The edge takes
it before the body is read (`reserve`) and the service takes it over after the parse
(`assign`). With one model (the deployment `load_tests/soak.py` runs) the place is on that
model from the start and the service never judges again, so the two cannot disagree: a
request is refused before its body is read or not at all (Serve's own backpressure aside:
other ingress replicas' calls, a replica count one poll old). With several models the
edge cannot know which one a request names before reading it: it holds a place in the
pool of all the models' free places, and assigning it to the named model checks that
model then, so a request for a full model among free ones is still refused after the
parse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
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

    def undispatched_tokens(self, model: str) -> float: ...

    def hold(self, model: str) -> None: ...

    def unhold(self, model: str) -> None: ...


class Reservation:
    """One admitted request's place. Given back exactly once, however the request ends
    (scored, refused later, failed, cancelled, its client gone): `release` is idempotent,
    so every layer that may be the last to see the request can call it. `model`: the model
    whose bound the place counts against; None: a pooled place, or none at all."""

    def __init__(self, model: str | None, give_back: Callable[[], None] | None):
        self.model = model
        self._give_back = give_back

    @property
    def held(self) -> bool:
        return self._give_back is not None

    def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


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


def serve_queue_bound(
    max_ongoing_requests: int, max_queued_requests: int, max_replicas: int
) -> int:
    """The `max_queued_requests` to give Serve itself for a model deployment whose calls
    admission bounds (per ingress, like Serve's: replicas × `max_ongoing_requests` +
    `max_queued_requests`): twice the most admission allows, a backstop for a count gone
    wrong (it refused none of admission's calls in any run). Serve counts a call as
    waiting until a replica has accepted it and hands waiting calls to freed replica slots
    on its own schedule (with backoff), so all of one ingress's admitted calls can be
    waiting there at once, beside the stats poll, which admission does not count. At equal
    bounds Serve refused 133 calls admission had let through in 5 s at 3× load, after their
    bodies were read and parsed (the cost admission exists to avoid); with one replica's
    slots plus one poll of room, 126 in 8 s; at twice, none (`load_tests/overload.py`,
    12 documents)."""
    if max_queued_requests == -1:
        return -1
    return 2 * (max_replicas * max_ongoing_requests + max_queued_requests)


def drain_seconds(load: ModelLoad, undispatched_tokens: float = 0.0) -> float | None:
    """How long the model's queued work takes at its measured rate, with the work admitted
    but not yet dispatched; None: not measured."""
    if load.seconds_per_token is None or not load.batches_measured:
        return None
    tokens = load.queued_tokens + undispatched_tokens
    return tokens * load.seconds_per_token / max(1, load.replicas)


class Admission:
    def __init__(self, board: LoadView, bounds: Mapping[str, QueueBound]):
        self.board = board
        self.bounds = dict(bounds)
        self.pooled = 0  # pooled places held (several models; not yet assigned to one)

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
        # Held places still being parsed count too: a burst admitted in the time it takes
        # to tokenize would otherwise see an empty queue.
        drain = drain_seconds(load, self.board.undispatched_tokens(model))
        if bound.max_queue_wait_s is not None and drain is not None:
            if drain > bound.max_queue_wait_s:
                return f"its queued work needs {drain:.1f}s, over its {bound.max_queue_wait_s}s"
        return None

    def retry_after_s(self, model: str, load: ModelLoad | None = None) -> float:
        load = load if load is not None else self.board.loads()[model]
        drain = drain_seconds(load, self.board.undispatched_tokens(model))
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
        if refusals:
            self._refuse(refusals)

    def reserve(self, models: Sequence[str]) -> Reservation:
        """A place for a request that one of `models` will score, taken before anything of
        it is read; raises `Overloaded` when there is none. One model: a place on it.
        Several: a place in the pool of their free places (see the module's docstring)."""
        if len(models) == 1:
            self.check(models)
            return self._hold(models[0])
        self.check(models)
        free = self.free_places(models)
        if free is not None and free <= self.pooled:
            loads = self.board.loads()
            self._refuse(
                [
                    (self.retry_after_s(m, loads[m]), m, "its free places are all taken")
                    for m in models
                ]
            )
        self.pooled += 1
        return Reservation(None, self._unpool)

    def assign(self, reservation: Reservation | None, model: str) -> Reservation:
        """The place of a request `model` will score, once the request says which. A place
        already held on `model` is kept and not judged again (the edge decided); any other
        is given back and `model` is checked now. Raises `Overloaded` when it is full."""
        if reservation is not None and reservation.held and reservation.model == model:
            return reservation
        if reservation is not None:
            reservation.release()
        self.check([model])
        return self._hold(model)

    def assign_any(self, reservation: Reservation | None, models: Sequence[str]) -> Reservation:
        """For a request whose model is chosen after tokenization (`auto`): a place held on
        one of `models` is kept; otherwise it is given back, the request is refused when
        every one is full, and no place is held (its call counts once dispatched)."""
        if reservation is not None and reservation.held and reservation.model in models:
            return reservation
        if reservation is not None:
            reservation.release()
        self.check(models)
        return Reservation(None, None)

    def free_places(self, models: Iterable[str]) -> int | None:
        """Calls `models` can still take from this ingress; None: no bound."""
        loads = self.board.loads()
        free = 0
        for model in models:
            bound = self.bounds.get(model)
            allowed = bound.calls_allowed(loads[model].replicas) if bound else None
            if allowed is None and self.full_reason(model, loads[model]) is None:
                return None
            if allowed is not None and self.full_reason(model, loads[model]) is None:
                free += allowed - self.board.requests_in_flight(model)
        return free

    def _hold(self, model: str) -> Reservation:
        self.board.hold(model)
        return Reservation(model, lambda: self.board.unhold(model))

    def _unpool(self) -> None:
        self.pooled -= 1

    def _refuse(self, refusals: list[tuple[float, str, str]]) -> None:
        retry_after, model, reason = min(refusals)
        raise Overloaded(
            f"{model} is at capacity ({reason}); retry after the time in Retry-After",
            retry_after_s=retry_after,
            throttle=self.bounds[model].throttle,
        )

    def full_models(self, models: Iterable[str]) -> set[str]:
        loads = self.board.loads()
        return {m for m in models if self.full_reason(m, loads[m]) is not None}

    def soonest_retry_after_s(self, models: Iterable[str]) -> float:
        """For a refusal that is not about one model (the ingress's own in-flight limit):
        the soonest any of them drains."""
        loads = self.board.loads()
        return min((self.retry_after_s(m, loads[m]) for m in models), default=1.0)

"""What the router knows of each model's load, on the ingress side: the latest stats a
model replica reported (fed in by the runtime's poller, `serve_app/runtime/serve_state.py`)
and the tokens this ingress has dispatched and not yet had back. Plain Python: routing
reads `loads()` synchronously and never awaits anything.

Queue estimate per model = this ingress's own in-flight tokens (exact, updated instantly,
so a burst spreads out at once) + what the replicas hold beyond what this ingress had in
flight when it polled (other ingress replicas' traffic, at most one poll old).

Per-call overhead (transport, batch wait: what a call costs beyond its service time) is
learnt only from calls dispatched to an idle model, so a misjudged queue never feeds back
into it and a model that stops getting traffic is not penalised forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serve_app.model.stats import ModelStatsSnapshot
from serve_app.routing.budget import ModelLoad

OVERHEAD_EWMA_WEIGHT = 0.2  # weight of the newest overhead sample
TOKENS_EWMA_WEIGHT = 0.1  # weight of the newest call's tokens in the per-call mean


class LoadBoard:
    def __init__(self, models: list[str]):
        self.models = list(models)
        self.snapshots: dict[str, ModelStatsSnapshot] = {}
        self.polled_at: dict[str, float] = {}  # time.monotonic() of the last good poll
        self.replicas: dict[str, int] = {m: 1 for m in models}
        self.inflight_tokens: dict[str, int] = {m: 0 for m in models}
        # Calls this ingress has made and not had back: Serve bounds them per caller, so
        # admission compares them with the model's queue bound (`routing/admission.py`).
        self.inflight_requests: dict[str, int] = {m: 0 for m in models}
        # Requests admitted for a model and not finished, counted from admission on: the
        # ones still being read, parsed or tokenized hold their place too, so a burst
        # cannot all pass admission before any of it reaches the model.
        self.admitted: dict[str, int] = {m: 0 for m in models}
        self._foreign_tokens: dict[str, int] = {m: 0 for m in models}
        self.overhead_ms: dict[str, float] = {}
        self.tokens_per_call: dict[str, float] = {}  # recent calls' mean, per model

    @contextmanager
    def dispatched(self, model: str, tokens: int) -> Iterator[None]:
        snap = self.snapshots.get(model)
        idle = self.inflight_tokens[model] + self._foreign_tokens[model] == 0
        rate = snap.seconds_per_token if snap else None
        started = time.perf_counter()
        self.inflight_tokens[model] += tokens
        self.inflight_requests[model] += 1
        mean = self.tokens_per_call.get(model)
        self.tokens_per_call[model] = (
            tokens if mean is None else mean + TOKENS_EWMA_WEIGHT * (tokens - mean)
        )
        try:
            yield
        finally:
            self.inflight_tokens[model] -= tokens
            self.inflight_requests[model] -= 1
        if idle and rate is not None:
            sample = max(0.0, (time.perf_counter() - started) * 1000.0 - tokens * rate * 1000.0)
            old = self.overhead_ms.get(model)
            self.overhead_ms[model] = (
                sample if old is None else old + OVERHEAD_EWMA_WEIGHT * (sample - old)
            )

    def update(self, model: str, snapshot: ModelStatsSnapshot, inflight_when_sent: int) -> None:
        """`snapshot` is one replica's; replicas behind one handle carry similar load."""
        held = snapshot.pending_tokens * self.replicas.get(model, 1)
        self.snapshots[model] = snapshot
        self.polled_at[model] = time.monotonic()
        self._foreign_tokens[model] = max(0, held - inflight_when_sent)

    def hold(self, model: str) -> None:
        """One request admitted for `model` (a reservation, `routing/admission.py`)."""
        self.admitted[model] += 1

    def unhold(self, model: str) -> None:
        self.admitted[model] -= 1

    def undispatched_tokens(self, model: str) -> float:
        """Work admitted for `model` that `loads()` cannot show yet: requests holding a
        place but still being read, parsed or tokenized, at the mean tokens of its recent
        calls (0 before the first call)."""
        waiting = max(0, self.admitted[model] - self.inflight_requests[model])
        return waiting * self.tokens_per_call.get(model, 0.0)

    def requests_in_flight(self, model: str) -> int:
        """Calls this ingress holds at the model, counting admitted requests not yet
        dispatched (a call outside an admission, e.g. shadow scoring, counts when the
        admitted ones do not outnumber the calls)."""
        return max(self.admitted[model], self.inflight_requests[model])

    def loads(self) -> dict[str, ModelLoad]:
        out = {}
        for m in self.models:
            snap = self.snapshots.get(m)
            out[m] = ModelLoad(
                seconds_per_token=snap.seconds_per_token if snap else None,
                batches_measured=snap.batches_measured if snap else 0,
                queued_tokens=self.inflight_tokens[m] + self._foreign_tokens[m],
                replicas=self.replicas.get(m, 1),
                overhead_ms=self.overhead_ms.get(m),
            )
        return out

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        loads = self.loads()
        return {
            m: {
                "seconds_per_token": loads[m].seconds_per_token,
                "queued_tokens": loads[m].queued_tokens,
                "inflight_tokens": self.inflight_tokens[m],
                "inflight_requests": self.inflight_requests[m],
                "replicas": loads[m].replicas,
                "overhead_ms": loads[m].overhead_ms,
                "batches_measured": loads[m].batches_measured,
                "stats_age_s": round(now - self.polled_at[m], 3) if m in self.polled_at else None,
            }
            for m in self.models
        }

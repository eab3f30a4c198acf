"""The ingress side of the stats plumbing: a background task polls every model deployment's
`stats()` about every `interval_s` and keeps the latest snapshot; the ingress also counts the
tokens it has dispatched and not yet had back. Routing reads `loads()` synchronously: it
never awaits anything.

Queue estimate per model = this ingress's own in-flight tokens (exact, updated instantly,
so a burst spreads out at once) + what the replicas hold beyond what this ingress had in
flight when it polled (other ingress replicas' traffic, at most one poll old).

Per-call overhead (transport, batch wait: what a call costs beyond its service time) is
learnt only from calls dispatched to an idle model, so a misjudged queue never feeds back
into it and a model that stops getting traffic is not penalised forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from serve_app.budget import ModelLoad
from serve_app.model_stats import ModelStatsSnapshot

logger = logging.getLogger("ray.serve")

REPLICA_COUNT_EVERY_S = 5.0
OVERHEAD_EWMA_WEIGHT = 0.2  # weight of the newest overhead sample


def replica_states(details: Mapping[str, Any], app_name: str) -> dict[str, dict[str, int]]:
    """Replicas per state (RUNNING, STARTING, ...) per deployment of `app_name`, from the
    Serve controller's instance details: the dict of the public `ServeInstanceDetails`
    schema, as the dashboard's REST API serves it."""
    app = details.get("applications", {}).get(app_name) or {}
    return {
        name: dict(Counter(str(getattr(r["state"], "value", r["state"])) for r in d["replicas"]))
        for name, d in (app.get("deployments") or {}).items()
    }


class LoadBoard:
    def __init__(self, models: list[str]):
        self.models = list(models)
        self.snapshots: dict[str, ModelStatsSnapshot] = {}
        self.polled_at: dict[str, float] = {}  # time.monotonic() of the last good poll
        self.replicas: dict[str, int] = {m: 1 for m in models}
        self.inflight_tokens: dict[str, int] = {m: 0 for m in models}
        self._foreign_tokens: dict[str, int] = {m: 0 for m in models}
        self.overhead_ms: dict[str, float] = {}

    @contextmanager
    def dispatched(self, model: str, tokens: int) -> Iterator[None]:
        snap = self.snapshots.get(model)
        idle = self.inflight_tokens[model] + self._foreign_tokens[model] == 0
        rate = snap.seconds_per_token if snap else None
        started = time.perf_counter()
        self.inflight_tokens[model] += tokens
        try:
            yield
        finally:
            self.inflight_tokens[model] -= tokens
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
                "replicas": loads[m].replicas,
                "overhead_ms": loads[m].overhead_ms,
                "batches_measured": loads[m].batches_measured,
                "stats_age_s": round(now - self.polled_at[m], 3) if m in self.polled_at else None,
            }
            for m in self.models
        }


class StatsPoller:
    """Keeps `board` fresh. `fetch(model)` awaits one replica's `stats()`;
    `replica_counts()` (blocking; run in a thread) maps model -> running replicas;
    `no_replica(model)` is told of each model with none running."""

    def __init__(
        self,
        board: LoadBoard,
        fetch: Callable[[str], Any],
        replica_counts: Callable[[], Mapping[str, int]] | None,
        interval_s: float,
        no_replica: Callable[[str], None] = lambda model: None,
    ):
        self.board = board
        self.fetch = fetch
        self.replica_counts = replica_counts
        self.interval_s = interval_s
        self.no_replica = no_replica
        self._task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _poll_model(self, model: str) -> None:
        sent_with = self.board.inflight_tokens[model]
        try:
            snapshot = await asyncio.wait_for(self.fetch(model), timeout=2 * self.interval_s)
        except Exception:  # a busy or restarting replica: keep the last snapshot
            return
        self.board.update(model, snapshot, sent_with)

    async def _run(self) -> None:
        next_replica_count = 0.0
        while True:
            started = time.monotonic()
            if self.replica_counts is not None and started >= next_replica_count:
                next_replica_count = started + REPLICA_COUNT_EVERY_S
                try:
                    counts = await asyncio.to_thread(self.replica_counts)
                    for model, n in counts.items():
                        self.board.replicas[model] = max(1, n)
                        if n == 0:
                            self.no_replica(model)
                except Exception:
                    logger.debug("replica counts unavailable", exc_info=True)
            await asyncio.gather(*(self._poll_model(m) for m in self.board.models))
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

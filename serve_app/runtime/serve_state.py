"""What Serve knows that routing needs: replica counts per deployment (from the
controller) and each model replica's recent stats, polled into the router's `LoadBoard`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from serve_app.model.stats import ModelStatsSnapshot
from serve_app.routing.loads import LoadBoard

logger = logging.getLogger("ray.serve")

REPLICA_COUNT_EVERY_S = 5.0


def serve_details() -> dict:
    """The Serve controller's instance details: a dict of the public `ServeInstanceDetails`
    schema. `serve.status()` builds pydantic objects from the same dict and cloudpickles
    every deployment's request-router class on the way, holding the GIL and so stalling
    the ingress's event loop for tens of milliseconds a call. The accessor is private;
    tests/runtime/test_serve_app.py reads replica counts through it."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def replica_states(details: Mapping[str, Any], app_name: str) -> dict[str, dict[str, int]]:
    """Replicas per state (RUNNING, STARTING, ...) per deployment of `app_name`, from the
    Serve controller's instance details, as the dashboard's REST API serves them."""
    app = details.get("applications", {}).get(app_name) or {}
    return {
        name: dict(Counter(str(getattr(r["state"], "value", r["state"])) for r in d["replicas"]))
        for name, d in (app.get("deployments") or {}).items()
    }


class StatsPoller:
    """Keeps `board` fresh: every `interval_s` each model's `fetch(model)` (one replica's
    stats); every 5 s `replica_counts()` (blocking; run in a thread: model -> running
    replicas). `no_replica(model)` is told of each model with none running: a model whose
    node died with no call in flight gives its waiting calls no error, and without this
    they would wait out `model_calls.timeout_s`. `replica_running(model)` is told of each
    model with one running again, and of each whose replica answered a stats poll: a mark
    set while a model was still starting must not outlive it (a slow model whose calls
    all exceed the failover deadline would otherwise never clear it)."""

    def __init__(
        self,
        board: LoadBoard,
        fetch: Callable[[str], Awaitable[ModelStatsSnapshot]],
        replica_counts: Callable[[], Mapping[str, int]] | None,
        interval_s: float,
        no_replica: Callable[[str], None] = lambda model: None,
        replica_running: Callable[[str], None] = lambda model: None,
    ):
        self.board = board
        self.fetch = fetch
        self.replica_counts = replica_counts
        self.interval_s = interval_s
        self.no_replica = no_replica
        self.replica_running = replica_running

    async def _poll_model(self, model: str) -> None:
        sent_with = self.board.inflight_tokens[model]
        try:
            snapshot = await asyncio.wait_for(self.fetch(model), timeout=2 * self.interval_s)
            self.board.update(model, snapshot, sent_with)
        except Exception:  # a busy or restarting replica: keep the last snapshot
            return
        self.replica_running(model)

    async def run(self) -> None:
        """Poll until cancelled."""
        next_replica_count = 0.0
        while True:
            started = time.monotonic()
            if self.replica_counts is not None and started >= next_replica_count:
                next_replica_count = started + REPLICA_COUNT_EVERY_S
                try:
                    counts = await asyncio.to_thread(self.replica_counts)
                    for model, n in counts.items():
                        self.board.replicas[model] = max(1, n)
                        (self.replica_running if n else self.no_replica)(model)
                except Exception:
                    logger.debug("replica counts unavailable", exc_info=True)
            await asyncio.gather(*(self._poll_model(m) for m in self.board.models))
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

"""Serve state for routing: replica counts from the controller's details, and the stats
poller. No Ray cluster: the controller's dict and the fetches are synthetic."""

from __future__ import annotations

import asyncio
import enum
import time

from serve_app.model.stats import ReplicaStats
from serve_app.routing.loads import LoadBoard
from serve_app.runtime.serve_state import StatsPoller, replica_states

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


def test_replica_states_are_counted_per_deployment_of_the_named_app_only():
    class State(str, enum.Enum):  # what the controller's dict holds (a str enum)
        RUNNING = "RUNNING"
        STARTING = "STARTING"

    details = {
        "applications": {
            "rerank": {
                "deployments": {
                    "ms-marco-MiniLM-L6-v2": {
                        "replicas": [
                            {"state": State.RUNNING},
                            {"state": State.STARTING},
                            {"state": "RUNNING"},
                        ]
                    },
                    "UsageLedger": {"replicas": []},
                }
            },
            "other": {"deployments": {"x": {"replicas": [{"state": "RUNNING"}]}}},
        }
    }
    assert replica_states(details, "rerank") == {
        "ms-marco-MiniLM-L6-v2": {"RUNNING": 2, "STARTING": 1},
        "UsageLedger": {},
    }
    assert replica_states(details, "absent") == {}
    assert replica_states({}, "rerank") == {}


def test_stats_poller_reports_models_with_no_running_replica():
    board = LoadBoard([TINY, L6])
    told: list[str] = []

    async def scenario() -> None:
        poller = StatsPoller(
            board,
            fetch=lambda model: asyncio.sleep(0, ReplicaStats().snapshot()),
            replica_counts=lambda: {TINY: 0, L6: 2},
            interval_s=0.01,
            no_replica=told.append,
        )
        task = asyncio.get_running_loop().create_task(poller.run())
        deadline = time.monotonic() + 30
        while not told and time.monotonic() < deadline:  # the first round, then stop
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(scenario())
    assert told and set(told) == {TINY}
    assert board.replicas == {TINY: 1, L6: 2}


def test_a_model_marked_while_starting_is_cleared_once_it_runs():
    """Marked unavailable while its replica starts, a model whose calls all take longer
    than the failover deadline could never clear the mark by a call: Serve reporting a
    running replica (or the replica answering a stats poll) clears it."""
    from serve_app.config import ModelCallSettings
    from serve_app.runtime.model_client import ModelCaller

    caller = ModelCaller(ModelCallSettings())
    board = LoadBoard([TINY, L6])
    counts = {TINY: 0, L6: 0}

    async def scenario() -> None:
        poller = StatsPoller(
            board,
            fetch=lambda model: asyncio.sleep(3600),  # no stats answer: only counts tell
            replica_counts=lambda: dict(counts),
            interval_s=0.01,
            no_replica=caller.mark_unavailable,
            replica_running=caller.mark_available,
        )
        await poller_round(poller, lambda: caller.unavailable == {TINY, L6})
        counts[L6] = 1
        await poller_round(poller, lambda: caller.unavailable == {TINY})

    asyncio.run(scenario())


async def poller_round(poller: StatsPoller, done) -> None:
    """Run `poller` from scratch until `done()` (replica counts are read on its first
    round), then stop it."""
    task = asyncio.get_running_loop().create_task(poller.run())
    deadline = time.monotonic() + 30
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    task.cancel()
    assert done()

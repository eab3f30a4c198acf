"""The PostgreSQL store against a real server (`.ci/run` starts one; skipped without
`RERANK_TEST_POSTGRES_DSN`): several writers at once, a connection killed mid-batch, and
the server stopped and started under load behind the whole HTTP API."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time

import httpx
import psycopg
import pytest

from serve_app.service.usage import LocalLedger
from serve_app.storage import StoreUnavailable
from serve_app.storage.postgres import PostgresUsageStore
from tests.api.test_app import AUTH, BODY, build_parts, client
from tests.storage.conftest import POSTGRES_DSN, needs_postgres, record

pytestmark = [pytest.mark.anyio, needs_postgres]


async def poll(condition, what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_concurrent_inserts_from_several_writers_are_exact(postgres_dsn):
    """Four writers (as ingress replicas, or an old and a new ledger, would be), each with
    its own pool, send overlapping batches at once: every id is stored by exactly one."""
    writers = [PostgresUsageStore(postgres_dsn, pool_size=2) for _ in range(4)]
    ids = [f"r{i}" for i in range(2000)]

    async def write(w: int) -> list[bool]:
        mine = [rid for i, rid in enumerate(ids) if i % 4 in (w, (w + 1) % 4)]  # each id twice
        flags = []
        for start in range(0, len(mine), 100):
            batch = [record(rid, 1 + int(rid[1:]) % 7) for rid in mine[start : start + 100]]
            flags += await writers[w].insert(batch)
        return flags

    results = await asyncio.gather(*(write(w) for w in range(4)))
    assert sum(sum(flags) for flags in results) == len(ids)
    totals = await writers[0].usage("alice")
    assert totals["requests"] == len(ids)
    assert totals["documents"] == sum(1 + i % 7 for i in range(len(ids)))
    for w in writers:
        await w.close()


async def blocked_inserts(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%INSERT INTO usage_records%'"
        )
        return [pid for (pid,) in await cursor.fetchall()]


async def kill(dsn: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("kills", [1, 2])
async def test_a_connection_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    postgres_dsn, kills
):
    """The batch's INSERT is held on a table lock, and its backend is terminated while it
    waits: mid-batch by construction. One kill: the store's retry on a fresh connection
    stores the batch. Two: the store gives up (nothing stored); the ledger's caller
    retries the same records later. Either way each id counts once."""
    store = PostgresUsageStore(postgres_dsn, pool_size=2)
    batch = [record(f"r{i}", 2) for i in range(500)]
    assert await store.insert(batch[:100]) == [True] * 100  # stored; the reply "was lost"
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as locker:
        await locker.execute("LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE")
        writing = asyncio.create_task(store.insert(batch))
        killed: set[int] = set()
        for _ in range(kills):

            async def next_blocked() -> bool:
                return bool(set(await blocked_inserts(postgres_dsn)) - killed)

            await poll(next_blocked, "the batch's INSERT to wait on the lock")
            (pid,) = set(await blocked_inserts(postgres_dsn)) - killed
            await kill(postgres_dsn, pid)
            killed.add(pid)
        if kills == 2:
            with pytest.raises(StoreUnavailable):
                await writing
            assert (await store.usage("alice"))["requests"] == 100  # nothing half-stored
        await locker.commit()  # release the lock
    flags = await writing if kills == 1 else await store.insert(batch)
    assert flags == [False] * 100 + [True] * 400
    totals = await store.usage("alice")
    assert (totals["requests"], totals["documents"]) == (500, 1000)
    await store.close()


def pg_ctl(*args: str) -> None:
    ctl = os.environ["RERANK_TEST_POSTGRES_CTL"]
    subprocess.run([*shlex.split(ctl), *args], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(
    not os.environ.get("RERANK_TEST_POSTGRES_CTL"),
    reason="needs RERANK_TEST_POSTGRES_CTL, pg_ctl for a server the test may stop (.ci/run)",
)
async def test_the_server_stopped_under_load_gives_503s_then_recovers_without_a_restart(
    checkpoint_root, tmp_path, postgres_dsn
):
    store = PostgresUsageStore(postgres_dsn, pool_size=2, timeout_s=1)
    ledger = LocalLedger(store=store)
    app, _, _ = build_parts(checkpoint_root, tmp_path / "unused.db", ledger)
    answers: list[httpx.Response] = []
    stop = asyncio.Event()

    async def load(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            answers.append(await c.post("/v1/rerank", json=BODY, headers=AUTH))

    def count(status: int, since: int = 0) -> int:
        return sum(r.status_code == status for r in answers[since:])

    async with client(app) as c:
        workers = [asyncio.create_task(load(c)) for _ in range(4)]
        try:
            await poll(lambda: _true(count(200) >= 20), "load to be served")
            pg_ctl("stop", "-m", "fast", "-w")
            stopped_at = len(answers)
            await poll(lambda: _true(count(503, stopped_at) >= 4), "503s while the server is down")
            pg_ctl("start", "-w", "-t", "60")
            started_at = len(answers)
            await poll(lambda: _true(count(200, started_at) >= 20), "recovery after restart")
        finally:
            stop.set()
            await asyncio.gather(*workers)
            if not await _server_up():
                pg_ctl("start", "-w", "-t", "60")
        usage = (await c.get("/v1/usage", headers=AUTH)).json()
    refused = [r for r in answers if r.status_code != 200]
    assert {r.status_code for r in refused} == {503}
    assert all(r.json()["error"]["type"] == "ledger_unavailable" for r in refused)
    assert all(r.headers["retry-after"] == "1" for r in refused)
    # Exactly the answered requests are billed: none of the refused, none twice.
    assert usage["requests"] == count(200) and usage["documents"] == 3 * count(200)
    await ledger.close()


async def _true(value: bool) -> bool:
    return value


async def _server_up() -> bool:
    try:
        async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


async def test_a_write_stuck_past_timeout_s_is_unavailable_and_stores_nothing(postgres_dsn):
    store = PostgresUsageStore(postgres_dsn, pool_size=2, timeout_s=0.3)
    assert await store.insert([record("a")]) == [True]
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as locker:
        await locker.execute("LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable):  # statement_timeout, twice: not a hang
            await store.insert([record("b")])
        await locker.commit()
    assert (await store.usage("alice"))["requests"] == 1
    assert await store.insert([record("b"), record("a")]) == [True, False]
    await store.close()

"""Both usage stores against the same contract: each request id stored once (the
database enforces it, across batches, within a batch and across a reopen), exact cost
sums, and usage by day, month and model within dates, from SQL."""

from __future__ import annotations

import sqlite3
from datetime import date
from decimal import Decimal

import pytest

from serve_app.storage.base import UsageQuery, UsageRecord
from tests.storage.conftest import TINY, record

pytestmark = pytest.mark.anyio
DAY = 86_400.0


async def test_a_request_id_is_stored_once_across_batches_and_within_one(store):
    s, _ = store
    assert await s.insert([record("a", 2), record("b", 3), record("a", 2)]) == [True, True, False]
    assert await s.insert([record("b", 3), record("c", 1)]) == [False, True]
    assert await s.insert([]) == []
    totals = await s.usage("alice")
    assert (totals["requests"], totals["documents"], totals["tokens"]) == (3, 6, 60)


async def test_usage_is_unchanged_after_reopening_and_a_retry_still_counts_once(store):
    s, reopen = store
    await s.insert([record(f"r{i}", i + 1) for i in range(20)])
    before = await s.usage("alice")
    await s.close()
    again = reopen()  # a restarted ledger: same database, empty memory
    assert await again.usage("alice") == before
    assert await again.insert([record("r3", 4), record("new", 1)]) == [False, True]
    assert (await again.usage("alice"))["documents"] == before["documents"] + 1


async def test_cost_is_exact_per_model_and_for_a_cascade(store):
    s, _ = store
    await s.insert([record(f"r{i}", 1) for i in range(10_000)])  # 10,000 x $0.008/1k
    await s.insert([record("t", 3, model=TINY, price=0.004, windows=7)])
    cascade = UsageRecord("c", "alice", "cascade", 120, 9000, ((100, 0.004), (20, 0.012)))
    await s.insert([cascade])
    totals = await s.usage("alice")
    assert totals["models"]["cross-encoder/ms-marco-MiniLM-L6-v2"]["cost_usd"] == 0.08
    assert totals["models"][TINY] == {
        "requests": 1,
        "documents": 3,
        "tokens": 30,
        "windows": 7,
        "cost_usd": 0.000012,
    }
    assert totals["models"]["cascade"]["cost_usd"] == 0.00064
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.080652")


async def test_usage_by_day_month_and_model_within_dates(store):
    s, _ = store
    nov30 = 1_764_460_800.0  # 2025-11-30 00:00 UTC
    await s.insert(
        [
            record("n", 1, served_at=nov30 + DAY - 1),  # 23:59:59 on Nov 30
            record("d1", 2, served_at=nov30 + DAY),  # Dec 1, midnight
            record("d1b", 3, model=TINY, served_at=nov30 + DAY + 3600),
            record("d2", 4, served_at=nov30 + 2 * DAY + 10),
            record("other", 100, key_id="bob", served_at=nov30 + DAY),
        ]
    )
    by_day = await s.usage("alice", UsageQuery(group_by="day"))
    assert [(g["group"], g["documents"]) for g in by_day["groups"]] == [
        ("2025-11-30", 1),
        ("2025-12-01", 5),
        ("2025-12-02", 4),
    ]
    assert by_day["documents"] == 10 and by_day["group_by"] == "day"
    by_month = await s.usage("alice", UsageQuery(group_by="month"))
    assert [(g["group"], g["requests"]) for g in by_month["groups"]] == [
        ("2025-11", 1),
        ("2025-12", 3),
    ]
    december_first = await s.usage(
        "alice", UsageQuery(date(2025, 12, 1), date(2025, 12, 1), "model")
    )
    assert [(g["group"], g["documents"]) for g in december_first["groups"]] == [
        ("cross-encoder/ms-marco-MiniLM-L6-v2", 2),
        (TINY, 3),
    ]
    assert december_first["documents"] == 5
    assert december_first["from"] == december_first["to"] == date(2025, 12, 1)
    from_dec2 = await s.usage("alice", UsageQuery(start=date(2025, 12, 2)))
    assert from_dec2["documents"] == 4 and "groups" not in from_dec2
    until_nov30 = await s.usage("alice", UsageQuery(end=date(2025, 11, 30)))
    assert until_nov30["documents"] == 1
    nothing = await s.usage("nobody", UsageQuery(group_by="day"))
    assert nothing["requests"] == 0 and nothing["groups"] == [] and nothing["models"] == {}


async def test_sqlite_file_is_in_wal_mode_with_its_schema_version(tmp_path):
    from serve_app.storage.sqlite import SqliteUsageStore

    path = tmp_path / "nested" / "usage.db"
    s = SqliteUsageStore(path)
    await s.insert([record("a")])
    await s.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version, name FROM schema_version").fetchall() == [
            (1, "usage_records"),
            (2, "windows"),
        ]
    reopened = SqliteUsageStore(path)  # migrations are not applied twice
    assert (await reopened.usage("alice"))["requests"] == 1
    await reopened.close()


async def test_a_version_1_file_gains_windows_equal_to_its_documents(tmp_path):
    """Rows billed before chunking scored one pair per document."""
    from serve_app.storage.base import migrations
    from serve_app.storage.sqlite import SqliteUsageStore

    path = tmp_path / "usage.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(migrations("sqlite")[0].sql)
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        conn.execute("INSERT INTO schema_version (version, name) VALUES (1, 'usage_records')")
        conn.execute(
            "INSERT INTO usage_records VALUES ('old', 'alice', ?, 4, 40, 32000, '[[4,0.008]]', 0)",
            (TINY,),
        )
    s = SqliteUsageStore(path)
    await s.insert([record("new", 2, windows=5)])
    totals = await s.usage("alice")
    await s.close()
    assert (totals["documents"], totals["windows"]) == (6, 9)


async def test_a_locked_sqlite_file_is_unavailable_not_an_error_and_then_recovers(tmp_path):
    from serve_app.storage import StoreUnavailable
    from serve_app.storage.sqlite import SqliteUsageStore

    s = SqliteUsageStore(tmp_path / "usage.db", busy_timeout_s=0.05)
    await s.insert([record("a")])
    blocker = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    with pytest.raises(StoreUnavailable):
        await s.insert([record("b")])
    blocker.execute("ROLLBACK")
    blocker.close()
    assert await s.insert([record("b"), record("a")]) == [True, False]
    assert (await s.usage("alice"))["requests"] == 2
    await s.close()


def test_postgres_takes_its_dsn_from_the_environment_only():
    from serve_app.config import UsageConfig
    from serve_app.storage import open_store
    from serve_app.storage.postgres import PostgresUsageStore

    config = UsageConfig(store="postgres", postgres_dsn_env="MY_USAGE_DSN")
    with pytest.raises(ValueError, match=r"\$MY_USAGE_DSN is not set"):
        open_store(config, environ={})
    store = open_store(config, environ={"MY_USAGE_DSN": "postgresql://u@127.0.0.1:1/db"})
    assert isinstance(store, PostgresUsageStore)  # connects on first use, not here

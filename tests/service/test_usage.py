"""Quotas (token buckets), the ledger over its usage store, and the record batcher. No Ray."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from serve_app.config import QuotaSettings, UsageConfig
from serve_app.errors import LedgerUnavailable
from serve_app.service.quotas import QuotaBook, TokenBucket, never_admitted
from serve_app.service.usage import LocalLedger, RecordBatcher, UsageRecord
from serve_app.storage.sqlite import SqliteUsageStore

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"


def test_token_bucket_refills_at_its_rate_up_to_capacity():
    bucket = TokenBucket(rate_per_s=2, capacity=4, now=0)
    assert bucket.wait_for(4, now=0) == 0
    bucket.take(4)
    assert bucket.wait_for(1, now=0) == pytest.approx(0.5)
    assert bucket.wait_for(1, now=0.5) == 0
    assert bucket.wait_for(4, now=100) == 0 and bucket.tokens == 4


def test_request_rate_quota():
    book, quota = QuotaBook(), QuotaSettings(requests_per_second=2)
    assert all(book.admit("a", quota, 1, now=0).allowed for _ in range(2))
    refused = book.admit("a", quota, 1, now=0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert "requests per second" in refused.reason
    assert book.admit("b", quota, 1, now=0).allowed  # per key
    assert book.admit("a", quota, 1, now=0.5).allowed


def test_document_quota_and_refusals_cost_nothing():
    book = QuotaBook()
    quota = QuotaSettings(requests_per_second=100, documents_per_minute=60)
    assert book.admit("a", quota, 50, now=0).allowed
    refused = book.admit("a", quota, 20, now=0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(10)
    assert book.admit("a", quota, 10, now=0).allowed  # the refusal took no tokens
    too_big = book.admit("a", quota, 61, now=1000)
    assert not too_big.allowed and "never be admitted" in too_big.reason
    assert never_admitted(quota, 61) == too_big.reason and never_admitted(quota, 60) is None
    assert never_admitted(QuotaSettings(requests_per_second=1), 10**6) is None


def test_no_quota_admits_everything():
    book = QuotaBook()
    assert all(book.admit("a", QuotaSettings(), 10**6, now=0).allowed for _ in range(100))


# -- the ledger over its store ------------------------------------------------------------


def record(
    request_id: str, documents: int, model: str = L6, price: float = 0.008, key_id: str = "alice"
) -> UsageRecord:
    return UsageRecord(request_id, key_id, model, documents, documents * 10, ((documents, price),))


@pytest.mark.anyio
async def test_ledger_counts_each_id_once_within_and_across_calls_and_restarts(tmp_path):
    config = UsageConfig(sqlite_path=str(tmp_path / "usage.db"))
    ledger = LocalLedger(config)
    assert await ledger.record([record("a", 2), record("b", 3), record("a", 2)]) == [
        True,
        True,
        False,
    ]
    assert await ledger.record([record("b", 3), record("c", 1)]) == [False, True]
    assert (await ledger.usage("alice"))["documents"] == 6
    restarted = LocalLedger(config)  # a new replica: the database has every record
    assert await restarted.usage("alice") == await ledger.usage("alice")
    assert await restarted.record([record("c", 1)]) == [False]
    await ledger.close()
    await restarted.close()


@pytest.mark.anyio
async def test_ledger_coalesces_concurrent_calls_into_few_transactions(tmp_path):
    class CountingStore(SqliteUsageStore):
        def __init__(self, path):
            super().__init__(path)
            self.batches: list[int] = []

        async def insert(self, records):
            self.batches.append(len(records))
            return await super().insert(records)

    store = CountingStore(tmp_path / "usage.db")
    ledger = LocalLedger(UsageConfig(), store=store)
    calls = [ledger.record([record(f"r{i}", 1), record(f"r{i}", 1)]) for i in range(50)]
    assert await asyncio.gather(*calls) == [[True, False]] * 50
    assert sum(store.batches) == 100 and len(store.batches) < 50
    assert (await ledger.usage("alice"))["requests"] == 50
    await ledger.close()


@pytest.mark.anyio
async def test_a_database_that_cannot_write_is_ledger_unavailable_and_nothing_is_counted(
    tmp_path,
):
    path = tmp_path / "usage.db"
    ledger = LocalLedger(UsageConfig(sqlite_path=str(path), timeout_s=0.05))
    assert await ledger.record([record("a", 1)]) == [True]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the file is locked by someone else
    with pytest.raises(LedgerUnavailable) as refused:
        await ledger.record([record("b", 1)])
    assert refused.value.retry_after_s == 1
    assert (await ledger.usage("alice"))["requests"] == 1  # WAL: readers are not blocked
    blocker.execute("ROLLBACK")
    blocker.close()
    assert (await ledger.usage("alice"))["requests"] == 1  # "b" was not counted
    assert await ledger.record([record("b", 1)]) == [True]  # and recovers by itself
    await ledger.close()


def test_the_journal_settings_are_refused_with_the_way_forward():
    with pytest.raises(ValueError, match="rerank-import-journal"):
        UsageConfig.model_validate({"journal_path": "/var/usage.jsonl"})


@pytest.mark.anyio
async def test_record_batcher_coalesces_concurrent_records_and_shares_failures():
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def send(records: list[UsageRecord]) -> list[bool]:
        calls.append([r.request_id for r in records])
        await release.wait()
        if any(r.request_id == "poison" for r in records):
            raise LedgerUnavailable("down")
        return [not r.request_id.startswith("dup") for r in records]

    batcher = RecordBatcher(send)
    first = asyncio.create_task(batcher.record(record("r0", 1)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.record(record(rid, 1))) for rid in ("r1", "dup2", "r3")]
    await asyncio.sleep(0)
    release.set()
    assert await first is True
    assert [await t for t in rest] == [True, False, True]
    assert calls == [["r0"], ["r1", "dup2", "r3"]]  # one call for all that queued meanwhile

    failing = [asyncio.create_task(batcher.record(record(rid, 1))) for rid in ("poison", "x")]
    for task in failing:
        with pytest.raises(LedgerUnavailable):
            await task
    assert await batcher.record(record("after", 1)) is True  # the batcher keeps working


def test_limits_that_alternate_in_a_rollout_never_refill_a_bucket():
    """Old and new ingress replicas send different limits for one key, in turn: each
    change keeps what is left rather than starting a full bucket."""
    book, old, new = (
        QuotaBook(),
        QuotaSettings(requests_per_second=2),
        QuotaSettings(requests_per_second=3),
    )
    admitted = sum(book.admit("k", (old, new)[i % 2], 1, now=0.0).allowed for i in range(20))
    assert admitted == 2  # the first bucket's capacity; a reset per change admitted 20
    # Time still refills, at the rate in force, up to the new capacity.
    assert book.admit("k", new, 1, now=1.0).allowed

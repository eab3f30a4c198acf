"""Quotas (token buckets), usage books, the journal, the ledger's state and the record
batcher. No Ray."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from serve_app.config import QuotaSettings, UsageConfig
from serve_app.errors import LedgerUnavailable
from serve_app.service.quotas import QuotaBook, TokenBucket, never_admitted
from serve_app.service.usage import (
    LocalLedger,
    RecordBatcher,
    UsageBook,
    UsageJournal,
    UsageRecord,
)

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


# -- usage -------------------------------------------------------------------------------


def record(
    request_id: str, documents: int, model: str = L6, price: float = 0.008, key_id: str = "alice"
) -> UsageRecord:
    return UsageRecord(request_id, key_id, model, documents, documents * 10, ((documents, price),))


def test_usage_counts_each_request_once_per_key_and_model_with_exact_cost():
    book = UsageBook()
    assert book.record(record("r1", 1000))
    assert not book.record(record("r1", 1000))  # a retried record
    assert book.record(record("r2", 3, model=TINY, price=0.004))
    assert book.record(record("r3", 7, key_id="bob"))
    totals = book.totals("alice")
    assert (totals["requests"], totals["documents"], totals["tokens"]) == (2, 1003, 10030)
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.008") + Decimal("0.000012")
    assert totals["models"][TINY] == {
        "requests": 1,
        "documents": 3,
        "tokens": 30,
        "cost_usd": 0.000012,
    }
    assert book.totals("nobody")["documents"] == 0


def test_cost_sums_exactly_over_many_requests():
    book = UsageBook()
    for i in range(10_000):
        book.record(record(f"r{i}", 1))
    assert book.totals("alice")["cost_usd"] == 0.08  # floats would drift


def test_a_cascade_is_charged_each_stage_at_its_models_price():
    book = UsageBook()
    # 100 documents at TinyBERT's $0.004 per 1k, then the best 20 at L12's $0.012.
    cascade = UsageRecord("c1", "alice", "cascade", 120, 9000, ((100, 0.004), (20, 0.012)))
    assert book.record(cascade)
    totals = book.totals("alice")
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.00064")
    assert totals["models"]["cascade"]["documents"] == 120


def test_journal_lines_written_with_one_price_per_request_still_replay(tmp_path):
    path = tmp_path / "usage.jsonl"
    path.write_text(
        json.dumps(
            {
                "request_id": "old",
                "key_id": "alice",
                "model": L6,
                "documents": 500,
                "tokens": 5000,
                "usd_per_1k_documents": 0.008,
            }
        )
        + "\n"
    )
    book = UsageBook()
    assert UsageJournal(path).replay_into(book) == 1
    assert book.totals("alice")["cost_usd"] == 0.004


def test_dedup_window_is_bounded():
    book = UsageBook(dedup_window=2)
    for rid in ("a", "b", "c"):
        book.record(record(rid, 1))
    assert not book.seen("a") and book.seen("c")


def test_journal_replay_restores_totals_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "state" / "usage.jsonl"
    journal, book = UsageJournal(path), UsageBook()
    for r in (record("r1", 4), record("r2", 5, model=TINY, price=0.004)):
        journal.append([r])
        book.record(r)
    journal.close()
    with open(path, "a") as f:
        f.write('{"request_id": "torn", "key_id"')  # a crash mid-write
    reopened, replayed = UsageJournal(path), UsageBook()
    assert reopened.replay_into(replayed) == 2
    assert replayed.totals("alice") == book.totals("alice")
    reopened.append([record("r3", 1)])  # starts on a fresh line after the torn one
    reopened.close()
    again = UsageBook()
    assert UsageJournal(path).replay_into(again) == 3
    assert again.seen("r1") and again.totals("alice")["documents"] == 10


@pytest.mark.anyio
async def test_ledger_counts_each_id_once_within_and_across_calls_and_replays(tmp_path):
    config = UsageConfig(journal_path=str(tmp_path / "usage.jsonl"))
    ledger = LocalLedger(config)
    assert await ledger.record([record("a", 2), record("b", 3), record("a", 2)]) == [
        True,
        True,
        False,
    ]
    assert await ledger.record([record("b", 3), record("c", 1)]) == [False, True]
    assert (await ledger.usage("alice"))["documents"] == 6
    restarted = LocalLedger(config)  # a new replica replays the journal
    assert await restarted.usage("alice") == await ledger.usage("alice")
    assert await restarted.record([record("c", 1)]) == [False]


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

"""Usage accounting per API key: requests, documents (the billed unit), tokens and cost,
per model, and the per-key quotas. Plain Python, no Ray: `serve_app/runtime/ledger.py` runs
one `LocalLedger` in a single Serve replica that every ingress replica reports to.

Each successful request is recorded once under its server-generated request id: a
record that is retried (the ledger restarted, a reply was lost) is recognised and not
counted twice. With a journal, records are appended as JSON lines before they count, and
replayed when the ledger starts, so a ledger restart loses nothing either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

from serve_app.config import QuotaSettings, UsageConfig
from serve_app.service.quotas import Admission, QuotaBook

logger = logging.getLogger("ray.serve")

# Retries of a record arrive within seconds; remembering this many ids bounds memory.
DEDUP_WINDOW = 1_000_000


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str
    model: str  # as answered: a cascade is "cascade"
    documents: int
    tokens: int
    # (documents, USD per 1,000 documents) for each model that scored some, at its price
    # when the request was served: one charge, or a cascade's two stages.
    charges: tuple[tuple[int, float], ...]

    @property
    def cost_usd(self) -> Decimal:
        # Decimal of each price's shortest repr: 0.008 stays exactly 0.008, sums stay exact.
        return sum((Decimal(n) * Decimal(repr(p)) for n, p in self.charges), Decimal()) / 1000

    @classmethod
    def from_journal(cls, line: str) -> UsageRecord:
        data = json.loads(line)
        if "usd_per_1k_documents" in data:  # written before charges were per stage
            data["charges"] = [[data["documents"], data.pop("usd_per_1k_documents")]]
        return cls(**data)


@dataclass
class ModelUsage:
    requests: int = 0
    documents: int = 0
    tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        self.documents += record.documents
        self.tokens += record.tokens
        self.cost_usd += record.cost_usd

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "documents": self.documents,
            "tokens": self.tokens,
            "cost_usd": float(self.cost_usd),
        }


class UsageBook:
    def __init__(self, dedup_window: int = DEDUP_WINDOW) -> None:
        self._by_key: dict[str, dict[str, ModelUsage]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedup_window = dedup_window

    def record(self, record: UsageRecord) -> bool:
        """Count `record` unless its request id was already counted; True if counted."""
        if record.request_id in self._seen:
            return False
        self._seen[record.request_id] = None
        if len(self._seen) > self._dedup_window:
            self._seen.popitem(last=False)
        per_model = self._by_key.setdefault(record.key_id, {})
        per_model.setdefault(record.model, ModelUsage()).add(record)
        return True

    def seen(self, request_id: str) -> bool:
        return request_id in self._seen

    def totals(self, key_id: str) -> dict:
        per_model = self._by_key.get(key_id, {})
        total = ModelUsage()
        for usage in per_model.values():
            total.requests += usage.requests
            total.documents += usage.documents
            total.tokens += usage.tokens
            total.cost_usd += usage.cost_usd
        return {
            "key_id": key_id,
            **total.as_dict(),
            "models": {name: u.as_dict() for name, u in sorted(per_model.items())},
        }


class UsageJournal:
    """Append-only JSON lines, one per counted record. A torn last line (a crash mid-write)
    is skipped on replay: that record's request had not been answered yet."""

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = Path(os.path.expanduser(path))
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._file.tell() > 0 and _last_byte(self.path) != b"\n":
            self._file.write("\n")  # end a torn line, so the next record stands alone

    def replay_into(self, book: UsageBook) -> int:
        counted = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = UsageRecord.from_journal(line)
                except (ValueError, TypeError):
                    continue
                counted += book.record(record)
        return counted

    def append(self, records: list[UsageRecord]) -> None:
        """Write `records`, then flush (and fsync) once for all of them."""
        self._file.write(
            "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records)
        )
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class LocalLedger:
    """Quotas and billing in one process's memory (and journal): the state behind the
    `Ledger` interface. Exactly one must exist per service, so that limits and totals hold
    across every ingress replica. Methods are `async` with no awaits: on one event loop
    they run one at a time and need no lock."""

    def __init__(self, config: UsageConfig = UsageConfig()):
        self.book = UsageBook()
        self.quotas = QuotaBook()
        self.journal = None
        if config.journal_path:
            self.journal = UsageJournal(config.journal_path, fsync=config.fsync)
            replayed = self.journal.replay_into(self.book)
            logger.info("usage ledger: replayed %d records from %s", replayed, self.journal.path)

    async def admit(self, key_id: str, quota: QuotaSettings, documents: int) -> Admission:
        return self.quotas.admit(key_id, quota, documents, time.monotonic())

    async def record(self, records: list[UsageRecord]) -> list[bool]:
        """Count successful requests once each; a repeated request id is a no-op (False)."""
        is_new, ids = [], set()
        for r in records:
            is_new.append(not self.book.seen(r.request_id) and r.request_id not in ids)
            ids.add(r.request_id)
        fresh = [r for r, new in zip(records, is_new) if new]
        if self.journal is not None and fresh:
            self.journal.append(fresh)  # durable first, then counted
        for r in fresh:
            self.book.record(r)
        return is_new

    async def usage(self, key_id: str) -> dict:
        return self.book.totals(key_id)


class RecordBatcher:
    """Coalesces one ingress replica's concurrent records into one ledger call.

    While a call is in flight, new records queue; the next call takes them all. So an idle
    service sends each record at once, and a busy one sends few, large calls: the single
    ledger replica sees calls per ingress, not per request. Each `record` still returns
    only after the ledger has counted it (or raises what the ledger call raised).
    """

    def __init__(
        self, send: Callable[[list[UsageRecord]], Awaitable[list[bool]]], max_batch: int = 512
    ):
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[UsageRecord, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task | None = None

    async def record(self, record: UsageRecord) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                counted = await self._send([record for record, _ in batch])
            except Exception as e:  # every waiter of this batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            except asyncio.CancelledError:
                for _, future in batch + self._pending:
                    future.cancel()
                raise
            for (_, future), was_counted in zip(batch, counted):
                if not future.done():
                    future.set_result(was_counted)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)

"""Billing per API key and the per-key quotas: the ledger's state, plain Python, no Ray.
`serve_app/runtime/ledger.py` runs one `LocalLedger` in a single Serve replica that every
ingress replica reports to.

Usage records go to a database (`serve_app/storage`: SQLite by default, PostgreSQL on a
cluster) keyed by the server-generated request id, so the database, not memory, makes
each request count once: a record retried after a ledger restart or a lost reply is
ignored. A record is committed before its request is answered; when the database cannot
take it, the request fails with `LedgerUnavailable` (503) and is not billed. Quotas are
rate limits, not money: they stay in memory and start full after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from serve_app.config import QuotaSettings, UsageConfig
from serve_app.errors import LedgerUnavailable
from serve_app.service.quotas import Admission, QuotaBook
from serve_app.storage import (
    GROUP_BY_VALUES,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageStore,
    open_store,
)

__all__ = ["GROUP_BY_VALUES", "LocalLedger", "RecordBatcher", "UsageQuery", "UsageRecord"]

logger = logging.getLogger("ray.serve")


class LocalLedger:
    """Quotas in memory and billing in a `UsageStore`: the state behind the `Ledger`
    interface. Exactly one must exist per service, so that quotas hold across every
    ingress replica. Records from all ingress replicas that arrive while a write is in
    flight are coalesced into the next transaction."""

    def __init__(self, config: UsageConfig = UsageConfig(), store: UsageStore | None = None):
        self.quotas = QuotaBook()
        self.store = store if store is not None else open_store(config)
        self._writer = RecordBatcher(self._insert, max_batch=config.max_batch)

    async def admit(self, key_id: str, quota: QuotaSettings, documents: int) -> Admission:
        return self.quotas.admit(key_id, quota, documents, time.monotonic())

    async def record(self, records: list[UsageRecord]) -> list[bool]:
        """Store successful requests once each, durably; a request id already stored is a
        no-op (False). Raises `LedgerUnavailable` if the database did not take them."""
        return list(await asyncio.gather(*(self._writer.record(r) for r in records)))

    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        try:
            return await self.store.usage(key_id, query)
        except StoreUnavailable as e:
            raise _unavailable(e) from None

    async def close(self) -> None:
        await self.store.close()

    async def _insert(self, records: list[UsageRecord]) -> list[bool]:
        try:
            return await self.store.insert(records)
        except StoreUnavailable as e:
            raise _unavailable(e) from None


def _unavailable(error: StoreUnavailable) -> LedgerUnavailable:
    logger.error("usage store unavailable: %s", error)
    return LedgerUnavailable("usage accounting is unavailable; retry", retry_after_s=1)


class RecordBatcher:
    """Coalesces concurrent records into one call of `send`: in an ingress replica, one
    ledger call; in the ledger, one database transaction.

    While a call is in flight, new records queue; the next call takes them all. So an idle
    service sends each record at once, and a busy one sends few, large calls: the single
    ledger replica sees calls per ingress, not per request, and the database a transaction
    per ledger write, not per request. Each `record` still returns only after its record
    was counted (or raises what the call raised).
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

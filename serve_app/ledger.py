"""The usage ledger: one Serve replica, outside the ingress replicas, that every ingress
reports to. A thin Ray layer over `UsageBook` (billing), `QuotaBook` (per-key limits)
and an optional `UsageJournal` (survives a ledger restart).

Exactly one replica: the state is in its memory (and journal). Methods are `async` with
no awaits, so they run one at a time on the replica's event loop and need no lock.
"""

from __future__ import annotations

import logging
import time

from ray import serve

from serve_app.config import QuotaSettings, UsageConfig
from serve_app.quotas import Admission, QuotaBook
from serve_app.usage import UsageBook, UsageJournal, UsageRecord

logger = logging.getLogger("ray.serve")


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class UsageLedger:
    def __init__(self, config: UsageConfig):
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

"""The usage ledger in Ray: one Serve replica, outside the ingress replicas, that every
ingress reports to, holding a `LocalLedger` (quotas in memory, billing in the usage
database); and the ingress's client for it, which retries while the ledger restarts.

Exactly one replica: quotas are in its memory, and it is the one writer of the SQLite
file. Usage itself is in the database, so a new replica starts with every record.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import QuotaSettings
from serve_app.errors import LedgerUnavailable
from serve_app.service.quotas import Admission
from serve_app.service.usage import LocalLedger, UsageQuery, UsageRecord

logger = logging.getLogger("ray.serve")

LEDGER_TIMEOUT_S = 10.0


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class UsageLedger(LocalLedger):
    """`LocalLedger(config: UsageConfig)` as the one ledger replica."""

    async def __del__(self) -> None:  # Serve calls it on a graceful shutdown
        await self.close()


class LedgerClient:
    """The service's `Ledger`, over the ledger deployment's handle. A call that does not
    reach the ledger is retried until `timeout_s` (records are idempotent by request id),
    then `LedgerUnavailable`; the ledger's own `LedgerUnavailable` (its database is
    down) is passed on at once."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float = LEDGER_TIMEOUT_S):
        self.handle = handle
        self.timeout_s = timeout_s

    async def admit(self, key_id: str, quota: QuotaSettings, documents: int) -> Admission:
        return await self._call("admit", key_id, quota, documents)

    async def record(self, records: list[UsageRecord]) -> list[bool]:
        return await self._call("record", records)

    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        return await self._call("usage", key_id, query)

    async def _call(self, method: str, *args):
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return await getattr(self.handle, method).remote(*args)
            except Exception as e:
                refusal = _ledger_refusal(e)
                if refusal is not None:
                    raise LedgerUnavailable(
                        refusal.message, retry_after_s=refusal.retry_after_s
                    ) from None
                if time.monotonic() >= deadline:
                    logger.error("usage ledger unavailable for %s: %s", method, type(e).__name__)
                    raise LedgerUnavailable(
                        "usage accounting is unavailable; retry", retry_after_s=1
                    ) from None
                await asyncio.sleep(0.2)


def _ledger_refusal(error: BaseException) -> LedgerUnavailable | None:
    """The `LedgerUnavailable` the ledger raised itself, however Ray wrapped it."""
    for candidate in (error, getattr(error, "cause", None), error.__cause__):
        if isinstance(candidate, LedgerUnavailable):
            return candidate
    return None

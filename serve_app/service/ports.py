"""What the service needs from the runtime, as interfaces: the model deployments and the
usage ledger. `serve_app/runtime/` implements them over Ray Serve handles; tests implement
them in process (`LocalLedger` is the ledger's own state, with no Ray around it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from serve_app.config import QuotaSettings
from serve_app.model.tokenization import EncodedPairs
from serve_app.service.quotas import Admission
from serve_app.service.usage import UsageQuery, UsageRecord


class ModelBackend(Protocol):
    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        """One logit per pair; raises a `RerankError` when no replica can answer."""

    async def describe(self, model: str) -> dict:
        """The replica's self-description (device, dtype, weights); {} if it does not
        answer in time."""

    async def replica_states(self) -> dict[str, dict[str, int]]:
        """Replicas per state (RUNNING, STARTING, ...) per model; {} when unknown."""


class Ledger(Protocol):
    async def admit(self, key_id: str, quota: QuotaSettings, documents: int) -> Admission: ...

    async def record(self, records: list[UsageRecord]) -> list[bool]:
        """Count each record once (by request id); True for those newly counted."""

    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        """`key_id`'s totals (overall, per model, per `query.group_by`) within the dates."""

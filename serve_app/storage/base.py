"""The usage store's interface, the record it stores, the query it answers, and the
versioned schema both databases share (`migrations/<dialect>/NNNN_name.sql`)."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from typing import Literal

GroupBy = Literal["day", "month", "model"]
GROUP_BY_VALUES: tuple[str, ...] = ("day", "month", "model")
NANO = Decimal(10) ** 9


class StoreUnavailable(Exception):
    """The database could not be reached or did not answer in time; nothing was stored."""


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
    # Unix time the request was served; a retried record keeps its first time.
    served_at: float = field(default_factory=time.time)
    windows: int = 0  # pairs scored: a chunked document counts each window

    @property
    def cost_usd(self) -> Decimal:
        # Decimal of each price's shortest repr: 0.008 stays exactly 0.008.
        return sum((Decimal(n) * Decimal(repr(p)) for n, p in self.charges), Decimal()) / 1000

    @property
    def cost_nano_usd(self) -> int:
        """The cost in 1e-9 USD, rounded half-even: an integer, so SQL sums are exact."""
        return int((self.cost_usd * NANO).to_integral_value(ROUND_HALF_EVEN))

    def charges_json(self) -> str:
        return json.dumps([list(c) for c in self.charges], separators=(",", ":"))


@dataclass(frozen=True)
class UsageQuery:
    """`start`/`end`: UTC dates, both inclusive; `group_by`: also split the totals."""

    start: date | None = None
    end: date | None = None
    group_by: GroupBy | None = None

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        """[from, until) as UTC instants."""
        start = _midnight(self.start) if self.start else None
        until = _midnight(self.end + timedelta(days=1)) if self.end else None
        return start, until


@dataclass
class Totals:
    requests: int = 0
    documents: int = 0
    tokens: int = 0
    windows: int = 0
    cost_nano_usd: int = 0

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.documents += other.documents
        self.tokens += other.tokens
        self.windows += other.windows
        self.cost_nano_usd += other.cost_nano_usd

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "documents": self.documents,
            "tokens": self.tokens,
            "windows": self.windows,
            "cost_usd": float(Decimal(self.cost_nano_usd) / NANO),
        }


# One aggregate row from SQL: (period or "", model, requests, documents, tokens, windows,
# cost).
AggregateRow = tuple[str, str, int, int, int, int, int]


def usage_report(key_id: str, query: UsageQuery, rows: Sequence[AggregateRow]) -> dict:
    """`/v1/usage`'s body from SQL's sums per (period, model): overall, per model and,
    with `group_by`, per day, month or model."""
    total, models, groups = Totals(), {}, {}
    for period, model, *sums in rows:
        part = Totals(*(int(s) for s in sums))
        total.add(part)
        models.setdefault(model, Totals()).add(part)
        if query.group_by is not None:
            groups.setdefault(model if query.group_by == "model" else period, Totals()).add(part)
    report = {
        "key_id": key_id,
        **total.as_dict(),
        "models": {name: t.as_dict() for name, t in sorted(models.items())},
        "from": query.start,
        "to": query.end,
        "group_by": query.group_by,
    }
    if query.group_by is not None:
        report["groups"] = [{"group": g, **t.as_dict()} for g, t in sorted(groups.items())]
    return report


class UsageStore(ABC):
    """Where billed requests are kept. Implementations: `SqliteUsageStore` (embedded,
    one file) and `PostgresUsageStore` (a server, for clusters)."""

    @abstractmethod
    async def insert(self, records: Sequence[UsageRecord]) -> list[bool]:
        """Store `records` in one transaction, durable on return. True for each record
        stored now; False for a request id already stored (earlier, or earlier in this
        batch). Raises `StoreUnavailable` when nothing could be stored."""

    @abstractmethod
    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        """`key_id`'s totals (see `usage_report`); raises `StoreUnavailable`."""

    @abstractmethod
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: Literal["sqlite", "postgres"]) -> list[Migration]:
    """The schema's versions in order, from `migrations/<dialect>/NNNN_name.sql`."""
    folder = resources.files("serve_app.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append(Migration(int(number), name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 1..n: {found}")
    return found


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)

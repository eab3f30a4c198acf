"""Usage accounting per API key: requests, documents (the billed unit), tokens and cost,
per model. Plain Python, no Ray; `ledger.py` runs one `UsageBook` in a single Serve replica
that every ingress replica reports to.

Each successful request is recorded once under its server-generated request id: a
record that is retried (the ledger restarted, a reply was lost) is recognised and not
counted twice. With a journal, records are appended as JSON lines before they count, and
replayed when the ledger starts, so a ledger restart loses nothing either.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

# Retries of a record arrive within seconds; remembering this many ids bounds memory.
DEDUP_WINDOW = 1_000_000


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    key_id: str
    model: str
    documents: int
    tokens: int
    usd_per_1k_documents: float  # the price when the request was served

    @property
    def cost_usd(self) -> Decimal:
        # Decimal of the price's shortest repr: 0.008 stays exactly 0.008, sums stay exact.
        return Decimal(self.documents) * Decimal(repr(self.usd_per_1k_documents)) / 1000


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
                    record = UsageRecord(**json.loads(line))
                except (ValueError, TypeError):
                    continue
                counted += book.record(record)
        return counted

    def append(self, record: UsageRecord) -> None:
        self._file.write(json.dumps(asdict(record), separators=(",", ":")) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)

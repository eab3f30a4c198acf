"""The embedded usage store: one SQLite file in WAL mode, written by one thread.

`synchronous=FULL`: a commit is on disk before `insert` returns, so a record the service
answered for survives a machine crash too; batching many records per transaction keeps
that to one fsync per batch.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_app.storage.base import (
    AggregateRow,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageStore,
    migrations,
    usage_report,
)

_INSERT = (
    "INSERT INTO usage_records (request_id, key_id, model, documents, tokens, windows,"
    " cost_nano_usd, charges, served_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (request_id) DO NOTHING"
)
_PERIOD = {
    None: "''",
    "model": "''",
    "day": "strftime('%Y-%m-%d', served_at, 'unixepoch')",
    "month": "strftime('%Y-%m', served_at, 'unixepoch')",
}


class SqliteUsageStore(UsageStore):
    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 5.0):
        self.path = str(path) if str(path) == ":memory:" else os.path.expanduser(path)
        self._busy_timeout_s = busy_timeout_s
        # sqlite3 connections belong to one thread: every call runs on this one, in order.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def insert(self, records: Sequence[UsageRecord]) -> list[bool]:
        return await self._run(self._insert, list(records))

    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        rows = await self._run(self._aggregate, key_id, query)
        return usage_report(key_id, query, rows)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full, I/O
            raise StoreUnavailable(f"sqlite {self.path}: {e}") from e

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions only where this code says BEGIN.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            _migrate(conn)
            self._conn = conn
        return self._conn

    def _insert(self, records: list[UsageRecord]) -> list[bool]:
        conn = self._connection()
        stored = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for r in records:
                cursor = conn.execute(
                    _INSERT,
                    (
                        r.request_id,
                        r.key_id,
                        r.model,
                        r.documents,
                        r.tokens,
                        r.windows,
                        r.cost_nano_usd,
                        r.charges_json(),
                        r.served_at,
                    ),
                )
                stored.append(cursor.rowcount == 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return stored

    def _aggregate(self, key_id: str, query: UsageQuery) -> list[AggregateRow]:
        start, until = query.bounds()
        sql = (
            f"SELECT {_PERIOD[query.group_by]} AS period, model, count(*), sum(documents),"
            " sum(tokens), sum(windows), sum(cost_nano_usd) FROM usage_records WHERE key_id = ?"
            " AND (? IS NULL OR served_at >= ?) AND (? IS NULL OR served_at < ?)"
            " GROUP BY period, model"
        )
        lo = start.timestamp() if start else None
        hi = until.timestamp() if until else None
        return self._connection().execute(sql, (key_id, lo, lo, hi, hi)).fetchall()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file's schema to the newest version, under the database's write lock so
    that two processes opening one file at once apply each migration once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        for m in migrations("sqlite"):
            if m.version > current:
                for statement in _statements(m.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?)", (m.version, m.name)
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    # executescript would commit the open transaction first; split with sqlite's own test.
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in a migration: {pending!r}")
    return statements

"""The cluster usage store: PostgreSQL through psycopg 3 and its connection pool.

The DSN comes from an environment variable (never from the config file). The schema is
migrated on first use, under an advisory lock so that several processes starting at once
apply each migration once. A batch is one `INSERT ... SELECT FROM unnest(...)` statement
in one transaction: one round trip, whatever its size. A connection lost mid-batch rolls
the whole batch back, and the batch is retried once on a fresh connection; the request-id
key makes that retry (and any later one) count each record once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from serve_app.storage.base import (
    AggregateRow,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageStore,
    migrations,
    usage_report,
)

_INSERT = """
INSERT INTO usage_records
    (request_id, key_id, model, documents, tokens, windows, cost_nano_usd, charges, served_at)
SELECT r, k, m, d, t, w, c, ch::jsonb, to_timestamp(s)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::int8[], %s::int8[],
            %s::int8[], %s::text[], %s::float8[]) AS u(r, k, m, d, t, w, c, ch, s)
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id
"""
_PERIOD = {
    None: "''",
    "model": "''",
    "day": "to_char(served_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char(served_at AT TIME ZONE 'UTC', 'YYYY-MM')",
}
# Any 64-bit number, the same in every process: serialises migrations across them.
_MIGRATION_LOCK = 0x7265_7261_6E6B_0001


class PostgresUsageStore(UsageStore):
    def __init__(self, dsn: str, pool_size: int = 4, timeout_s: float = 5.0):
        self._timeout_s = timeout_s
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout_s,  # waiting for a connection: then StoreUnavailable (a 503)
            check=AsyncConnectionPool.check_connection,  # drop one that died while idle
            kwargs={"autocommit": True, "connect_timeout": max(1, math.ceil(timeout_s))},
            configure=self._configure,
        )
        self._opened = False
        self._migrated = False
        self._ready_lock = asyncio.Lock()

    async def insert(self, records: Sequence[UsageRecord]) -> list[bool]:
        if not records:
            return []
        columns = (
            [r.request_id for r in records],
            [r.key_id for r in records],
            [r.model for r in records],
            [r.documents for r in records],
            [r.tokens for r in records],
            [r.windows for r in records],
            [r.cost_nano_usd for r in records],
            [r.charges_json() for r in records],
            [r.served_at for r in records],
        )

        async def attempt(conn: psycopg.AsyncConnection) -> set[str]:
            async with conn.transaction():
                cursor = await conn.execute(_INSERT, columns)
                return {row[0] for row in await cursor.fetchall()}

        stored = await self._with_connection(attempt)
        flags, seen = [], set()
        for r in records:  # a repeat within the batch was not stored a second time
            flags.append(r.request_id in stored and r.request_id not in seen)
            seen.add(r.request_id)
        return flags

    async def usage(self, key_id: str, query: UsageQuery = UsageQuery()) -> dict:
        start, until = query.bounds()
        sql = (
            f"SELECT {_PERIOD[query.group_by]} AS period, model, count(*), sum(documents),"
            " sum(tokens), sum(windows), sum(cost_nano_usd) FROM usage_records WHERE key_id = %s"
            " AND (%s::timestamptz IS NULL OR served_at >= %s)"
            " AND (%s::timestamptz IS NULL OR served_at < %s)"
            " GROUP BY period, model"
        )

        async def attempt(conn: psycopg.AsyncConnection) -> list[AggregateRow]:
            cursor = await conn.execute(sql, (key_id, start, start, until, until))
            return await cursor.fetchall()

        return usage_report(key_id, query, await self._with_connection(attempt))

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._pool.close()

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        # A statement stuck on a lock or a sick server fails (503) instead of hanging.
        timeout_ms = str(max(1, round(self._timeout_s * 1000)))
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))

    async def _with_connection(self, attempt):
        """`attempt(conn)`, retried once on a fresh connection if the first one broke."""
        await self._ready()
        for retry in (False, True):
            try:
                async with self._pool.connection() as conn:
                    return await attempt(conn)
            except PoolTimeout as e:  # no connection in timeout_s: the server is down
                raise StoreUnavailable(f"postgres: no connection in {self._timeout_s} s") from e
            except psycopg.OperationalError as e:  # the connection broke: nothing committed
                if retry:
                    raise StoreUnavailable(f"postgres: {type(e).__name__}: {e}") from e

    async def _ready(self) -> None:
        if self._migrated:
            return
        async with self._ready_lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True
            if self._migrated:
                return
            try:
                async with self._pool.connection() as conn:
                    await _migrate(conn)
            except psycopg.OperationalError as e:  # PoolTimeout too: retried on next use
                raise StoreUnavailable(f"postgres: {type(e).__name__}: {e}") from e
            self._migrated = True


async def _migrate(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        (current,) = await cursor.fetchone()
        for m in migrations("postgres"):
            if m.version > current:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )

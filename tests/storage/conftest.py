"""The usage stores under test: SQLite always; PostgreSQL when a server is configured.

`RERANK_TEST_POSTGRES_DSN` names a database the tests may create schemas in (`.ci/run`
starts a server and sets it). Without it the PostgreSQL tests are skipped, so a machine
without PostgreSQL still runs everything else. Each test gets its own schema.
"""

from __future__ import annotations

import os
import uuid

import pytest

from serve_app.storage.base import UsageRecord

POSTGRES_DSN = os.environ.get("RERANK_TEST_POSTGRES_DSN")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_DSN, reason="no PostgreSQL: set RERANK_TEST_POSTGRES_DSN (.ci/run does)"
)
L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"


def record(
    request_id: str,
    documents: int = 1,
    model: str = L6,
    price: float = 0.008,
    key_id: str = "alice",
    served_at: float = 1_764_547_200.0,  # 2025-12-01 00:00 UTC
    windows: int | None = None,
) -> UsageRecord:
    return UsageRecord(
        request_id,
        key_id,
        model,
        documents,
        documents * 10,
        ((documents, price),),
        served_at,
        documents if windows is None else windows,
    )


@pytest.fixture
def postgres_dsn():
    """A DSN whose `search_path` is a fresh schema, dropped afterwards."""
    if not POSTGRES_DSN:
        pytest.skip("no PostgreSQL: set RERANK_TEST_POSTGRES_DSN (.ci/run does)")
    import psycopg
    from psycopg.conninfo import make_conninfo

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield make_conninfo(POSTGRES_DSN, options=f"-c search_path={schema}")
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
async def store(request, tmp_path):
    """Each store, opened fresh; `store.reopen()` gives a new one over the same data."""
    if request.param == "sqlite":
        from serve_app.storage.sqlite import SqliteUsageStore

        def opener():
            return SqliteUsageStore(tmp_path / "usage.db")
    else:
        from serve_app.storage.postgres import PostgresUsageStore

        dsn = request.getfixturevalue("postgres_dsn")

        def opener():
            return PostgresUsageStore(dsn, pool_size=2, timeout_s=5)

    opened = [opener()]
    yield opened[0], lambda: opened.append(opener()) or opened[-1]
    for s in opened:
        await s.close()

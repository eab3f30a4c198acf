"""Where billed usage is kept: one interface (`UsageStore`), two databases. SQLite is the
embedded default (a file on the ledger's node); PostgreSQL is for clusters, where usage
must outlive any node. Plain Python: no Ray, no HTTP. The database drivers are imported
only here (an import-linter contract in `pyproject.toml`).
"""

from __future__ import annotations

import os

from serve_app.config import UsageConfig
from serve_app.storage.base import (
    GROUP_BY_VALUES,
    StoreUnavailable,
    UsageQuery,
    UsageRecord,
    UsageStore,
)

__all__ = [
    "GROUP_BY_VALUES",
    "StoreUnavailable",
    "UsageQuery",
    "UsageRecord",
    "UsageStore",
    "open_store",
]


def open_store(config: UsageConfig, environ: dict[str, str] | None = None) -> UsageStore:
    """The store `config` names. Connects lazily: a database that is down at start is
    reported per request (503), not by failing to start."""
    if config.store == "postgres":
        from serve_app.storage.postgres import PostgresUsageStore

        environ = os.environ if environ is None else environ
        dsn = environ.get(config.postgres_dsn_env)
        if not dsn:
            raise ValueError(
                f"usage.store is postgres but ${config.postgres_dsn_env} is not set on this "
                "node: set it to the database's DSN (postgresql://user:password@host/db)"
            )
        return PostgresUsageStore(dsn, pool_size=config.pool_size, timeout_s=config.timeout_s)
    from serve_app.storage.sqlite import SqliteUsageStore

    return SqliteUsageStore(config.sqlite_path, busy_timeout_s=config.timeout_s)

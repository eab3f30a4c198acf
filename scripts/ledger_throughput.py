"""Usage records per second into the usage store: SQLite or PostgreSQL.

1. the store itself, one transaction per batch of 1, 100 and 1,000 records (each commit
   durable: SQLite synchronous=FULL, PostgreSQL fsync on);
2. the ledger's write path in process: 5,000 concurrent one-record `record` calls, which
   the ledger coalesces into few transactions;
3. with `--serve`, the same through the single UsageLedger Serve replica and a
   DeploymentHandle (the ingress's call path): one record per call, and coalesced by
   `RecordBatcher` as each ingress replica does.

    PYTHONPATH=$PWD .venv/bin/python scripts/ledger_throughput.py sqlite [--path FILE] [--serve]
    PYTHONPATH=$PWD .venv/bin/python scripts/ledger_throughput.py postgres [--dsn-env VAR] [--serve]

SQLite writes to a fresh file under a temporary folder unless `--path` is given;
PostgreSQL writes into a fresh schema of the database in $VAR (default
RERANK_USAGE_DSN), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

from serve_app.config import UsageConfig
from serve_app.service.usage import LocalLedger, RecordBatcher, UsageRecord
from serve_app.storage import UsageStore


def usage_record(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "bench", "m", 10, 100, ((10, 0.008),))


async def store_rates(store: UsageStore) -> None:
    for batch, total in ((1, 1000), (100, 20_000), (1000, 50_000)):
        prefix = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        for start in range(0, total, batch):
            await store.insert([usage_record(f"{prefix}-{i}") for i in range(start, start + batch)])
        rate = total / (time.perf_counter() - started)
        print(f"store, {batch} record(s) per transaction: {rate:,.0f} records/s ({total:,})")


async def ledger_rate(ledger: LocalLedger, n: int = 5000) -> None:
    started = time.perf_counter()
    await asyncio.gather(*(ledger.record([usage_record(f"l{i}")]) for i in range(n)))
    rate = n / (time.perf_counter() - started)
    print(f"ledger in process, {n:,} concurrent one-record calls: {rate:,.0f} records/s")


def serve_rates(config: UsageConfig) -> None:
    import ray
    from ray import serve

    from serve_app.runtime.ledger import UsageLedger

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        ledger = UsageLedger.options(ray_actor_options={"num_cpus": 0.1})
        handle = serve.run(ledger.bind(config), name="bench", route_prefix=None)

        async def measure() -> None:
            latencies = []
            for i in range(300):
                started = time.perf_counter()
                await handle.record.remote([usage_record(f"s{i}")])
                latencies.append(time.perf_counter() - started)
            latencies.sort()
            print(
                f"serve, sequential, one record per call: p50 {latencies[150] * 1e3:.2f} ms, "
                f"p90 {latencies[270] * 1e3:.2f} ms"
            )
            n = 2000
            started = time.perf_counter()
            await asyncio.gather(*(handle.record.remote([usage_record(f"c{i}")]) for i in range(n)))
            rate = n / (time.perf_counter() - started)
            print(f"serve, {n} concurrent, one record per call: {rate:,.0f} records/s")
            batcher = RecordBatcher(lambda records: handle.record.remote(records))
            started = time.perf_counter()
            await asyncio.gather(*(batcher.record(usage_record(f"b{i}")) for i in range(n)))
            rate = n / (time.perf_counter() - started)
            print(f"serve, {n} concurrent through RecordBatcher: {rate:,.0f} records/s")

        asyncio.run(measure())
    finally:
        serve.shutdown()
        ray.shutdown()


async def in_process(config: UsageConfig) -> None:
    from serve_app.storage import open_store

    store = open_store(config)
    try:
        await store_rates(store)
    finally:
        await store.close()
    ledger = LocalLedger(config)
    try:
        await ledger_rate(ledger)
    finally:
        await ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", choices=["sqlite", "postgres"])
    parser.add_argument("--path", help="SQLite file (default: a new one in a temporary folder)")
    parser.add_argument("--dsn-env", default="RERANK_USAGE_DSN")
    parser.add_argument("--serve", action="store_true", help="also through a Serve replica")
    args = parser.parse_args()

    if args.store == "sqlite":
        folder = tempfile.mkdtemp(prefix="ledger-bench-")
        path = args.path or os.path.join(folder, "usage.db")
        config = UsageConfig(store="sqlite", sqlite_path=path)
        print(f"SQLite {path}")
        asyncio.run(in_process(config))
        if args.serve:
            serve_rates(config)
        return

    import psycopg
    from psycopg.conninfo import make_conninfo

    base = os.environ[args.dsn_env]
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    env = "RERANK_LEDGER_BENCH_DSN"
    os.environ[env] = make_conninfo(base, options=f"-c search_path={schema}")
    config = UsageConfig(store="postgres", postgres_dsn_env=env)
    print(f"PostgreSQL, schema {schema}")
    try:
        asyncio.run(in_process(config))
        if args.serve:
            serve_rates(config)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()

"""How many usage records per second the single UsageLedger replica takes, through a
DeploymentHandle (the ingress's call path): one record per call, and coalesced by
`RecordBatcher` as each ingress replica does.

    PYTHONPATH=$PWD python scripts/ledger_throughput.py [JOURNAL_PATH]
"""

from __future__ import annotations

import asyncio
import sys
import time

import ray
from ray import serve

from serve_app.config import UsageConfig
from serve_app.runtime.ledger import UsageLedger
from serve_app.service.usage import RecordBatcher, UsageRecord

N = 2000


def usage_record(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "bench", "m", 10, 100, 0.008)


async def measure(handle) -> None:
    latencies = []
    for i in range(300):
        started = time.perf_counter()
        await handle.record.remote([usage_record(f"s{i}")])
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    print(
        f"sequential, one record per call: p50 {latencies[150] * 1e3:.2f} ms, "
        f"p90 {latencies[270] * 1e3:.2f} ms"
    )

    started = time.perf_counter()
    await asyncio.gather(*(handle.record.remote([usage_record(f"c{i}")]) for i in range(N)))
    print(f"{N} concurrent, one record per call: {N / (time.perf_counter() - started):.0f}/s")

    batcher = RecordBatcher(lambda records: handle.record.remote(records))
    started = time.perf_counter()
    await asyncio.gather(*(batcher.record(usage_record(f"b{i}")) for i in range(N)))
    print(f"{N} concurrent through RecordBatcher: {N / (time.perf_counter() - started):.0f}/s")
    totals = await handle.usage.remote("bench")
    assert totals["requests"] == 300 + 2 * N, totals


def main() -> None:
    journal = sys.argv[1] if len(sys.argv) > 1 else None
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        ledger = UsageLedger.options(ray_actor_options={"num_cpus": 0.1})
        handle = serve.run(
            ledger.bind(UsageConfig(journal_path=journal)), name="bench", route_prefix=None
        )
        asyncio.run(measure(handle))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

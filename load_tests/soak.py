"""Soak / overload driver (not a test): measures capacity, then offers a fixed multiple of it
open-loop for a configurable time and reports what happened and how memory moved.

    # half capacity for 10 minutes: memory growth of every Serve process
    python load_tests/soak.py --load-factor 0.5 --duration-s 600
    # three times capacity for a minute: shedding, admitted latency, recovery
    python load_tests/soak.py --load-factor 3 --duration-s 60

It starts its own single-node Ray (`address="local"`, one logical GPU) and deploys one
model with a random-initialised checkpoint (real architecture, real cost) and bounded
queues, on a free loopback port; it stops only what it started. Capacity is the
throughput of `--concurrency` closed-loop clients over `--probe-s` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERY = "how do cross-encoders rerank search results"
DOCS = [
    f"Passage {i}: rerankers score the query and the passage together; "
    + "first-stage retrieval returns candidates that a cross-encoder reorders. " * (i % 4 + 1)
    for i in range(12)
]


@dataclass
class Outcomes:
    statuses: Counter = field(default_factory=Counter)
    latency_ok: list[float] = field(default_factory=list)
    latency_rejected: list[float] = field(default_factory=list)
    missing_retry_after: int = 0
    wrong: int = 0
    seconds: float = 0.0  # from the first request sent to the last answer received
    # Open loop: how late each request left the client, after it was due. Large values
    # mean the load generator, not the service, could not keep the schedule.
    send_lag: list[float] = field(default_factory=list)

    def ok_per_s(self) -> float:
        return self.statuses[200] / self.seconds

    def record(self, status: int | str, seconds: float, retry_after: bool, ok_body: bool) -> None:
        self.statuses[status] += 1
        if status == 200:
            self.latency_ok.append(seconds)
            self.wrong += not ok_body
        else:
            self.latency_rejected.append(seconds)
            if status in (503, 429) and not retry_after:
                self.missing_retry_after += 1

    def summary(self) -> dict:
        return {
            "sent": sum(self.statuses.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "wrong": self.wrong,
            "missing_retry_after": self.missing_retry_after,
            "ok_latency_ms": percentiles(self.latency_ok),
            "rejected_latency_ms": percentiles(self.latency_rejected),
            **({"send_lag_ms": percentiles(self.send_lag)} if self.send_lag else {}),
        }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)}


def expected_order(url: str, model: str) -> list[int]:
    r = httpx.post(f"{url}/v1/rerank", json=body(model), timeout=120)
    r.raise_for_status()
    return [x["index"] for x in r.json()["results"]]


def body(model: str) -> dict:
    return {"model": model, "query": QUERY, "documents": DOCS, "return_documents": False}


async def one(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    order: list[int],
    out: Outcomes,
    due: float | None = None,
):
    # Open loop passes when the request was due: a client loop that falls behind its
    # schedule must not hide that wait from the latency (coordinated omission).
    start = time.perf_counter()
    if due is not None:
        out.send_lag.append(start - due)
        start = due
    try:
        r = await client.post(f"{url}/v1/rerank", json=body(model))
        status: int | str = r.status_code
        ok_body = status == 200 and [x["index"] for x in r.json()["results"]] == order
        retry_after = "retry-after" in r.headers
    except httpx.HTTPError as e:
        status, ok_body, retry_after = type(e).__name__, False, False
    out.record(status, time.perf_counter() - start, retry_after, ok_body)


async def closed_loop(
    url: str, model: str, order: list[int], clients: int, seconds: float
) -> Outcomes:
    out = Outcomes()
    started = time.monotonic()
    deadline = started + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await one(c, url, model, order, out)

        await asyncio.gather(*(worker() for _ in range(clients)))
    # The answers counted include those still in flight at the deadline, so the time is
    # until the last of them, not `seconds`.
    out.seconds = time.monotonic() - started
    return out


async def open_loop(
    url: str, model: str, order: list[int], rate: float, seconds: float
) -> Outcomes:
    """Requests start on a fixed schedule whatever happens to earlier ones (no
    coordinated omission): the offered load really is `rate`."""
    out = Outcomes()
    tasks = []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as c:
        start = time.perf_counter()  # the clock `one` measures latency on
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one(c, url, model, order, out, due)))
            n += 1
        await asyncio.gather(*tasks)
    return out


def serve_memory_mb() -> dict[str, float]:
    """RSS of every live Serve actor process (controller, proxy, replicas), MB."""
    import psutil
    import ray
    from ray.util.state import list_actors

    # This cluster's address: others may run on the machine, so never auto-detect.
    address = ray.get_runtime_context().gcs_address

    rss = {}
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
        if actor.name and actor.name.startswith("SERVE_") and actor.pid:
            try:
                rss[actor.name] = round(psutil.Process(actor.pid).memory_info().rss / 2**20, 1)
            except psutil.NoSuchProcess:
                pass
    return rss


def serve_on_loopback(app_args: dict, ready_within_s: float = 300) -> str:
    """Start the app on a free loopback port of the running Ray; its URL once `/readyz`
    answers 200 (or the deadline passes: the load then shows what a cold service does).
    Imports Ray here: callers set Ray's environment variables first."""
    from ray import serve

    from serve_app.runtime.builder import build_app
    from tests.conftest import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args), name="rerank", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return url


# The service under test refuses a request once the model's queued work would keep it
# waiting longer than this: what bounds admitted latency under overload
# (docs/RELIABILITY.md, Overload, where 0.05, 0.1 and 0.2 s were compared).
QUEUE_WAIT_S = 0.05


def queue_wait_bound(text: str) -> float | None:
    return None if text == "off" else float(text)


def soak_app_args(args: argparse.Namespace, model: str, checkpoint: Path) -> dict:
    """The app under test: one model and the ingress with the given queue limits. Auth is
    off: the load goes to loopback only, and keys would only add their hashing."""
    return {
        "auth": {"enabled": False},
        "models": [
            {
                "name": model,
                "source": str(checkpoint),
                "num_gpus": 0.1,
                "allow_cpu_fallback": True,  # a logical GPU on a CPU machine
                "num_cpus": 1,
                "cpu_threads": 1,
                "max_ongoing_requests": args.max_ongoing,
                "max_queued_requests": args.max_queued,
                "max_queue_wait_s": getattr(args, "max_queue_wait_s", None),
                "backpressure": {"status_code": 503, "retry_after_s": 1},
                "batching": {"max_batch_size": args.max_ongoing},
            }
        ],
        "ingress": {
            "num_cpus": 0.5,
            # Our own admission refuses beyond `max_in_flight`, in the JSON error shape;
            # `max_ongoing_requests` far above it leaves room for the requests being
            # refused, so Serve's proxy forwards them rather than queueing or shedding
            # them as plain text (`max_queued_requests` -1: it never sheds).
            "max_ongoing_requests": args.ingress_max_ongoing,
            "max_queued_requests": args.ingress_max_queued,
            "max_in_flight": getattr(args, "ingress_max_in_flight", None),
            "backpressure": {"status_code": 503, "retry_after_s": 1},
            "model_calls": {"timeout_s": 30, "failover_timeout_s": 5},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cross-encoder/ms-marco-TinyBERT-L2-v2")
    parser.add_argument("--load-factor", type=float, default=0.5, help="offered load / capacity")
    parser.add_argument("--duration-s", type=float, default=120)
    parser.add_argument("--probe-s", type=float, default=15, help="capacity measurement time")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (capacity)")
    parser.add_argument("--max-ongoing", type=int, default=4, help="model max_ongoing_requests")
    parser.add_argument("--max-queued", type=int, default=8, help="model max_queued_requests")
    parser.add_argument(
        "--max-queue-wait-s",
        type=queue_wait_bound,
        default=QUEUE_WAIT_S,
        help="model max_queue_wait_s ('off': bounded by count only)",
    )
    parser.add_argument("--ingress-max-ongoing", type=int, default=256)
    parser.add_argument("--ingress-max-queued", type=int, default=-1)
    parser.add_argument("--ingress-max-in-flight", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs for the local Ray")
    args = parser.parse_args()

    from serve_app.runtime.ray_env import with_service_env

    with_service_env()  # before Ray starts: its workers read it
    import ray
    from ray import serve

    from serve_app.catalog import load_catalog
    from serve_app.model.checkpoints import write_random_checkpoint

    card = load_catalog().resolve(args.model)
    checkpoint = Path(tempfile.mkdtemp(prefix="rerank-soak-")) / card.short_name
    write_random_checkpoint(card, checkpoint)
    app_args = soak_app_args(args, card.name, checkpoint)
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1, log_to_driver=False)
    try:
        url = serve_on_loopback(app_args)
        order = expected_order(url, card.name)
        asyncio.run(closed_loop(url, card.name, order, args.concurrency, 3))  # warm up
        probe = asyncio.run(closed_loop(url, card.name, order, args.concurrency, args.probe_s))
        capacity = probe.ok_per_s()
        memory_before = serve_memory_mb()
        rate = args.load_factor * capacity
        run = asyncio.run(open_loop(url, card.name, order, rate, args.duration_s))
        memory_after = serve_memory_mb()
        after = asyncio.run(closed_loop(url, card.name, order, args.concurrency, args.probe_s))
        after_rps = after.ok_per_s()
        report = {
            "model": card.name,
            "capacity_rps": round(capacity, 1),
            "capacity_probe": probe.summary(),
            "offered_rps": round(rate, 1),
            "duration_s": args.duration_s,
            "run": run.summary(),
            "after_run_closed_loop": after.summary() | {"rps": round(after_rps, 1)},
            "memory_mb_before": memory_before,
            "memory_mb_after": memory_after,
            "memory_growth_mb": {
                k: round(memory_after[k] - v, 1)
                for k, v in memory_before.items()
                if k in memory_after
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

"""Overload harness (not a test): the service `soak.py` deploys (TinyBERT-L2, random
weights, bounded queues), driven open-loop by Debian's `wrk` with `paced.lua` (wrk2-style
pacing: latency from each request's due time), which costs a few percent of one core
where a Python client costs most of one.

    flock /tmp/cpu.lock .venv/bin/python load_tests/overload.py --out report.json
    # one body, chosen loads
    .venv/bin/python load_tests/overload.py --bodies 100 --loads 3,10 --duration-s 30

Per body (`small`: soak.py's 12 documents; `100`: 100 documents of the same kind) it
measures capacity (answers per second of 8 closed-loop connections), then for each load
factor offers factor x capacity for `--duration-s` and reports, per status, count and
latency p50/p99/max; send lag; every refusal without the JSON error shape, without
`Retry-After` or without its request id; wrong answers; wrk's own CPU; the ingress
replica's CPU per request; Serve's processes' memory before and after; and the time until
a request is served again after the load stops. From the ingress's own access lines (its
Serve log files in this Ray session) it also splits each load's refusals by where they were
decided, before the body was read or after the parse, with their time inside the app, and
counts the requests whose client hung up (499). Needs `wrk` (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load_tests.soak import (  # noqa: E402
    DOCS,
    QUERY,
    QUEUE_WAIT_S,
    queue_wait_bound,
    serve_memory_mb,
    serve_on_loopback,
    soak_app_args,
)

LUA = Path(__file__).with_name("paced.lua")
PATH = "/v1/rerank"


def documents(kind: str) -> list[str]:
    if kind == "small":
        return DOCS
    n = int(kind)
    return [f"Document {i}. " + DOCS[i % len(DOCS)] for i in range(n)]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)}


def run_wrk(
    url: str, body_file: Path, expect: str, rate: float, connections: int, seconds: float
) -> dict:
    """One wrk run; `rate` 0 is a closed loop. Returns the parsed records and wrk's CPU."""
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as f:
        out = Path(f.name)
    env = {
        **os.environ,
        "PACE_RATE": str(rate),
        "PACE_PATH": PATH,
        "PACE_BODY": str(body_file),
        "PACE_EXPECT": expect,
        "PACE_OUT": str(out),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "60s",
            "-s",
            str(LUA),
            url,
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows, errors = [], {}
    for line in out.read_text().splitlines():
        if line.startswith("#errors"):
            _, connect, read, write, status, timeout, duration_us = line.split(",")
            errors = {
                "connect": int(connect),
                "read": int(read),
                "write": int(write),
                "timeout": int(timeout),
            }
            wall = int(duration_us) / 1e6
            continue
        status, latency_us, lag_us, is_json, retry_after, right = map(int, line.split(","))
        rows.append((status, latency_us / 1000, lag_us / 1000, is_json, retry_after, right))
    out.unlink()
    return {"rows": rows, "errors": errors, "wall_s": wall, "client_cpu_s": cpu}


def summarise(result: dict) -> dict:
    rows = result["rows"]
    by_status: dict[int, list[float]] = {}
    for status, latency, *_ in rows:
        by_status.setdefault(status, []).append(latency)
    refusals = [r for r in rows if r[0] != 200]
    return {
        "answered": len(rows),
        "per_s": round(len(rows) / result["wall_s"], 1),
        "ok_per_s": round(len(by_status.get(200, [])) / result["wall_s"], 2),
        "statuses": {str(s): len(v) for s, v in sorted(by_status.items())},
        "latency_ms": {str(s): percentiles(v) for s, v in sorted(by_status.items())},
        "refusals_not_json": sum(1 for r in refusals if not r[3]),
        "refusals_without_retry_after": sum(1 for r in refusals if r[0] in (429, 503) and not r[4]),
        "wrong": sum(1 for r in rows if r[0] == 200 and not r[5]),
        "send_lag_ms": percentiles([r[2] for r in rows]),
        "wrk_errors": result["errors"],
        "client_cpu_pct_of_one_core": round(100 * result["client_cpu_s"] / result["wall_s"], 1),
    }


ACCESS_LINE = re.compile(r'\{"event":"access".*?\}')
SERVE_DROPPED = "Request dropped due to backpressure"  # Serve refusing a model call


class IngressAccessLog:
    """The ingress replicas' access lines (`ray.serve.rerank_access`, one JSON object per
    request) in this Ray session's Serve logs, read on from where the last read stopped."""

    def __init__(self, logs_dir: Path):
        self.serve_dir = logs_dir / "serve"
        self.offsets: dict[Path, int] = {}
        self.serve_refusals = 0  # Serve's own refusals of model calls, in the last read

    def new_records(self) -> list[dict]:
        records = []
        self.serve_refusals = 0
        for path in sorted(self.serve_dir.glob("replica_*RerankIngress*.log")):
            start = self.offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
            complete = data.rfind(b"\n") + 1  # a line still being written waits
            self.offsets[path] = start + complete
            for line in data[:complete].decode("utf-8", "replace").splitlines():
                self.serve_refusals += SERVE_DROPPED in line
                match = ACCESS_LINE.search(line)
                if match:
                    records.append(json.loads(match.group(0)))
        return records


def where_decided(records: list[dict]) -> dict:
    """Refusals (429/503) split by whether the body had been parsed (`documents` known),
    each with its time inside the app; the rest by status and error type."""
    scoring = [r for r in records if r.get("path") == PATH]
    refused = [r for r in scoring if r["status"] in (429, 503)]
    before = [r["duration_ms"] for r in refused if r.get("documents") is None]
    after = [r["duration_ms"] for r in refused if r.get("documents") is not None]
    kinds: dict[str, int] = {}
    for r in scoring:
        key = f"{r['status']} {r.get('error_type') or ''}".strip()
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "refused_before_body": {"n": len(before), **percentiles(before)},
        "refused_after_parse": {"n": len(after), **percentiles(after)},
        "served_in_app_ms": percentiles([r["duration_ms"] for r in scoring if r["status"] == 200]),
        "by_status": dict(sorted(kinds.items())),
    }


def serve_pids() -> dict[str, int]:
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    return {
        a.name: a.pid
        for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        if a.name and a.name.startswith("SERVE_") and a.pid
    }


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def niceness(pids: dict[str, int]) -> dict[str, int]:
    import psutil

    return {name: psutil.Process(pid).nice() for name, pid in pids.items()}


def until_served(url: str, body: dict, timeout_s: float = 60) -> float:
    """Seconds from now until one request is answered 200 (one at a time, 50 ms apart)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.post(f"{url}{PATH}", json=body, timeout=30).status_code == 200:
                return round(time.monotonic() - started, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("inf")


def write_body(url: str, work: Path, model: str, kind: str) -> tuple[Path, str]:
    """The request body for `kind` in a file for wrk, and its reference answer (the result
    order of one request served on its own)."""
    body = {"model": model, "query": QUERY, "documents": documents(kind), "return_documents": False}
    body_file = work / f"body-{kind}.json"
    body_file.write_text(json.dumps(body))
    answer = httpx.post(f"{url}{PATH}", json=body, timeout=120)
    answer.raise_for_status()
    return body_file, ",".join(str(r["index"]) for r in answer.json()["results"])


def redeploy(url: str, app_args: dict, within_s: float = 300) -> None:
    """Update the running app to `app_args` and wait until the new ingress answers."""
    from ray import serve

    from serve_app.runtime.builder import build_app

    before = serve_pids()
    serve.run(build_app(app_args), name="rerank", route_prefix="/", blocking=False)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        ingress = [p for n, p in serve_pids().items() if "RerankIngress" in n]
        try:
            if ingress and set(ingress).isdisjoint(before.values()):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the redeployed app did not answer within {within_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cross-encoder/ms-marco-TinyBERT-L2-v2")
    parser.add_argument("--bodies", default="small,100", help="small and/or document counts")
    parser.add_argument("--loads", default="0.7,1,3,10", help="multiples of capacity")
    parser.add_argument("--duration-s", type=float, default=30)
    parser.add_argument("--probe-s", type=float, default=15, help="capacity measurement time")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop connections")
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
    parser.add_argument("--worker-niceness", type=int, default=0, help="Ray's default: 15")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs for the local Ray")
    parser.add_argument(
        "--front",
        choices=["proxy", "direct"],
        default="proxy",
        help="Serve's Python proxy, or direct ingress (HAProxy hands connections to the "
        "ingress replica's own HTTP server; Ray 2.60's RAY_SERVE_ENABLE_DIRECT_INGRESS)",
    )
    parser.add_argument(
        "--serve-defaults",
        action="store_true",
        help="start Ray with Serve's defaults instead of the service's environment "
        "(serve_app/runtime/ray_env.py)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()

    from serve_app.runtime.ray_env import DIRECT_INGRESS_ENV, SERVICE_ENV, with_service_env

    # Ray starts its workers (every Serve replica and the proxy) at this niceness; its
    # default, 15, puts the service behind any client on the host.
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    if not args.serve_defaults:
        with_service_env(direct_ingress=args.front == "direct")
    elif args.front == "direct":
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    import ray
    from ray import serve

    from serve_app.catalog import load_catalog
    from serve_app.model.checkpoints import write_random_checkpoint

    card = load_catalog().resolve(args.model)
    work = Path(tempfile.mkdtemp(prefix="rerank-overload-"))
    checkpoint = work / card.short_name
    write_random_checkpoint(card, checkpoint)
    soak_args = argparse.Namespace(
        max_ongoing=args.max_ongoing,
        max_queued=args.max_queued,
        ingress_max_ongoing=args.ingress_max_ongoing,
        ingress_max_queued=args.ingress_max_queued,
        ingress_max_in_flight=args.ingress_max_in_flight,
        max_queue_wait_s=args.max_queue_wait_s,
    )
    app_args = soak_app_args(soak_args, card.name, checkpoint)
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1, log_to_driver=False)
    report: dict = {
        "model": card.name,
        "weights": "random (real architecture, real cost)",
        "app": app_args,
        "duration_s": args.duration_s,
        "front": args.front,
        "ray_env": {k: os.environ.get(k) for k in SERVICE_ENV | DIRECT_INGRESS_ENV},
        "runs": [],
    }
    try:
        # Capacity is the service's throughput with its model queue bounded by count only:
        # a time bound refuses part of a closed-loop probe's requests, and each refused
        # connection sends again at once, so the probe would measure its own overload (at
        # 0.05 s: 25 answers a second of ~40). Probe that way, then deploy what is tested.
        count_bound = json.loads(json.dumps(app_args))
        count_bound["models"][0]["max_queue_wait_s"] = None
        url = serve_on_loopback(count_bound)
        bodies = {kind: write_body(url, work, card.name, kind) for kind in args.bodies.split(",")}
        for kind, (body_file, expect) in bodies.items():
            run_wrk(url, body_file, expect, 0, args.concurrency, 3)  # warm up
            probe = summarise(run_wrk(url, body_file, expect, 0, args.concurrency, args.probe_s))
            report.setdefault("capacity_probes", {})[kind] = probe
        if count_bound != app_args:
            redeploy(url, app_args)
        pids = serve_pids()
        report["niceness"] = niceness(pids)
        ingress_pid = next(pid for name, pid in pids.items() if "RerankIngress" in name)
        access_log = IngressAccessLog(Path(ray._private.worker._global_node.get_logs_dir_path()))
        for kind, (body_file, expect) in bodies.items():
            body = json.loads(body_file.read_text())
            run_wrk(url, body_file, expect, 0, args.concurrency, 3)  # warm up
            capacity = report["capacity_probes"][kind]["ok_per_s"]
            for factor in (float(x) for x in args.loads.split(",")):
                rate = factor * capacity
                # Enough connections that a free one is there when a request is due, even
                # with every admitted request waiting out a full queue.
                connections = min(1000, max(16, math.ceil(rate * 4)))
                memory_before = serve_memory_mb()
                access_log.new_records()  # what came before this load
                ingress_cpu = cpu_seconds(ingress_pid)
                result = run_wrk(url, body_file, expect, rate, connections, args.duration_s)
                ingress_cpu = cpu_seconds(ingress_pid) - ingress_cpu
                recovered_s = until_served(url, body)
                memory_after = serve_memory_mb()
                summary = summarise(result)
                run = {
                    "body": kind,
                    "documents": len(body["documents"]),
                    "capacity_rps": capacity,
                    "load_factor": factor,
                    "offered_rps": round(rate, 2),
                    "connections": connections,
                    **summary,
                    "ingress_cpu_ms_per_request": round(
                        1000 * ingress_cpu / max(1, summary["answered"]), 2
                    ),
                    "served_again_after_s": recovered_s,
                    "ingress_access_log": {
                        **where_decided(access_log.new_records()),
                        "model_calls_refused_by_serve": access_log.serve_refusals,
                    },
                    "memory_growth_mb": {
                        k: round(memory_after[k] - v, 1)
                        for k, v in memory_before.items()
                        if k in memory_after
                    },
                }
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

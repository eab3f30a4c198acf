"""Where a rerank request's CPU goes: CPU milliseconds per request in each Serve process of
a service running on this machine (proxy or HAProxy, ingress, model replicas, ...), read
from /proc while closed-loop load runs.

On a GPU host the model is cheap and the HTTP front end (proxy, ingress, tokenization) is
what the cores must pay for, so this is the figure that says how many requests a second a
machine's cores can feed. Three phases, each against the same running service:
  idle      no load: each process's background CPU rate, subtracted below;
  frontend  requests naming a model that is not served: body, parsing, validation and the
            404, through every hop before tokenization (no model work);
  rerank    the real requests.

  python -m load_tests.cpu_cost --url http://127.0.0.1:8000 \
      --model cross-encoder/ms-marco-MiniLM-L6-v2 --concurrency 4 --duration 30 --out cost.json

Local services only (it reads this machine's /proc); it measures and never signals anything.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from load_tests.bench import _bodies, _run_load, _summarise, machine

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
UNSERVED_MODEL = "not-a-served-model"


def role(cmdline: str) -> str | None:
    """The part a process plays in a Ray Serve service, from its command line."""
    program = cmdline.split(" ", 1)[0]
    if "haproxy" in program:
        return "haproxy"
    if program.endswith("gcs_server"):
        return "ray gcs"
    if program.endswith("raylet"):
        return "ray raylet"
    if not cmdline.startswith("ray::"):
        if any(p in cmdline for p in ("dashboard", "log_monitor", "ray/autoscaler")):
            return "ray agents"
        return None
    name = cmdline[len("ray::") :].split(" ", 1)[0]
    if name.startswith(("DashboardAgent", "RuntimeEnvAgent")):
        return "ray agents"  # the metrics agent exports every replica's metrics
    if name.startswith("ProxyActor"):
        return "serve proxy"
    if name.startswith("ServeController"):
        return "serve controller"
    if name.startswith("ServeReplica:"):
        deployment = name.split(":")[2].split(".")[0]
        return {"RerankIngress": "ingress", "UsageLedger": "usage ledger"}.get(
            deployment, f"model {deployment}"
        )
    return "ray system"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this user's processes, summed per role."""
    out: dict[str, float] = {}
    uid = os.getuid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        kind = role(cmdline)
        if kind is not None:
            # utime + stime, all threads (fields 14 and 15 of stat; 2 and 3 after the name).
            out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def measure(args: argparse.Namespace, model: str, idle_rate: dict[str, float]) -> dict:
    bodies = _bodies(argparse.Namespace(**{**vars(args), "model": model}), 100, seed=1)
    before, started = cpu_by_role(), time.perf_counter()
    records = _run_load(args, "closed", args.concurrency, bodies)
    elapsed, after = time.perf_counter() - started, cpu_by_role()
    n = len(records)
    per_request = {}
    for kind in sorted(after):
        used = after[kind] - before.get(kind, 0.0)
        net = used - idle_rate.get(kind, 0.0) * elapsed
        per_request[kind] = {
            "ms": round(1000 * used / n, 2),
            "ms_less_idle": round(1000 * net / n, 2),
        }
    return {
        **_summarise(records, args.docs),
        "answered_per_s": round(n / elapsed, 1),
        "cpu_per_request": per_request,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key", default=os.environ.get("RERANK_API_KEY"))
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--shape", default="standard", choices=["standard", "long"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30, help="seconds per loaded phase")
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    before = cpu_by_role()
    time.sleep(args.idle_seconds)  # a measurement window, not synchronisation
    after = cpu_by_role()
    idle_rate = {k: (after[k] - before.get(k, 0.0)) / args.idle_seconds for k in after}
    result = {
        "machine": machine(),
        "url": args.url,
        "model": args.model,
        "docs": args.docs,
        "shape": args.shape,
        "concurrency": args.concurrency,
        # HAProxy in front means Serve's direct ingress: replicas serve HTTP themselves.
        "front_door": "haproxy" if "haproxy" in idle_rate else "serve proxy",
        "idle_cpu_percent": {k: round(100 * v, 1) for k, v in sorted(idle_rate.items())},
        "frontend": measure(args, UNSERVED_MODEL, idle_rate),
        "rerank": measure(args, args.model, idle_rate),
    }
    for phase in ("frontend", "rerank"):
        row = result[phase]
        costs = ", ".join(f"{k} {v['ms_less_idle']}" for k, v in row["cpu_per_request"].items())
        print(
            f"{phase}: {row['answered_per_s']} req/s, statuses {row['statuses']}; "
            f"CPU ms per request less idle: {costs}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Rerank benchmarks. Each subcommand writes JSON; `plot` draws PNGs from it.

  engine  in-process: our engine's forward throughput (length-sorted token-budget batches)
          and sentence-transformers' CrossEncoder.predict on the same checkpoint and pairs,
          with a ranking comparison.
  http    against a running service: closed-loop concurrency sweep and open-loop
          fixed-rate runs; latency percentiles, docs/s, errors; replica counts over time.
  autoscale  steps offered load on one model up, then stops it; records replica counts
          over time next to latency, until replicas are back at their minimum.
  plot    throughput-against-latency per model from `http` JSON files.

Examples:
  python -m load_tests.bench engine --models cross-encoder/ms-marco-MiniLM-L6-v2 --out results/engine.json
  python -m load_tests.bench http --url http://127.0.0.1:8000 --model cross-encoder/ms-marco-MiniLM-L6-v2 \
      --concurrency 1 8 32 --rates 50 100 --duration 20 --out results/http-l6.json
  python -m load_tests.bench plot results/http-*.json --out results/latency.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from load_tests.workload import SHAPES, describe, make_requests


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """For JSON output: None, not NaN (which is not JSON), when nothing was measured."""
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# -- in-process --------------------------------------------------------------------------


def _ranking_agreement(scores: np.ndarray, reference: np.ndarray, bounds: np.ndarray) -> dict:
    """How far `scores` rank like `reference`, per request (`bounds`: request offsets)."""
    from scipy.stats import spearmanr

    identical, top10, rho = True, [], []
    for a, b in zip(bounds, bounds[1:]):
        ours = np.argsort(-scores[a:b], kind="stable")
        theirs = np.argsort(-reference[a:b], kind="stable")
        identical &= ours.tolist() == theirs.tolist()
        top10.append(len(set(ours[:10].tolist()) & set(theirs[:10].tolist())) / 10)
        rho.append(spearmanr(scores[a:b], reference[a:b])[0])
    return {
        "identical_rankings": bool(identical),
        "max_abs_logit_diff": float(np.abs(scores - reference).max()),
        "spearman_mean": round(float(np.mean(rho)), 4),
        "top10_overlap_mean": round(float(np.mean(top10)), 4),
    }


def bench_engine(args: argparse.Namespace) -> dict:
    """Per model: `CrossEncoder.predict` (torch fp32 unless --dtype) once, then our engine
    on each backend in `--backends` (`NAME` or `NAME:int8`) on the same pairs."""
    import torch
    from sentence_transformers import CrossEncoder

    from serve_app.catalog import load_catalog
    from serve_app.model.checkpoints import write_random_checkpoint
    from serve_app.model.engine import CrossEncoderEngine
    from serve_app.model.packing import PackingLimits, pack_by_token_budget
    from serve_app.model.tokenization import PairEncoder

    requests = make_requests(args.requests, args.docs, args.shape, seed=1)
    pairs = [(r.query, d) for r in requests for d in r.documents]
    bounds = np.cumsum([0] + [len(r.documents) for r in requests])
    limits = PackingLimits(args.batch_tokens, args.batch_docs, args.batch_overhead)
    results = {
        "machine": machine(),
        "workload": {"shape": args.shape, "docs": args.docs, "requests": args.requests},
        "models": {},
    }
    for name in args.models:
        card = load_catalog().resolve(name)
        source = args.source or str(Path(args.checkpoints) / card.short_name)
        if not args.source:
            write_random_checkpoint(card, source)
        encoder = PairEncoder.from_pretrained(source, 64)
        results["workload"].update(describe(requests[:10], encoder))
        t0 = time.perf_counter()
        encoded = [encoder.encode(r.query, r.documents) for r in requests]
        tokenize_s = time.perf_counter() - t0

        device = "cuda" if args.device == "cuda" else "cpu"
        cross_encoder = CrossEncoder(source, device=device)
        if device == "cuda" and args.dtype in ("auto", "float16"):
            cross_encoder.model.half()
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        if args.threads:
            torch.set_num_threads(args.threads)
        cross_encoder.predict(pairs[:64], batch_size=args.st_batch)
        t0 = time.perf_counter()
        reference = cross_encoder.predict(
            pairs, batch_size=args.st_batch, activation_fn=torch.nn.Identity()
        )
        st_s = time.perf_counter() - t0
        # How a search service calls it: one predict() per query and its documents.
        t0 = time.perf_counter()
        for r in requests:
            cross_encoder.predict([(r.query, d) for d in r.documents], batch_size=args.st_batch)
        st_per_query_s = time.perf_counter() - t0
        del cross_encoder
        per_request_batches = [pack_by_token_budget(one.pair_lengths, limits) for one in encoded]
        entry: dict = {
            "pairs": len(pairs),
            "tokenize_pairs_per_s": round(len(pairs) / tokenize_s),
            "sentence_transformers_docs_per_s": round(len(pairs) / st_s),
            "sentence_transformers_per_query_docs_per_s": round(len(pairs) / st_per_query_s),
            "per_request_packing": {
                "tokens": int(sum(one.pair_lengths.sum() for one in encoded)),
                "padded_tokens": sum(
                    len(batch) * int(one.pair_lengths[batch].max())
                    for one, batches in zip(encoded, per_request_batches)
                    for batch in batches
                ),
                "forward_passes": sum(len(batches) for batches in per_request_batches),
            },
            "v100_published_docs_per_s": card.v100_docs_per_s,
            "backends": {},
        }
        fp32_scores: np.ndarray | None = None
        for spec in args.backends:
            backend, _, quantization = spec.partition(":")
            t0 = time.perf_counter()
            engine = CrossEncoderEngine(
                source,
                name=card.name,
                backend=backend,
                quantization=quantization or "none",
                device=device,
                dtype=args.dtype,
                cpu_threads=args.threads,
            )
            load_s = time.perf_counter() - t0
            engine.warmup(limits)
            sync()
            t0 = time.perf_counter()
            ours = np.concatenate(engine.score(encoded, limits))
            sync()
            forward_s = time.perf_counter() - t0
            # One call per request, as an unloaded replica sees them: no cross-request packing.
            t0 = time.perf_counter()
            for one in encoded:
                engine.score([one], limits)
            sync()
            forward_per_request_s = time.perf_counter() - t0
            row = {
                **engine.describe(),
                "load_s": round(load_s, 1),
                "forward_docs_per_s": round(len(pairs) / forward_s),
                "forward_per_request_docs_per_s": round(len(pairs) / forward_per_request_s),
                # predict() tokenizes too: the fair ratio includes our tokenization.
                "speedup_incl_tokenization_vs_sentence_transformers": round(
                    st_s / (tokenize_s + forward_s), 2
                ),
                "per_request_speedup_vs_predict_per_query": round(
                    st_per_query_s / (tokenize_s + forward_per_request_s), 2
                ),
                "vs_sentence_transformers": _ranking_agreement(ours, reference, bounds),
            }
            if quantization in ("", "none") and engine.describe().get("dtype") == "float32":
                fp32_scores = ours if fp32_scores is None else fp32_scores
            elif fp32_scores is not None:
                row["vs_fp32_backend"] = _ranking_agreement(ours, fp32_scores, bounds)
            entry["backends"][spec] = row
            print(json.dumps({card.name: {spec: row}}), flush=True)
            del engine
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results["models"][card.name] = entry
    return results


# -- over HTTP ---------------------------------------------------------------------------


def _bodies(args: argparse.Namespace, n: int, seed: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "model": args.model,
                "query": r.query,
                "documents": r.documents,
                "return_documents": False,
                **({"long_documents": args.long_documents} if args.long_documents else {}),
            }
        ).encode()
        for r in make_requests(n, args.docs, args.shape, seed=seed)
    ]


async def _closed_loop(
    url: str, bodies: list[bytes], concurrency: int, duration: float, headers: dict
) -> list[tuple[float, float, int]]:
    import aiohttp

    records: list[tuple[float, float, int]] = []  # (start, latency_s, status)
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:  # counted as an error; an uncaught one would
                    status = 0  # end this client process and leave the bench waiting on it
                records.append((start, time.perf_counter() - start, status))

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return records


async def _open_loop(
    url: str, bodies: list[bytes], rate: float, duration: float, headers: dict
) -> list[tuple[float, float, int]]:
    import aiohttp

    records: list[tuple[float, float, int]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, start: float) -> None:
            # `start` is when the request was due, not when it went out: if the client's
            # loop falls behind, that wait is latency too (no coordinated omission).
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            records.append((start, time.perf_counter() - start, status))

        tasks = []
        begin = time.perf_counter()
        for i in range(int(rate * duration)):
            # Fixed schedule, independent of responses: latency includes queueing.
            due = begin + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], due)))
        await asyncio.gather(*tasks)
    return records


def _client_process(
    kind: str, url: str, bodies: list[bytes], level: float, duration: float, headers: dict, queue
) -> None:
    run = _closed_loop if kind == "closed" else _open_loop
    queue.put(asyncio.run(run(url, bodies, level, duration, headers)))


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if args.api_key:
        headers["authorization"] = f"Bearer {args.api_key}"
    return headers


def _run_load(args, kind: str, level: float, bodies: list[bytes]) -> list:
    """Split the load over `--client-procs` processes so the client is never the limit."""
    procs = max(1, min(args.client_procs, int(level))) if kind == "closed" else args.client_procs
    headers = _headers(args)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = []
    for p in range(procs):
        share = level / procs if kind == "open" else int(level) // procs + (p < int(level) % procs)
        w = ctx.Process(
            target=_client_process,
            args=(
                kind,
                f"{args.url}/v1/rerank",
                bodies[p::procs],
                share,
                args.duration,
                headers,
                queue,
            ),
        )
        w.start()
        workers.append(w)
    records = [r for _ in workers for r in queue.get()]
    for w in workers:
        w.join()
    return records


def _summarise(records: list, docs: int) -> dict:
    ok = [lat for _, lat, status in records if status == 200]
    # Rates over the wall time actually spanned, first start to last completion.
    duration = (
        max(s + lat for s, lat, _ in records) - min(s for s, _, _ in records) if records else 1.0
    )
    statuses: dict[str, int] = {}
    for _, _, status in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": len(records),
        "statuses": statuses,
        "requests_per_s": round(len(ok) / duration, 1),
        "docs_per_s": round(len(ok) * docs / duration),
        "p50_ms": percentile_ms(ok, 50),
        "p90_ms": percentile_ms(ok, 90),
        "p99_ms": percentile_ms(ok, 99),
        "mean_ms": round(statistics.fmean(ok) * 1000, 1) if ok else None,
    }


def _models(url: str) -> dict[str, dict]:
    """`/v1/models` entries by model id; empty if the service does not answer."""
    import httpx

    try:
        return {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    except Exception:
        return {}


def _replicas(url: str) -> dict:
    return {name: m.get("replicas") for name, m in _models(url).items()}


def bench_http(args: argparse.Namespace) -> dict:
    import httpx

    bodies = _bodies(args, 200, seed=1)  # seed 1: the same requests as `engine` uses
    served = next(
        (m for m in _models(args.url).values() if args.model in (m["id"], *m["aliases"])), {}
    )
    running = ":".join(x for x in (served.get("backend"), served.get("quantization")) if x)
    if getattr(args, "backend", None) and not running.startswith(args.backend):
        raise SystemExit(f"{args.model} runs {running or 'unknown'}, not {args.backend}")
    out: dict = {
        "machine": machine(),
        "url": args.url,
        "model": args.model,
        "backend": running,
        "docs": args.docs,
        "shape": args.shape,
        "long_documents": args.long_documents,
        "closed_loop": [],
        "open_loop": [],
    }
    # One kept-alive connection, as a search service's client pool holds: a new client per
    # request would time the client's own set-up (tens of ms here), not the service.
    with httpx.Client(headers=_headers(args), timeout=120) as client:
        usage = {"documents": 0, "windows": 0}

        def post(body: bytes) -> float:
            start = time.perf_counter()
            response = client.post(f"{args.url}/v1/rerank", content=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            for field in usage:
                usage[field] += response.json()["usage"][field]
            return elapsed

        post(bodies[-1])  # untimed: the first call's one-off costs stay out of every figure
        # Idle single-request latency first: one client, one request at a time.
        single = [post(body) for body in bodies[: args.idle_requests]]
    out["windows_per_document"] = round(usage["windows"] / max(1, usage["documents"]), 2)
    if single:
        out["idle_single_request_p50_ms"] = percentile_ms(single, 50)
        out["idle_single_request_p99_ms"] = percentile_ms(single, 99)
        print(json.dumps({"idle": out["idle_single_request_p50_ms"]}), flush=True)
    for c in args.concurrency:
        row = {
            "concurrency": c,
            **_summarise(_run_load(args, "closed", c, bodies), args.docs),
            "replicas_after": _replicas(args.url),
        }
        out["closed_loop"].append(row)
        print(json.dumps(row), flush=True)
    rates = list(args.rates)
    if args.rate_fractions and out["closed_loop"]:
        best = max(r["requests_per_s"] for r in out["closed_loop"])
        rates += [round(best * f, 1) for f in args.rate_fractions]
    for rate in rates:
        row = {
            "rate_rps": rate,
            **_summarise(_run_load(args, "open", rate, bodies), args.docs),
            "replicas_after": _replicas(args.url),
        }
        out["open_loop"].append(row)
        print(json.dumps(row), flush=True)
    return out


def bench_autoscale(args: argparse.Namespace) -> dict:
    """Step the offered load on one model up, then stop it; sample replica counts and
    latency every second until the replicas are back at their minimum (or a deadline)."""
    import threading

    bodies = _bodies(args, 100, seed=3)
    samples: list[dict] = []
    phase = {"name": "idle", "rate": 0.0}
    stop = threading.Event()
    begin = time.perf_counter()

    def sampler() -> None:
        while not stop.is_set():
            entry = _models(args.url).get(load_catalog_name(args.model), {})
            samples.append(
                {
                    "t_s": round(time.perf_counter() - begin, 1),
                    "phase": phase["name"],
                    "offered_rps": phase["rate"],
                    "replicas": entry.get("replicas"),
                    "starting": entry.get("replicas_starting"),
                }
            )
            stop.wait(1.0)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    steps = []
    for rate in args.rates:
        phase.update(name=f"load {rate} rps", rate=rate)
        records = _run_load(args, "open", rate, bodies)
        # Records start at their scheduled send, on the system-wide monotonic clock.
        sent = [round(start - begin, 1) for start, _, _ in records] or [None]
        steps.append(
            {
                "rate_rps": rate,
                **_summarise(records, args.docs),
                "sent_from_s": min(sent),
                "sent_until_s": max(sent),
                "replicas_after": _replicas(args.url).get(load_catalog_name(args.model)),
            }
        )
        print(json.dumps(steps[-1]), flush=True)
    phase.update(name="load stopped", rate=0.0)
    deadline = time.perf_counter() + args.drain_timeout
    while time.perf_counter() < deadline:
        if (
            samples
            and samples[-1]["phase"] == "load stopped"
            and samples[-1]["replicas"] == args.min_replicas
        ):
            break
        time.sleep(1.0)
    stop.set()
    thread.join()
    peak = max((s["replicas"] or 0) for s in samples) if samples else None
    back = next(
        (
            s["t_s"]
            for s in samples
            if s["phase"] == "load stopped" and s["replicas"] == args.min_replicas
        ),
        None,
    )

    def first(condition) -> float | None:
        return next((s["t_s"] for s in samples if condition(s)), None)

    return {
        "machine": machine(),
        "model": args.model,
        "steps": steps,
        "samples": samples,
        "peak_replicas": peak,
        # When the autoscaler first added a replica, and when one first ran.
        "first_scale_up_at_s": first(
            lambda s: (s["replicas"] or 0) + (s["starting"] or 0) > args.min_replicas
        ),
        "first_added_running_at_s": first(lambda s: (s["replicas"] or 0) > args.min_replicas),
        # The last request sent; the samples' "load stopped" phase starts later, when
        # the last answer is in.
        "load_stopped_at_s": steps[-1]["sent_until_s"] if steps else None,
        "last_answer_at_s": first(lambda s: s["phase"] == "load stopped"),
        "back_to_min_at_s": back,
    }


def load_catalog_name(name: str) -> str:
    from serve_app.catalog import load_catalog

    return load_catalog().resolve(name).name


def plot_autoscale(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    # A sample is None when /v1/models went unanswered (an overloaded ingress sheds it too).
    known = [s for s in data["samples"] if s["replicas"] is not None]
    t_known = [s["t_s"] for s in known]
    running = [s["replicas"] for s in known]
    # The autoscaler's decision shows as soon as it adds a replica; running, once it is up.
    wanted = [r + (s.get("starting") or 0) for r, s in zip(running, known)]
    top.step(t_known, wanted, "k:", where="post", label="running + starting")
    top.step(t_known, running, where="post", label="running")
    t = [s["t_s"] for s in data["samples"]]
    top.set_ylabel("replicas (dotted: incl. starting)")
    load = top.twinx()
    # Each step from its first to its last send, where the JSON has them; else (older
    # runs) the samples' phases, which last until the step's last answer.
    windows = [
        (step["sent_from_s"], step["sent_until_s"])
        if step.get("sent_until_s") is not None
        else _phase_window(data["samples"], f"load {step['rate_rps']} rps")
        for step in data["steps"]
    ]
    if all(w is not None for w in windows):
        edges = [(t0, step["rate_rps"]) for (t0, _), step in zip(windows, data["steps"])]
        edges += [(t1, 0.0) for _, t1 in windows]
        edges.sort()
        load.step([x for x, _ in edges], [y for _, y in edges], "r--", where="post")
    else:
        load.step(t, [s["offered_rps"] for s in data["samples"]], "r--", where="post")
    load.set_ylabel("offered requests/s (red)")
    top.set_title(f"Autoscaling {data['model'].split('/')[-1]}")
    for step, window in zip(data["steps"], windows):  # latency over the seconds it ran
        if window is not None:
            bottom.hlines(step["p50_ms"], *window, colors="b", label="p50")
            bottom.hlines(step["p99_ms"], *window, colors="m", label="p99")
    handles, labels = bottom.get_legend_handles_labels()
    bottom.legend(
        dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8
    )
    bottom.set_yscale("log")
    bottom.set_ylabel("latency per load step, ms")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _phase_window(samples: list[dict], phase: str) -> tuple[float, float] | None:
    times = [s["t_s"] for s in samples if s["phase"] == phase]
    return (min(times), max(times)) if times else None


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in args.files:
        data = json.loads(Path(path).read_text())
        rows = sorted(data["closed_loop"], key=lambda r: r["concurrency"])
        label = f"{data['model'].split('/')[-1]} ({data.get('shape', 'standard')})"
        if len(args.files) > 1:
            label += f" {Path(path).stem}"
        ax.plot(
            [r["docs_per_s"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=f"{label} p99"
        )
        ax.plot(
            [r["docs_per_s"] for r in rows],
            [r["p50_ms"] for r in rows],
            "x--",
            label=f"{label} p50",
        )
        for r in rows:  # points joined in order of rising load, each marked with its clients
            ax.annotate(
                f"{r['concurrency']}",
                (r["docs_per_s"], r["p99_ms"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    ax.set_xlabel("documents scored per second (through HTTP); numbers: concurrent clients")
    ax.set_ylabel("request latency, ms (100 docs per request)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("engine")
    e.add_argument("--models", nargs="+", required=True)
    e.add_argument("--source", help="checkpoint dir or hub id (default: random-init checkpoints)")
    e.add_argument("--checkpoints", default=os.path.expanduser("~/.cache/rerank-serve/random-init"))
    e.add_argument("--requests", type=int, default=50)
    e.add_argument("--docs", type=int, default=100)
    e.add_argument("--shape", default="standard", choices=sorted(SHAPES))
    e.add_argument("--dtype", default="auto")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument(
        "--backends",
        "--backend",
        nargs="+",
        default=["torch"],
        help="engine backends to run, each `NAME` or `NAME:int8` "
        "(torch, onnx, openvino, auto), e.g. --backends torch onnx openvino onnx:int8",
    )
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--batch-tokens", type=int, default=65536)
    e.add_argument("--batch-docs", type=int, default=512)
    e.add_argument(
        "--batch-overhead",
        type=int,
        default=64,
        help="a forward pass's fixed cost in padded tokens (batch_cost_probe.py)",
    )
    e.add_argument("--st-batch", type=int, default=32)
    e.add_argument("--out", required=True)

    def add_load_target(p: argparse.ArgumentParser, docs: int, client_procs: int) -> None:
        p.add_argument("--url", default="http://127.0.0.1:8000")
        p.add_argument("--model", required=True)
        p.add_argument("--api-key", default=os.environ.get("RERANK_API_KEY"))
        p.add_argument("--docs", type=int, default=docs, help="documents per request")
        p.add_argument("--shape", default="standard", choices=sorted(SHAPES))
        p.add_argument(
            "--long-documents",
            choices=["chunk", "truncate"],
            help="the request field; default: the server's",
        )
        p.add_argument("--client-procs", type=int, default=client_procs)

    h = sub.add_parser("http")
    add_load_target(h, docs=100, client_procs=2)
    h.add_argument(
        "--backend",
        help="the backend the service must be running the model on (`onnx`, `onnx:int8`, ...),"
        " checked in /v1/models and recorded; start it with run_demo_app.py --backend",
    )
    h.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 32, 64])
    h.add_argument("--rates", type=float, nargs="*", default=[])
    h.add_argument(
        "--rate-fractions",
        type=float,
        nargs="*",
        default=[],
        help="open-loop rates as fractions of the best closed-loop throughput",
    )
    h.add_argument("--duration", type=float, default=15)
    h.add_argument("--idle-requests", type=int, default=50)
    h.add_argument("--out", required=True)

    a = sub.add_parser("autoscale")
    add_load_target(a, docs=20, client_procs=1)
    a.add_argument("--rates", type=float, nargs="+", required=True, help="offered load steps")
    a.add_argument("--duration", type=float, default=30, help="seconds per step")
    a.add_argument("--min-replicas", type=int, default=1)
    a.add_argument("--drain-timeout", type=float, default=180)
    a.add_argument("--plot", help="PNG of replicas and offered load over time")
    a.add_argument("--out", required=True)

    p = sub.add_parser("plot")
    p.add_argument("files", nargs="+")
    p.add_argument("--title", default="Rerank latency against throughput")
    p.add_argument("--out", required=True)

    args = parser.parse_args()
    if args.command == "plot":
        plot(args)
        return
    run = {"engine": bench_engine, "http": bench_http, "autoscale": bench_autoscale}[args.command]
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.command == "autoscale" and args.plot:
        plot_autoscale(result, args.plot)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

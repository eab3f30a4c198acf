"""Budget routing under load: for one offered load (open loop, fixed arrival rate) against a
running service, compare `auto` with a latency budget, fixed MiniLM-L12 and fixed TinyBERT.
Reports p50/p99 client latency, budget met (by the router's prediction, and by the measured
client latency), and the model mix. Prints a markdown table.

    python load_tests/budget_routing.py --url http://127.0.0.1:8123 --rate 4 --duration 30 \\
        --docs 20 --budget-ms 400
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter

import httpx

L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
WORDS = (
    "rerank passage query model latency budget cross encoder search result document relevant "
    "score token batch replica ray serve quality fast accurate cascade shadow split"
).split()


def make_requests(n: int, docs: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "query": " ".join(rng.choices(WORDS, k=6)),
            "documents": [" ".join(rng.choices(WORDS, k=rng.randint(20, 80))) for _ in range(docs)],
            "return_documents": False,
        }
        for _ in range(n)
    ]


def short(name: str) -> str:
    return name.split("ms-marco-")[-1].removesuffix("-v2")


async def run_mode(url: str, extra: dict, requests: list[dict], rate: float) -> list[dict]:
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, body: dict, start: float) -> None:
        # `start` is when the request was due: if the client falls behind its schedule,
        # that wait is latency too (no coordinated omission).
        try:
            r = await client.post(f"{url}/v1/rerank", json={**body, **extra})
            ok = r.status_code == 200
            got = r.json() if ok else {}
        except httpx.HTTPError:
            ok, got = False, {}
        results.append(
            {
                "ms": (time.perf_counter() - start) * 1000,
                "ok": ok,
                "model": got.get("model"),
                "budget_met": (got.get("routing") or {}).get("budget_met"),
            }
        )

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        tasks = []
        t0 = time.perf_counter()
        for i, body in enumerate(requests):  # open loop: arrivals never wait for replies
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, body, due)))
        await asyncio.gather(*tasks)
    return results


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarise(name: str, results: list[dict], budget_ms: float) -> str:
    ok = [r for r in results if r["ok"]]
    ms = [r["ms"] for r in ok]
    flagged = [r["budget_met"] for r in ok if r["budget_met"] is not None]
    mix = Counter(short(r["model"]) for r in ok)
    mix_text = ", ".join(f"{m} {100 * c / len(ok):.0f}%" for m, c in mix.most_common())
    router_met = f"{100 * sum(flagged) / len(flagged):.0f}%" if flagged else "n/a"
    # Of all requests sent: one that failed was not served within the budget.
    client_met = 100 * sum(x <= budget_ms for x in ms) / len(results) if results else 0.0
    return (
        f"| {name} | {len(results)} | {len(results) - len(ok)} | "
        f"{statistics.median(ms):.0f} | {percentile(ms, 0.99):.0f} | "
        f"{client_met:.0f}% | {router_met} | {mix_text} |"
    )


async def main_async(args: argparse.Namespace) -> None:
    n = max(1, int(args.rate * args.duration))
    requests = make_requests(n, args.docs, args.seed)
    modes = {
        f"auto, max_latency_ms={args.budget_ms:g}": {
            "model": "auto",
            "max_latency_ms": args.budget_ms,
        },
        "fixed MiniLM-L12": {"model": L12},
        "fixed TinyBERT-L2": {"model": TINY},
    }
    # Warm every model's stats (and the client) before measuring.
    await run_mode(args.url, {"model": "auto"}, requests[:2], args.rate)
    for extra in modes.values():
        await run_mode(args.url, extra, requests[:2], args.rate)
    print(
        f"offered load {args.rate:g} req/s for {args.duration:g} s ({n} requests), "
        f"{args.docs} documents/request, budget {args.budget_ms:g} ms\n"
    )
    print(
        "| mode | requests | errors | p50 ms | p99 ms | within budget (client) | "
        "budget_met (router) | model mix |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, extra in modes.items():
        results = await run_mode(args.url, extra, requests, args.rate)
        print(summarise(name, results, args.budget_ms), flush=True)
        await drain(args.url, args.pause)


async def drain(url: str, timeout_s: float) -> None:
    """Wait until the router sees no queued tokens anywhere, so modes don't overlap."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            state = (await client.get(f"{url}/v1/routing")).json()
            if all(m["queued_tokens"] == 0 for m in state["models"].values()):
                return
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rate", type=float, default=4.0, help="offered requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per mode")
    parser.add_argument("--docs", type=int, default=20, help="documents per request")
    parser.add_argument("--budget-ms", type=float, default=400.0)
    parser.add_argument("--pause", type=float, default=60.0, help="max wait for queues to drain")
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Microbenchmark: the cost of one budget-routing decision (read the load board, predict
every enabled model, choose), with five models and live-looking stats. No Ray.

    python load_tests/bench_budget_policy.py [--decisions 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from serve_app.catalog import load_catalog
from serve_app.model.stats import ReplicaStats
from serve_app.routing.budget import BudgetPolicy
from serve_app.routing.loads import LoadBoard
from serve_app.types import Budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    args = parser.parse_args()

    catalog = load_catalog()
    models = [card.name for card in catalog if card.name.endswith("-v2")]  # the five documented
    policy = BudgetPolicy(catalog, models)
    board = LoadBoard(models)
    for i, model in enumerate(models):
        stats = ReplicaStats()
        stats.record_batch(0.01 * (i + 1), 10_000)
        stats.request_started(1000 * i)
        board.update(model, stats.snapshot(), inflight_when_sent=0)
    budgets = [
        Budget(max_latency_ms=ms, min_ndcg=floor) for ms in (5, 20, 80) for floor in (None, 72)
    ]

    timings = []
    for n in range(args.decisions):
        budget = budgets[n % len(budgets)]
        start = time.perf_counter_ns()
        policy.choose(budget, 2000 + n % 3000, board.loads())
        timings.append(time.perf_counter_ns() - start)
    timings.sort()
    us = [t / 1000 for t in timings]
    print(
        f"{args.decisions} decisions over {len(models)} models: "
        f"mean {statistics.fmean(us):.1f} us, p50 {us[len(us) // 2]:.1f} us, "
        f"p99 {us[int(len(us) * 0.99)]:.1f} us, max {us[-1]:.1f} us"
    )


if __name__ == "__main__":
    main()

"""The overload section's tables from `overload.py` reports: one row per body and load,
each cell the range over the reports (runs), and the targets checked per run.

    .venv/bin/python load_tests/overload_table.py docs/bench/overload/<commit>/run*.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

Run = dict
REFUSED = ("503", "429")


def span(values: Iterable[float | int | None], unit: str = "") -> str:
    """`a–b` over the runs (`a` when they agree, `–` when none has a value)."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    lo, hi = min(present), max(present)
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in (lo, hi)]
    return (shown[0] if lo == hi else f"{shown[0]}–{shown[1]}") + unit


def refused(run: Run) -> int:
    return sum(n for status, n in run["statuses"].items() if status in REFUSED)


def refusal_latency(run: Run, q: str) -> float | None:
    """The slowest refusal status's percentile `q` (503 and 429 are never both present)."""
    values = [run["latency_ms"][s][q] for s in REFUSED if s in run["latency_ms"]]
    return max(values) if values else None


def ok_latency(run: Run, q: str) -> float | None:
    return run["latency_ms"].get("200", {}).get(q)


def rows(reports: list[dict]) -> dict[tuple[str, float], list[Run]]:
    out: dict[tuple[str, float], list[Run]] = {}
    for report in reports:
        for run in report["runs"]:
            out.setdefault((run["body"], run["load_factor"]), []).append(run)
    return out


def body_name(body: str) -> str:
    return "12 docs" if body == "small" else f"{body} docs"


def table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def admitted_ratio(reports: list[dict], body: str, load: float) -> list[float]:
    """Per report: admitted p99 at `load` over admitted p99 at the lowest load it ran."""
    ratios = []
    for report in reports:
        runs = [r for r in report["runs"] if r["body"] == body]
        base = min(runs, key=lambda r: r["load_factor"])
        this = next((r for r in runs if r["load_factor"] == load), None)
        if (
            this is None
            or base is this
            or not ok_latency(base, "p99")
            or not ok_latency(this, "p99")
        ):
            continue
        ratios.append(round(ok_latency(this, "p99") / ok_latency(base, "p99"), 1))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    grouped = rows(reports)

    def col(runs: list[Run], get: Callable[[Run], float | int | None], unit: str = "") -> str:
        return span((get(r) for r in runs), unit)

    main_rows, where_rows = [], []
    for (body, load), runs in grouped.items():
        log = [r.get("ingress_access_log") or {} for r in runs]
        main_rows.append(
            [
                body_name(body),
                f"{load:g}×",
                str(len(runs)),
                col(runs, lambda r: r["capacity_rps"]),
                col(runs, lambda r: r["statuses"].get("200", 0)) + " / " + col(runs, refused),
                col(runs, lambda r: ok_latency(r, "p50"))
                + " / "
                + col(runs, lambda r: ok_latency(r, "p99")),
                col(runs, lambda r: refusal_latency(r, "p50"))
                + " / "
                + col(runs, lambda r: refusal_latency(r, "p99")),
                col(runs, lambda r: r["refusals_not_json"]),
                col(runs, lambda r: r["wrong"]),
                col(runs, lambda r: r["send_lag_ms"]["p99"]),
                col(runs, lambda r: r["client_cpu_pct_of_one_core"]),
                col(runs, lambda r: r.get("ingress_cpu_ms_per_request")),
                col(runs, lambda r: r.get("served_again_after_s")),
                col(runs, lambda r: max(r["memory_growth_mb"].values(), default=None), ""),
            ]
        )
        where_rows.append(
            [
                body_name(body),
                f"{load:g}×",
                str(len(runs)),
                span(x.get("refused_before_body", {}).get("n") for x in log)
                + ", "
                + span(x.get("refused_before_body", {}).get("p50") for x in log)
                + " / "
                + span(x.get("refused_before_body", {}).get("p99") for x in log),
                span(x.get("refused_after_parse", {}).get("n") for x in log),
                span(x.get("model_calls_refused_by_serve") for x in log),
                span(x.get("by_status", {}).get("499 client_closed", 0) for x in log),
                col(runs, lambda r: r["refusals_without_retry_after"]),
                col(runs, lambda r: sum(r["wrk_errors"].values())),
            ]
        )
    print(
        table(
            [
                "body",
                "load",
                "runs",
                "capacity req/s",
                "200 / refused",
                "200 p50 / p99 ms",
                "refusal p50 / p99 ms",
                "plain-text",
                "wrong",
                "send lag p99 ms",
                "wrk CPU %",
                "ingress CPU ms/request",
                "first 200 after stop, s",
                "largest RSS growth MB",
            ],
            main_rows,
        )
    )
    print()
    print(
        table(
            [
                "body",
                "load",
                "runs",
                "refused before the body: n, in-app p50 / p99 ms",
                "refused after the parse: n",
                "model calls Serve refused",
                "499 client_closed",
                "no Retry-After",
                "wrk socket errors",
            ],
            where_rows,
        )
    )
    print()
    for (body, load), runs in grouped.items():
        if load <= 1:
            continue
        p99s = [refusal_latency(r, "p99") for r in runs]
        print(
            f"- {body_name(body)} at {load:g}×: refusal p99 per run {p99s} ms "
            f"(≤ 100 ms in {sum(p is not None and p <= 100 for p in p99s)} of {len(runs)}); "
            f"admitted p99 / its p99 at the lowest load, per run: "
            f"{admitted_ratio(reports, body, load)}"
        )


if __name__ == "__main__":
    main()

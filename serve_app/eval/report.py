"""Quality from the run files (ir-measures, never by hand), latency and cost from the
requests, paired t-tests against the first system, and the three outputs: the printed
table, the JSON report and the quality-against-latency plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
from ir_measures import Qrel
from scipy import stats

MEASURES = [ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 100]
MEASURE_NAMES = [str(m) for m in MEASURES]  # as ir-measures spells them: nDCG@10, RR@10, R@100


@dataclass
class SystemResult:
    system: str
    metrics: dict[str, float]  # measure name -> mean over the judged queries
    per_query: dict[str, dict[str, float]]  # measure name -> qid -> value
    latencies_ms: list[float]
    documents: int  # scored by the service in the timed requests
    wall_s: float  # time the sessions spent sending them
    cost_usd: float | None
    queries: int  # judged queries with first-stage candidates
    failed: list[str]  # of those, the ones without a reranked list (their request failed)

    def row(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms)
        timed = latencies.size > 0
        return {
            "system": self.system,
            **{name: self.metrics[name] for name in MEASURE_NAMES},
            "p50_ms": float(np.percentile(latencies, 50)) if timed else None,
            "p99_ms": float(np.percentile(latencies, 99)) if timed else None,
            "docs_per_s": self.documents / self.wall_s if timed and self.wall_s > 0 else None,
            "cost_usd": self.cost_usd,
            "queries": self.queries,
            "requests": int(latencies.size),
            "documents": self.documents,
            "failed_queries": self.failed,
        }


def evaluate(qrels: Sequence[Qrel], run_path: Path) -> tuple[dict, dict]:
    """The run file's mean and per-query measures, as ir-measures computes them. A judged
    query missing from the run (its request failed) counts 0, as ir-measures counts it."""
    run = list(ir_measures.read_trec_run(str(run_path)))
    means = {str(m): float(v) for m, v in ir_measures.calc_aggregate(MEASURES, qrels, run).items()}
    per_query: dict[str, dict[str, float]] = {name: {} for name in MEASURE_NAMES}
    for metric in ir_measures.iter_calc(MEASURES, qrels, run):
        per_query[str(metric.measure)][metric.query_id] = float(metric.value)
    return means, per_query


def paired_p_values(reference: SystemResult, other: SystemResult) -> dict[str, float | None]:
    """Two-sided paired t-test over queries per measure (as `ranx.compare` runs it); None
    where it is undefined (identical values on every query)."""
    p_values: dict[str, float | None] = {}
    for name in MEASURE_NAMES:
        qids = sorted(reference.per_query[name])
        a = [reference.per_query[name][q] for q in qids]
        b = [other.per_query[name].get(q, 0.0) for q in qids]
        p = float(stats.ttest_rel(a, b).pvalue) if len(qids) > 1 else math.nan
        p_values[name] = None if math.isnan(p) else p
    return p_values


def report(results: Sequence[SystemResult], alpha: float) -> dict[str, Any]:
    rows = []
    for i, result in enumerate(results):
        row = result.row()
        if i > 0:
            row["p_value_vs_first"] = paired_p_values(results[0], result)
        rows.append(row)
    return {
        "measures": MEASURE_NAMES,
        "significance": {
            "test": "paired two-sided t-test over queries (scipy.stats.ttest_rel)",
            "against": results[0].system,
            "alpha": alpha,
        },
        "systems": rows,
    }


def _cell(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(data: dict[str, Any]) -> str:
    """The printed table; `*` marks a measure that differs from the first system's at
    `alpha` (paired t-test)."""
    alpha = data["significance"]["alpha"]
    headers = ["system", *MEASURE_NAMES, "p50_ms", "p99_ms", "docs/s", "cost_usd", "failed"]
    lines = []
    for row in data["systems"]:
        p_values = row.get("p_value_vs_first", {})
        cells = [row["system"]]
        for name in MEASURE_NAMES:
            p = p_values.get(name)
            cells.append(f"{row[name]:.4f}" + ("*" if p is not None and p < alpha else " "))
        cells += [
            _cell(row["p50_ms"], 1),
            _cell(row["p99_ms"], 1),
            _cell(row["docs_per_s"], 1),
            "-" if row["cost_usd"] is None else f"{row['cost_usd']:.6f}",
            f"{len(row['failed_queries'])}/{row['queries']}",
        ]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    out = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))
        )
    ]
    for cells in lines:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
        )
    out.append(
        f"* differs from {data['significance']['against']} at p < {alpha} "
        "(paired t-test over queries); failed: queries whose request failed (scored 0)"
    )
    return "\n".join(out)


def plot(data: dict[str, Any], path: Path, measure: str, title: str | None) -> None:
    """Quality against p99 latency, one point per system, named in the legend (labels on
    the points collide when systems land together); `first-stage`, which sends no request,
    is a horizontal line. The latency axis is logarithmic when it spans a factor of 20."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    markers = "osD^vP*Xph<>"
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    latencies = []
    for i, row in enumerate(data["systems"]):
        failed = len(row["failed_queries"])
        label = row["system"] + (f" ({failed}/{row['queries']} failed)" if failed else "")
        if row["p99_ms"] is None:
            if row["requests"] == 0 and row["system"] == "first-stage":
                ax.axhline(row[measure], color="grey", linestyle="--", linewidth=1, label=label)
            continue  # a system none of whose requests succeeded has no latency to place
        latencies.append(row["p99_ms"])
        ax.scatter(
            row["p99_ms"], row[measure], s=50, zorder=3, marker=markers[i % len(markers)],
            label=label,
        )  # fmt: skip
    if latencies and max(latencies) / max(min(latencies), 1e-9) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel("p99 latency per request (ms, as the client sees it)")
    ax.set_ylabel(measure)
    ax.set_title(title or f"{measure} against p99 latency")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.1, y=0.15)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

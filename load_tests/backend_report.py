"""Tables (Markdown) and a bar chart from `load_tests/backend_bench.sh`'s JSON files.

python -m load_tests.backend_report results/backends [--plot docs/bench/backends.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _short(model: str) -> str:
    return model.split("/")[-1].replace("ms-marco-", "").replace("-v2", "")


def load(directory: Path) -> tuple[dict, dict]:
    engine: dict = {}
    for path in sorted(directory.glob("engine-*.json")):
        data = json.loads(path.read_text())
        for model, entry in data["models"].items():
            engine[(model, data["workload"]["shape"])] = entry
    http: dict = {}
    for path in sorted(directory.glob("http-*.json")):
        data = json.loads(path.read_text())
        best = max(data["closed_loop"], key=lambda r: r["docs_per_s"])
        http[(data["model"], data["shape"], data["backend"])] = best
    return engine, http


def tables(engine: dict, http: dict) -> str:
    lines = [
        "| model | workload | backend | in-process docs/s (all pairs, per request) "
        "| x `predict` per query | max logit diff vs `predict` | rankings | int8 vs fp32 "
        "(Spearman, top-10 overlap, max diff) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, shape), entry in engine.items():
        lines.append(
            f"| {_short(model)} | {shape} | `CrossEncoder.predict` (torch fp32, batch 32) "
            f"| {entry['sentence_transformers_docs_per_s']}, "
            f"{entry['sentence_transformers_per_query_docs_per_s']} per query | 1.00 | — | — | — |"
        )
        for spec, row in entry["backends"].items():
            vs = row["vs_sentence_transformers"]
            int8 = row.get("vs_fp32_backend")
            lines.append(
                f"| | | {spec} | {row['forward_docs_per_s']}, "
                f"{row['forward_per_request_docs_per_s']} "
                f"| {row['per_request_speedup_vs_predict_per_query']:.2f} "
                f"| {vs['max_abs_logit_diff']:.1e} "
                f"| {'identical' if vs['identical_rankings'] else 'differ'} "
                + (
                    f"| {int8['spearman_mean']}, {int8['top10_overlap_mean']}, "
                    f"{int8['max_abs_logit_diff']:.2f} |"
                    if int8
                    else "| — |"
                )
            )
    lines += [
        "",
        "| model | workload | backend | through HTTP docs/s (p50, p99 ms) | x `predict` per query "
        "(same run) | x torch through HTTP |",
        "|---|---|---|---|---|---|",
    ]
    for (model, shape, backend), row in sorted(http.items()):
        reference = engine.get((model, shape), {}).get("sentence_transformers_per_query_docs_per_s")
        torch_row = http.get((model, shape, "torch:none"))
        lines.append(
            f"| {_short(model)} | {shape} | {backend} | {row['docs_per_s']} "
            f"({row['p50_ms']:.0f}, {row['p99_ms']:.0f}) "
            f"| {row['docs_per_s'] / reference:.2f} | "
            + (f"{row['docs_per_s'] / torch_row['docs_per_s']:.2f} |" if torch_row else "— |")
            if reference
            else "| — | — |"
        )
    return "\n".join(lines)


def plot(engine: dict, http: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted({(m, s) for m, s, _ in http})
    backends = sorted({b for _, _, b in http}, key=lambda b: (b != "torch:none", b))
    series = ["predict per query"] + backends
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    # Relative to predict per query, so models of very different speeds share one axis;
    # each bar is labelled with its documents/s.
    for i, name in enumerate(series):
        reference = [
            engine.get(k, {}).get("sentence_transformers_per_query_docs_per_s") or np.nan
            for k in keys
        ]
        docs = [
            ref if name == "predict per query" else http.get((*k, name), {}).get("docs_per_s")
            for k, ref in zip(keys, reference)
        ]
        ratios = [d / r if d else 0 for d, r in zip(docs, reference)]
        bars = ax.bar(np.arange(len(keys)) + i * width, ratios, width, label=name)
        ax.bar_label(bars, labels=[f"{d:.0f}" if d else "" for d in docs], fontsize=7)
    ax.set_xticks(np.arange(len(keys)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels([f"{_short(m)} ({s})" for m, s in keys])
    ax.set_ylabel("× CrossEncoder.predict per query (labels: docs/s)")
    ax.set_title("Through HTTP by backend, against CrossEncoder.predict per query (random weights)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--plot")
    args = parser.parse_args()
    engine, http = {}, {}
    for d in args.directories:
        e, h = load(d)
        engine.update(e)
        http.update(h)
    print(tables(engine, http))
    if args.plot:
        plot(engine, http, args.plot)


if __name__ == "__main__":
    main()

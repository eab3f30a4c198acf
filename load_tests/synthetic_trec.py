"""A synthetic TREC-style test collection for running `rerank-eval` where no real one can be
downloaded: queries and passages of realistic token lengths from `workload.make_requests`,
a first-stage run of `--depth` candidates per query with descending scores, and random
graded judgments for some candidates. Deterministic for a seed. The judgments mean nothing:
it exercises the plumbing and measures latency, nothing else.

    python -m load_tests.synthetic_trec --out /tmp/synthetic --queries 30 --depth 100
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from load_tests.workload import make_requests


def write_collection(out: Path, queries: int, depth: int, judged: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    requests = make_requests(queries, docs_per_request=depth, seed=seed)
    with (
        (out / "queries.tsv").open("w") as q,
        (out / "collection.tsv").open("w") as c,
        (out / "run.trec").open("w") as r,
        (out / "qrels.txt").open("w") as j,
    ):
        for n, request in enumerate(requests, start=1):
            qid = f"s{n}"
            q.write(f"{qid}\t{request.query}\n")
            docids = [f"{qid}-p{i}" for i in range(1, depth + 1)]
            for rank, (docid, text) in enumerate(zip(docids, request.documents), start=1):
                c.write(f"{docid}\t{text}\n")
                r.write(f"{qid} Q0 {docid} {rank} {30.0 - rank * 0.1:.2f} synthetic-first-stage\n")
            for docid in rng.sample(docids, min(judged, depth)):
                j.write(f"{qid} 0 {docid} {rng.choice([0, 0, 1, 2, 3])}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--judged", type=int, default=10, help="judged candidates per query")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_collection(args.out, args.queries, args.depth, args.judged, args.seed)


if __name__ == "__main__":
    main()

"""`rerank-eval`: run a TREC-style test collection through a running rerank service and
report quality (ir-measures) next to latency and cost, per system."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from tqdm import tqdm

from serve_app.eval import client as rerank_client
from serve_app.eval.inputs import InputError, read_documents, read_qrels, read_queries, read_run
from serve_app.eval.report import MEASURE_NAMES, SystemResult, evaluate, plot, report, table
from serve_app.eval.runs import RunStore, Timing
from serve_app.eval.systems import FIRST_STAGE, System, parse_systems

DESCRIPTION = """\
Rerank a first-stage TREC run through a running rerank service's HTTP API (POST /v1/rerank)
with each system given, and report quality next to latency and cost: nDCG@10, RR@10 (MRR@10)
and R@100 computed by ir-measures from the reranked run files; per-request latency (p50, p99,
measured by this client), documents/s, and the cost the service's GET /v1/usage reports; a
paired t-test per measure against the first listed system."""

EPILOG = f"""\
inputs:
  --qrels       TREC qrels, `qid 0 docid relevance` (whitespace-separated).
  --run         first-stage TREC run, `qid Q0 docid rank score tag`. Per query its top
                --depth candidates (by score, ties by rank) are reranked. Only judged
                queries (those in --qrels) are sent; the rest are skipped and counted.
  --queries     `qid<TAB>text` (MS MARCO's queries.*.tsv).
  --collection  `docid<TAB>text` (MS MARCO's collection.tsv); streamed, and only the
                documents the run needs are kept in memory.
  A malformed line stops the tool with `FILE:LINE: what is wrong`.

systems (--systems, in order; the first is the reference of the significance tests):
  MODEL                     a model name or alias, e.g. cross-encoder/ms-marco-MiniLM-L6-v2
  auto                      budget routing with the service's default budget
  auto:max_latency_ms=50    ... with a latency budget; also min_ndcg=72, min_mrr=39,
                            several joined by commas: auto:min_ndcg=72,max_latency_ms=80
  cascade                   the service's cascade; cascade:first=A,second=B,keep=20 sets it
  {FIRST_STAGE}               the input run itself (the baseline): no requests
  Separate systems by spaces or commas.

requests:
  One POST /v1/rerank per query with its candidates in first-stage order, raw_scores: true
  (logits, so confident scores do not saturate into ties), return_documents: false. The
  reranked order is by score, ties kept in first-stage order (when it evaluates a run
  file, ir-measures, like trec_eval, orders equal scores by document id instead). 429 and
  503 are retried (--retries, after Retry-After), as are connection errors; any other
  failure is printed and counted: the query stays out of that system's run file, so every
  measure scores it 0 (as ir-measures scores a judged query missing from a run), and it is
  listed in the report.
  Latency is the client's: from sending the request to the end of the response.
  docs/s is documents sent over the wall time of the requests at --concurrency.
  Cost is the change in GET /v1/usage's cost_usd for the key while the system ran; it is
  only this tool's cost if nothing else uses the key meanwhile.

outputs:
  A table on stdout. --out: JSON, {{"systems": [{{"system", {", ".join(MEASURE_NAMES)},
  "p50_ms", "p99_ms", "docs_per_s", "cost_usd", "queries", "requests", "documents",
  "failed_queries", "p_value_vs_first"}}, ...]}}. --run-out DIR: DIR/<system>.run, the
  reranked TREC run of each system, with <system>.timings.tsv and <system>.totals.json.
  --plot: a PNG of --plot-measure against p99 latency, one point per system.

resuming:
  With --run-out, running the same command again resumes: queries already complete in a
  system's run file are not sent again; their latencies come from the timings file, and
  cost and wall time are summed over the sessions. Delete DIR to start over.

exit status: 0 done; 1 bad input or service unreachable; 3 report written, but some
queries failed.

On the offline demo (deployments/demo.yaml) the checkpoints are random-initialised: the
quality figures are meaningless there; the latency, throughput and cost are real."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rerank-eval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    service = parser.add_argument_group("service")
    service.add_argument("--base-url", default="http://127.0.0.1:8000", help="default: %(default)s")
    service.add_argument(
        "--api-key",
        default=os.environ.get("RERANK_API_KEY"),
        help="bearer key (default: $RERANK_API_KEY; none for a service with keys off)",
    )
    data = parser.add_argument_group("inputs")
    data.add_argument("--qrels", type=Path, required=True, help="TREC qrels")
    data.add_argument("--run", type=Path, required=True, help="first-stage TREC run")
    data.add_argument("--queries", type=Path, required=True, help="qid<TAB>text")
    data.add_argument(
        "--collection", type=Path, help="docid<TAB>text (needed unless only first-stage)"
    )
    data.add_argument(
        "--depth", type=int, default=100, help="candidates reranked per query (%(default)s)"
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        required=True,
        metavar="SYSTEM",
        help="systems to compare, the first being the reference (see below)",
    )
    load = parser.add_argument_group("requests")
    load.add_argument("--concurrency", type=int, default=4, help="requests in flight (%(default)s)")
    load.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (%(default)s)"
    )
    load.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries after 429/503 or a connection error (%(default)s)",
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", type=Path, help="JSON report")
    out.add_argument("--run-out", type=Path, help="directory of reranked run files (resumable)")
    out.add_argument("--plot", type=Path, help="PNG: quality against p99 latency")
    out.add_argument(
        "--plot-measure", default="nDCG@10", choices=MEASURE_NAMES, help="(%(default)s)"
    )
    out.add_argument("--plot-title", help="title of the plot")
    out.add_argument("--alpha", type=float, default=0.05, help="significance level (%(default)s)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.depth < 1:
        parser.error("--depth must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    try:
        args.systems = parse_systems(" ".join(args.systems))
    except ValueError as e:
        parser.error(str(e))
    if any(not s.is_first_stage for s in args.systems) and args.collection is None:
        parser.error("--collection is needed to rerank")
    return args


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


async def check_service(http: httpx.AsyncClient) -> None:
    """Fail early on a wrong URL or key, and say so when the weights are random."""
    try:
        response = await http.get("/v1/models")
    except httpx.HTTPError as e:
        raise SystemExit(f"rerank-eval: cannot reach {http.base_url}: {e}") from None
    if response.status_code != 200:
        raise SystemExit(f"rerank-eval: GET /v1/models: {rerank_client.error_text(response)}")
    random = [m["id"] for m in response.json().get("data", []) if m.get("weights") == "random"]
    if random:
        log(
            f"WARNING: {len(random)} model(s) have RANDOM weights ({', '.join(random)}): "
            "their quality figures are meaningless; latency and cost are real."
        )


async def run_system(
    http: httpx.AsyncClient,
    store: RunStore,
    jobs: list[rerank_client.Job],
    args: argparse.Namespace,
) -> None:
    pending = [job for job in jobs if job.qid not in store.rankings]
    if not pending:
        return
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(pending),
        desc=store.system.spec,
        unit="query",
        disable=True if args.no_progress else None,
        file=sys.stderr,
    )
    failures = 0

    def on_result(result: rerank_client.Reranked | rerank_client.Failed) -> None:
        nonlocal failures
        if isinstance(result, rerank_client.Failed):
            failures += 1
            log(f"{store.system.spec}: query {result.qid} failed: {result.reason}")
        else:
            store.add(result.qid, result.ranking, Timing(result.latency_ms, result.documents))
        bar.update(1)

    cost_before = await rerank_client.cost_usd(http)
    started = time.perf_counter()
    try:
        await rerank_client.rerank_all(
            http, store.system, pending, args.concurrency, args.retries, on_result
        )
    finally:
        wall_s = time.perf_counter() - started
        bar.close()
        cost_after = await rerank_client.cost_usd(http)
        cost = None if cost_before is None or cost_after is None else cost_after - cost_before
        store.add_session(cost, wall_s)
        store.rewrite()
    if failures:
        log(f"{store.system.spec}: {failures} of {len(pending)} queries failed")


async def run_all(
    args: argparse.Namespace,
    run_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[SystemResult]:
    qrels = read_qrels(args.qrels)
    candidates = read_run(args.run, args.depth)
    judged = {q.query_id for q in qrels}
    qids = [qid for qid in candidates if qid in judged]
    skipped = len(candidates) - len(qids)
    if not qids:
        raise InputError(f"{args.run}: no query of the run is judged in {args.qrels}")
    queries = read_queries(args.queries)
    missing = [qid for qid in qids if qid not in queries]
    if missing:
        raise InputError(
            f"{args.queries}: {len(missing)} judged run queries have no text "
            f"(e.g. {', '.join(missing[:5])})"
        )
    log(
        f"{len(qids)} judged queries, up to {args.depth} candidates each"
        + (f"; {skipped} unjudged run queries skipped" if skipped else "")
    )
    systems: list[System] = args.systems
    texts: dict[str, str] = {}
    if any(not s.is_first_stage for s in systems):
        wanted = {c.docid for qid in qids for c in candidates[qid]}
        texts = read_documents(args.collection, wanted)
    jobs = (
        [
            rerank_client.Job(
                qid,
                queries[qid],
                [c.docid for c in candidates[qid]],
                [texts[c.docid] for c in candidates[qid]],
            )
            for qid in qids
        ]
        if texts
        else []
    )

    by_qid = {qid: [c.docid for c in candidates[qid]] for qid in qids}
    stores = [RunStore(run_dir, system, by_qid) for system in systems]
    timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, 10.0))
    limits = httpx.Limits(max_connections=args.concurrency + 1)
    async with httpx.AsyncClient(
        base_url=args.base_url,
        headers=rerank_client.headers(args.api_key),
        timeout=timeout,
        limits=limits,
        transport=transport,
    ) as http:
        if jobs:
            await check_service(http)
        for store in stores:
            store.load()
            if store.system.is_first_stage:
                for qid in qids:
                    if qid not in store.rankings:
                        ranking = [(c.docid, c.score) for c in candidates[qid]]
                        store.add(qid, ranking, None)
                store.rewrite()
            else:
                await run_system(http, store, jobs, args)

    results = []
    for store in stores:
        means, per_query = evaluate(qrels, store.run_path)
        totals = store.totals()
        timings = list(store.timings.values())
        results.append(
            SystemResult(
                system=store.system.spec,
                metrics=means,
                per_query=per_query,
                latencies_ms=[t.latency_ms for t in timings],
                documents=sum(t.documents for t in timings),
                wall_s=totals.wall_s,
                cost_usd=0.0 if store.system.is_first_stage else totals.cost_usd,
                queries=len(qids),
                failed=[qid for qid in qids if qid not in store.rankings],
            )
        )
    return results


def main(
    argv: Sequence[str] | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> int:
    """`transport`: tests answer the requests in process instead of over the network."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rerank-eval-") as scratch:
        run_dir = args.run_out or Path(scratch)
        try:
            results = asyncio.run(run_all(args, run_dir, transport))
        except InputError as e:
            print(f"rerank-eval: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            where = f"; run again with --run-out {args.run_out} to resume" if args.run_out else ""
            print(f"rerank-eval: interrupted{where}", file=sys.stderr)
            return 130
    data = report(results, args.alpha)
    print(table(data))
    for path in (args.out, args.plot):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if args.out:
        args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(data, args.plot, args.plot_measure, args.plot_title)
    return 3 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

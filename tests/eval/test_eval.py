"""rerank-eval on the hand-made collection in `tests/eval/data`, its requests answered in
process by a stand-in for the HTTP API (`httpx.MockTransport`): metrics against ir-measures
on the same files, the reranked candidates, the baseline, failures, resuming, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import ir_measures
import pytest
from scipy import stats

from serve_app.eval.cli import main
from serve_app.eval.inputs import read_run
from serve_app.eval.systems import parse_systems

DATA = Path(__file__).parent / "data"
MEASURES = ["nDCG@10", "RR@10", "R@100"]


def overlap(query: str, text: str) -> float:
    """Words shared with the query: many ties, which must keep first-stage order."""
    words = set(re.findall(r"\w+", query.lower()))
    return float(len(words & set(re.findall(r"\w+", text.lower()))))


SCORERS: dict[str, Callable[[str, str], float]] = {
    "overlap": overlap,
    "length": lambda query, text: float(len(text)),
}


class FakeService:
    """`/v1/rerank`, `/v1/models`, `/v1/usage` as the service shapes them; `fail(query)`
    gives the error response for a query, or None to score it."""

    def __init__(self, fail: Callable[[str], httpx.Response | None] = lambda q: None):
        self.fail = fail
        self.requests: list[dict] = []
        self.documents = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(
                200, json={"data": [{"id": m, "weights": "random"} for m in SCORERS]}
            )
        if request.url.path == "/v1/usage":
            return httpx.Response(200, json={"cost_usd": self.documents * 8e-6})
        body = json.loads(request.content)
        self.requests.append(body)
        failure = self.fail(body["query"])
        if failure is not None:
            return failure
        score = SCORERS[body["model"]]
        scores = [score(body["query"], text) for text in body["documents"]]
        self.documents += len(scores)
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        results = [{"index": i, "relevance_score": scores[i]} for i in ranked]
        return httpx.Response(200, json={"results": results})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def run_eval(tmp_path: Path, service: FakeService, *extra: str, qrels: Path = DATA / "qrels.txt"):
    argv = [
        "--qrels", str(qrels), "--run", str(DATA / "run.trec"),
        "--queries", str(DATA / "queries.tsv"), "--collection", str(DATA / "collection.tsv"),
        "--out", str(tmp_path / "report.json"), "--run-out", str(tmp_path / "runs"),
        "--no-progress", "--concurrency", "2",
        *extra,
    ]  # fmt: skip
    return main(argv, transport=service.transport())


def report(tmp_path: Path) -> dict[str, dict]:
    data = json.loads((tmp_path / "report.json").read_text())
    return {row["system"]: row for row in data["systems"]}


def ir_measures_on(run_file: Path) -> dict[str, float]:
    qrels = list(ir_measures.read_trec_qrels(str(DATA / "qrels.txt")))
    run = list(ir_measures.read_trec_run(str(run_file)))
    measures = [ir_measures.parse_measure(m) for m in MEASURES]
    return {str(m): v for m, v in ir_measures.calc_aggregate(measures, qrels, run).items()}


def ranked_docids(run_file: Path) -> dict[str, list[str]]:
    rows: dict[str, list[tuple[int, str]]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, docid, rank, _, _ = line.split()
        rows.setdefault(qid, []).append((int(rank), docid))
    return {qid: [d for _, d in sorted(r)] for qid, r in rows.items()}


def test_reported_metrics_are_ir_measures_on_the_reranked_run_files(tmp_path):
    assert run_eval(tmp_path, FakeService(), "--systems", "first-stage", "overlap", "length") == 0
    rows = report(tmp_path)
    for system in ("first-stage", "overlap", "length"):
        expected = ir_measures_on(tmp_path / "runs" / f"{system}.run")
        assert {m: rows[system][m] for m in MEASURES} == pytest.approx(expected, abs=1e-12)
    # The systems differ, so equality above is not of three identical numbers.
    assert rows["overlap"]["RR@10"] != rows["first-stage"]["RR@10"]
    # By hand: overlap puts each query's best passage first (d3, d9, d10), so RR@10 is 1.
    assert rows["overlap"]["RR@10"] == 1.0
    assert rows["overlap"]["requests"] == 3 and rows["overlap"]["documents"] == 12
    assert rows["overlap"]["p50_ms"] > 0 and rows["overlap"]["cost_usd"] == pytest.approx(12 * 8e-6)
    assert rows["first-stage"]["p99_ms"] is None and rows["first-stage"]["cost_usd"] == 0.0


def test_reranked_run_holds_the_candidates_reordered_by_the_scores_ties_stable(tmp_path):
    service = FakeService()
    assert run_eval(tmp_path, service, "--depth", "4", "--systems", "overlap") == 0
    candidates = read_run(DATA / "run.trec", depth=4)
    queries = dict(line.split("\t") for line in (DATA / "queries.tsv").read_text().splitlines())
    texts = dict(line.split("\t") for line in (DATA / "collection.tsv").read_text().splitlines())
    reranked = ranked_docids(tmp_path / "runs" / "overlap.run")
    assert set(reranked) == {"q1", "q2", "q3"}  # q4 is unjudged: not sent
    for qid, ranking in reranked.items():
        first_stage = [c.docid for c in candidates[qid]]
        assert sorted(ranking) == sorted(first_stage) and len(first_stage) == min(4, len(ranking))
        scores = {d: overlap(queries[qid], texts[d]) for d in first_stage}
        # Python's sort is stable: ties stay in first-stage order.
        assert ranking == sorted(first_stage, key=lambda d: -scores[d])
    # q1 has ties (d1 and d2 share one word with the query): first-stage order kept.
    assert reranked["q1"] == ["d3", "d1", "d2", "d4"]
    # Requests went out with the candidates in first-stage order, as logits.
    q1 = next(r for r in service.requests if r["query"] == queries["q1"])
    assert q1["documents"] == [texts[d] for d in ["d1", "d2", "d3", "d4"]]
    assert q1["raw_scores"] is True and q1["model"] == "overlap"


def test_first_stage_baseline_reproduces_the_input_runs_own_metrics(tmp_path):
    assert run_eval(tmp_path, FakeService(), "--systems", "first-stage") == 0
    expected = ir_measures_on(DATA / "run.trec")
    assert {m: report(tmp_path)["first-stage"][m] for m in MEASURES} == pytest.approx(expected)


def test_paired_t_test_against_the_first_system(tmp_path):
    assert run_eval(tmp_path, FakeService(), "--systems", "first-stage", "length") == 0
    qrels = list(ir_measures.read_trec_qrels(str(DATA / "qrels.txt")))
    per_query = {}
    for system in ("first-stage", "length"):
        run = list(ir_measures.read_trec_run(str(tmp_path / "runs" / f"{system}.run")))
        per_query[system] = {
            m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)
        }
    qids = sorted(per_query["first-stage"])
    expected = stats.ttest_rel(
        [per_query["first-stage"][q] for q in qids], [per_query["length"][q] for q in qids]
    ).pvalue
    row = report(tmp_path)["length"]
    assert row["p_value_vs_first"]["nDCG@10"] == pytest.approx(expected)
    assert "p_value_vs_first" not in report(tmp_path)["first-stage"]


def test_a_failed_query_is_reported_and_scored_zero_and_a_rerun_resumes(tmp_path, capsys):
    bees = "how do bees make honey"
    broken = FakeService(
        fail=lambda q: (
            httpx.Response(
                422, json={"error": {"type": "invalid_request", "message": "nope", "param": None}}
            )
            if q == bees
            else None
        )
    )
    assert run_eval(tmp_path, broken, "--systems", "overlap") == 3
    assert "query q2 failed: HTTP 422 invalid_request: nope" in capsys.readouterr().err
    row = report(tmp_path)["overlap"]
    assert row["failed_queries"] == ["q2"] and row["requests"] == 2
    run_file = tmp_path / "runs" / "overlap.run"
    assert set(ranked_docids(run_file)) == {"q1", "q3"}
    # ir-measures scores the missing judged query 0, over all three judged queries.
    assert row["nDCG@10"] == pytest.approx(ir_measures_on(run_file)["nDCG@10"])
    assert row["RR@10"] == pytest.approx(2 / 3)

    # An interrupted write leaves part of q3: that query is sent again, with q2.
    lines = run_file.read_text().splitlines()
    run_file.write_text(
        "\n".join(line for line in lines if not line.startswith("q3 Q0 d12")) + "\n"
    )
    healthy = FakeService()
    assert run_eval(tmp_path, healthy, "--systems", "overlap") == 0
    assert sorted(r["query"] for r in healthy.requests) == sorted(
        [bees, "boiling point of water at sea level"]
    )
    row = report(tmp_path)["overlap"]
    assert row["failed_queries"] == [] and row["requests"] == 3 and row["RR@10"] == 1.0


def test_overload_is_retried_after_retry_after(tmp_path):
    answers = iter([httpx.Response(503, headers={"retry-after": "0"}, json={})])
    service = FakeService(fail=lambda q: next(answers, None))
    assert run_eval(tmp_path, service, "--systems", "length", "--concurrency", "1") == 0
    assert len(service.requests) == 4  # three queries, one of them twice


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("qrels.txt", "q1 0 d3 2\nq1 0 d2\n", "qrels.txt:2: a qrels line is `qid iteration docid"),
        ("qrels.txt", "q1 0 d3 2\n\nq1 0 d2 high\n", "qrels.txt:3: relevance must be an integer"),
        ("run.trec", "q1 Q0 d1 1 x bm25\n", "run.trec:1: rank must be an integer and score"),
        ("queries.tsv", "q1 no tab here\n", "queries.tsv:1: expected `id<TAB>text`"),
        ("collection.tsv", "d1\tok\nd2 broken\n", "collection.tsv:2: expected `id<TAB>text`"),
    ],
)
def test_a_malformed_line_is_an_error_naming_file_and_line(
    tmp_path, capsys, name, content, message
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in DATA.iterdir():
        (inputs / path.name).write_text(path.read_text())
    (inputs / name).write_text(content)
    argv = [
        "--qrels", str(inputs / "qrels.txt"), "--run", str(inputs / "run.trec"),
        "--queries", str(inputs / "queries.tsv"), "--collection", str(inputs / "collection.tsv"),
        "--systems", "overlap", "--no-progress",
    ]  # fmt: skip
    assert main(argv, transport=FakeService().transport()) == 1
    assert message in capsys.readouterr().err


def test_systems_parse_into_request_fields():
    systems = parse_systems(
        "first-stage cross-encoder/ms-marco-MiniLM-L6-v2,auto:min_ndcg=72,max_latency_ms=80 "
        "cascade cascade:first=TinyBERT-L2,keep=10 auto"
    )
    assert [s.fields for s in systems] == [
        {},
        {"model": "cross-encoder/ms-marco-MiniLM-L6-v2"},
        {"model": "auto", "min_ndcg": 72.0, "max_latency_ms": 80.0},
        {"model": "cascade"},
        {"model": "cascade", "cascade": {"first": "TinyBERT-L2", "keep": 10}},
        {"model": "auto"},
    ]
    assert systems[1].file_stem == "cross-encoder_ms-marco-MiniLM-L6-v2"
    for bad in (
        "auto:max_latency_ms=-1",
        "auto:speed=3",
        "first-stage:x=1",
        "cascade:keep=0",
        "auto auto",
    ):
        with pytest.raises(ValueError):
            parse_systems(bad)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for needle in [
        "--base-url", "--api-key", "--qrels", "--run ", "--queries", "--collection", "--depth",
        "--systems", "auto:max_latency_ms=50", "min_ndcg", "cascade", "first-stage",
        "--concurrency", "--out", "--run-out", "--plot", "resum", "failed", "RR@10", "R@100",
        "paired t-test", "/v1/usage", "random-initialised",
    ]:  # fmt: skip
        assert needle in text, needle


def test_the_synthetic_collection_reads_back_as_a_complete_test_collection(tmp_path):
    from load_tests.synthetic_trec import write_collection
    from serve_app.eval.inputs import read_documents, read_qrels, read_queries

    write_collection(tmp_path / "a", queries=3, depth=7, judged=2, seed=5)
    write_collection(tmp_path / "b", queries=3, depth=7, judged=2, seed=5)
    for name in ("qrels.txt", "run.trec", "queries.tsv", "collection.tsv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    run = read_run(tmp_path / "a" / "run.trec", depth=100)
    assert sorted(run) == sorted(read_queries(tmp_path / "a" / "queries.tsv"))
    assert all(len(candidates) == 7 for candidates in run.values())
    assert len(read_qrels(tmp_path / "a" / "qrels.txt")) == 6
    wanted = {c.docid for candidates in run.values() for c in candidates}
    assert len(read_documents(tmp_path / "a" / "collection.tsv", wanted)) == 21


def test_an_interrupted_run_resumes_from_the_run_files_written(tmp_path):
    answered: list[str] = []

    def interrupt_on_the_second(query: str) -> httpx.Response | None:
        answered.append(query)
        if len(answered) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second request is out
        return None

    first = FakeService(fail=interrupt_on_the_second)
    assert run_eval(tmp_path, first, "--systems", "overlap", "--concurrency", "1") == 130
    assert set(ranked_docids(tmp_path / "runs" / "overlap.run")) == {"q1"}
    second = FakeService()
    assert run_eval(tmp_path, second, "--systems", "overlap") == 0
    assert len(second.requests) == 2  # q2 and q3 only
    row = report(tmp_path)["overlap"]
    assert row["requests"] == 3 and row["RR@10"] == 1.0  # q1's latency kept from session one

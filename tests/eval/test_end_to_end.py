"""`rerank-eval` as a user runs it (its own process), against the real HTTP app served by
uvicorn on loopback with API keys on: the app, edge, service, router, tokenizers and usage
ledger are the real ones; only the model scores are in process (token counts, as in
tests/api/test_app.py), so no Ray is started. Two models, cascade and budget routing, with
a report and a plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from serve_app.api.app import create_app
from serve_app.api.assembly import assemble
from serve_app.config import AppConfig
from serve_app.eval.cli import main
from serve_app.model.tokenization import EncodedPairs
from serve_app.service.auth import hash_key
from serve_app.service.usage import LocalLedger
from tests.conftest import checkpoint_path, usage_db_path, uvicorn_on_loopback

DATA = Path(__file__).parent / "data"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
KEY = "rr-eval-key"
ROOT = Path(__file__).resolve().parents[2]


class TokenCountModels:
    """Each document scores its token count (a stand-in for the model replicas)."""

    def __init__(self, models: list[str]):
        self.models = models

    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        return pairs.doc_lengths.astype(np.float32)

    async def describe(self, model: str) -> dict:
        return {"weights": "random", "device": "cpu", "dtype": "float32"}

    async def replica_states(self) -> dict[str, dict[str, int]]:
        return {m: {"RUNNING": 1} for m in self.models}


@pytest.fixture(scope="module")
def base_url(checkpoint_root) -> Iterator[str]:
    config = AppConfig.model_validate(
        {
            "models": [
                {"name": m, "source": checkpoint_path(checkpoint_root, m)} for m in (TINY, L12)
            ],
            "auth": {"keys": [{"id": "eval", "sha256": hash_key(KEY)}]},
            "usage": {"sqlite_path": usage_db_path(checkpoint_root)},
        }
    )
    models = TokenCountModels(config.enabled_models)
    parts = assemble(config, models, LocalLedger(config.usage), environ={})
    with uvicorn_on_loopback(create_app(parts.service, parts.edge)) as url:
        yield url


def test_two_models_cascade_and_auto_through_the_api_with_a_report_and_a_plot(base_url, tmp_path):
    systems = ["first-stage", TINY, L12, "cascade", "auto:max_latency_ms=10000"]
    command = [
        sys.executable, "-m", "serve_app.eval.cli", "--base-url", base_url,
        "--qrels", str(DATA / "qrels.txt"), "--run", str(DATA / "run.trec"),
        "--queries", str(DATA / "queries.tsv"), "--collection", str(DATA / "collection.tsv"),
        "--systems", *systems, "--concurrency", "2",
        "--out", str(tmp_path / "report.json"), "--run-out", str(tmp_path / "runs"),
        "--plot", str(tmp_path / "plot.png"),
    ]  # fmt: skip
    env = {**os.environ, "RERANK_API_KEY": KEY}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr
    assert done.stdout.splitlines()[0].split()[:4] == ["system", "nDCG@10", "RR@10", "R@100"]

    rows = json.loads((tmp_path / "report.json").read_text())["systems"]
    assert [row["system"] for row in rows] == systems
    qrels = list(ir_measures.read_trec_qrels(str(DATA / "qrels.txt")))
    for row in rows[1:]:
        assert row["requests"] == 3 and row["failed_queries"] == []
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["docs_per_s"] > 0
        assert row["cost_usd"] > 0  # from the service's /v1/usage for this key
        run_file = tmp_path / "runs" / f"{row['system'].replace('/', '_').replace(':', '_')}.run"
        expected = ir_measures.calc_aggregate(
            [ir_measures.nDCG @ 10], qrels, ir_measures.read_trec_run(str(run_file))
        )
        assert row["nDCG@10"] == pytest.approx(expected[ir_measures.nDCG @ 10])
    # The cascade bills both stages: more than one model alone on the same documents.
    by_system = {row["system"]: row for row in rows}
    assert by_system["cascade"]["cost_usd"] > by_system[TINY]["cost_usd"]
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_wrong_key_stops_before_any_query(base_url, tmp_path):
    argv = [
        "--base-url", base_url, "--api-key", "wrong",
        "--qrels", str(DATA / "qrels.txt"), "--run", str(DATA / "run.trec"),
        "--queries", str(DATA / "queries.tsv"), "--collection", str(DATA / "collection.tsv"),
        "--systems", TINY, "--run-out", str(tmp_path / "runs"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert "GET /v1/models: HTTP 401" in str(exit_.value.code)
    assert not (tmp_path / "runs" / "cross-encoder_ms-marco-TinyBERT-L2-v2.run").exists()

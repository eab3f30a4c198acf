"""Two architectures served side by side in one Serve app, over real HTTP on loopback:
an XLM-RoBERTa reranker outside the catalog (free name, no figures, its own tokenizer,
no token types) beside a two-label BERT under a catalog name (nboost's, scored by its
"relevant" logit). RANDOM WEIGHTS (`tests/model/architectures.py`). One Serve instance."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import app_args, start_serve_app
from tests.model.architectures import DOCUMENTS, QUERY, write_architecture

XLMR = "test-org/xlm-roberta-reranker"
NBOOST = "nboost/pt-tinybert-msmarco"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("served-architectures")
    return {
        XLMR: str(write_architecture("xlm-roberta", root)),
        NBOOST: str(write_architecture("bert-two-labels", root)),
    }


@pytest.fixture(scope="module")
def url(checkpoints, tmp_path_factory):
    args = app_args(tmp_path_factory.mktemp("usage"), [])
    args["models"] = [{"name": name, "source": path} for name, path in checkpoints.items()]
    yield from start_serve_app(args)


def rerank(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=60)


@pytest.mark.parametrize(("model", "column"), [(XLMR, 0), (NBOOST, 1)])
def test_each_architecture_matches_cross_encoder_predict_through_http(
    url, checkpoints, model, column
):
    from sentence_transformers import CrossEncoder

    r = rerank(url, {"model": model, "query": QUERY, "documents": DOCUMENTS, "raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model
    served = {res["index"]: res["relevance_score"] for res in body["results"]}
    reference = CrossEncoder(
        checkpoints[model], activation_fn=torch.nn.Identity(), device="cpu"
    ).predict([(QUERY, d) for d in DOCUMENTS])
    reference = np.asarray(reference)
    if reference.ndim == 2:
        reference = reference[:, column]
    np.testing.assert_allclose(
        [served[i] for i in range(len(DOCUMENTS))], reference, atol=1e-4, rtol=0
    )


def test_models_list_the_card_or_its_absence(url):
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert sorted(models) == sorted([XLMR, NBOOST])
    free, nboost = models[XLMR], models[NBOOST]
    assert free["deployment"] == "xlm-roberta-reranker" and free["owned_by"] == "test-org"
    assert free["in_catalog"] is False and free["architecture"] == {}
    assert free["ndcg10_trec_dl19"] is None and free["v100_docs_per_s"] is None
    assert free["weights"] == "random" and free["engine"]["model_type"] == "xlm-roberta"
    assert nboost["in_catalog"] is True and nboost["ndcg10_trec_dl19"] == 63.63
    assert nboost["owned_by"] == "nboost" and nboost["engine"]["score_column"] == 1


def test_an_accuracy_floor_is_met_only_by_a_model_with_figures(url):
    floor = {"query": QUERY, "documents": DOCUMENTS, "min_ndcg": 60}
    r = rerank(url, floor)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == NBOOST
    r = rerank(url, {**floor, "min_ndcg": 64})
    assert r.status_code == 400 and r.json()["error"]["type"] == "budget_unsatisfiable"
    assert NBOOST in r.json()["error"]["message"]

"""The whole service on Ray Serve over real HTTP on loopback: all five models, with
fractional logical GPUs, one Serve instance for the module."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import ALL_MODELS, app_args, checkpoint_path, start_serve_app

QUERY = "how do cross-encoders rerank search results"
DOCS = [
    "A cross-encoder reads the query and the document together and outputs a relevance score.",
    "Bi-encoders embed queries and documents separately.",
    "The weather in Lisbon is mild in winter.",
    {"text": "Rerankers reorder the candidates that a first-stage retriever returns."},
    "",
    "BM25 is a bag-of-words ranking function. " * 40,
]
TEXTS = [d if isinstance(d, str) else d["text"] for d in DOCS]


@pytest.fixture(scope="module")
def url(checkpoint_root):
    args = app_args(checkpoint_root, ALL_MODELS, default_model=ALL_MODELS[3])
    yield from start_serve_app(args)


def rerank(url: str, body: dict | str, **kw) -> httpx.Response:
    if isinstance(body, str):
        return httpx.post(f"{url}/v1/rerank", content=body, timeout=60, **kw)
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=60, **kw)


def assert_error(response: httpx.Response, status: int, type_: str, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_ and error["message"]
    if param is not None:
        assert error["param"] == param


def serve_replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                b"ray::ServeReplica:rerank:"
            ):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def test_the_replicas_run_in_the_service_ray_environment(url):
    from serve_app.runtime.ray_env import SERVICE_ENV

    pids = serve_replica_pids()
    assert len(pids) >= len(ALL_MODELS) + 1  # the models and the ingress at least
    for pid in pids:
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        environ = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
        assert SERVICE_ENV.items() <= environ.items()
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0  # not Ray's default 15


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_matches_sentence_transformers_through_http(url, checkpoint_root, model):
    from sentence_transformers import CrossEncoder

    r = rerank(url, {"model": model, "query": QUERY, "documents": DOCS, "raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["id"]
    served = {res["index"]: res["relevance_score"] for res in body["results"]}
    cross_encoder = CrossEncoder(checkpoint_path(checkpoint_root, model), device="cpu")
    reference = cross_encoder.predict(
        [(QUERY, t) for t in TEXTS], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose([served[i] for i in range(len(TEXTS))], reference, atol=1e-4)
    assert [res["index"] for res in body["results"]] == np.argsort(
        -reference, kind="stable"
    ).tolist()
    assert [res["document"]["text"] for res in body["results"]] == [
        TEXTS[res["index"]] for res in body["results"]
    ]
    assert body["usage"]["documents"] == len(DOCS)
    assert body["usage"]["total_tokens"] > len(DOCS) * 3

    # Default scores are the sigmoid of the logits, in the same order.
    probs = rerank(url, {"model": model, "query": QUERY, "documents": DOCS}).json()
    assert [x["index"] for x in probs["results"]] == [x["index"] for x in body["results"]]
    sigmoid = torch.sigmoid(torch.tensor(reference, dtype=torch.float64)).numpy()
    for res in probs["results"]:
        assert res["relevance_score"] == pytest.approx(sigmoid[res["index"]], abs=1e-4)


def test_alias_top_n_and_return_documents(url):
    full = rerank(url, {"model": ALL_MODELS[4], "query": QUERY, "documents": DOCS}).json()
    cut = rerank(
        url,
        {
            "model": "cross-encoder/ms-marco-MiniLM-L-12-v2",
            "query": QUERY,
            "documents": DOCS,
            "top_n": 2,
            "return_documents": False,
        },
    ).json()
    assert cut["model"] == ALL_MODELS[4]
    assert [r["index"] for r in cut["results"]] == [r["index"] for r in full["results"][:2]]
    assert all("document" not in r for r in cut["results"])
    assert cut["usage"]["documents"] == len(DOCS)  # billed for every document scored


def test_model_omitted_uses_the_configured_default(url):
    r = rerank(url, {"query": QUERY, "documents": ["a", "b"]})
    assert r.status_code == 200 and r.json()["model"] == ALL_MODELS[3]


def test_bad_inputs_get_json_4xx_and_the_service_keeps_serving(url):
    assert_error(
        rerank(url, {"model": "nope", "query": "q", "documents": ["a"]}),
        404,
        "model_not_found",
        "model",
    )
    assert ALL_MODELS[0] in rerank(url, {"model": "x", "query": "q", "documents": ["a"]}).text
    assert_error(rerank(url, {"query": "q", "documents": []}), 422, "invalid_request", "documents")
    assert_error(rerank(url, {"query": "q"}), 422, "invalid_request", "documents")
    assert_error(rerank(url, {"documents": ["a"]}), 422, "invalid_request", "query")
    assert_error(
        rerank(url, {"query": "q", "documents": ["a", 1]}), 422, "invalid_request", "documents.1"
    )
    assert_error(
        rerank(url, {"query": "q", "documents": ["a"], "top_n": -3}),
        422,
        "invalid_request",
        "top_n",
    )
    assert_error(rerank(url, {"query": ["q"], "documents": ["a"]}), 422, "invalid_request", "query")
    assert_error(
        rerank(url, "{not json", headers={"content-type": "application/json"}), 400, "invalid_json"
    )
    assert_error(
        rerank(url, "[1, 2]", headers={"content-type": "application/json"}), 400, "invalid_json"
    )
    assert_error(rerank(url, "plain text"), 400, "invalid_json")
    assert_error(httpx.post(f"{url}/v1/rerank", timeout=10), 422, "invalid_request")
    assert_error(httpx.get(f"{url}/v1/rerank", timeout=10), 405, "method_not_allowed")
    assert_error(httpx.get(f"{url}/no/such/path", timeout=10), 404, "not_found")
    ok = rerank(url, {"model": ALL_MODELS[0], "query": "q", "documents": ["still serving"]})
    assert ok.status_code == 200


def test_models_endpoint_lists_metadata_and_labels_random_weights(url):
    r = httpx.get(f"{url}/v1/models", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert sorted(by_id) == sorted(ALL_MODELS)
    l6 = by_id["cross-encoder/ms-marco-MiniLM-L6-v2"]
    assert l6["object"] == "model" and l6["owned_by"] == "cross-encoder"
    assert l6["weights"] == "random" and l6["device"] == "cpu" and l6["dtype"] == "float32"
    # The default CPU backend: the fastest exact one installed, labelled.
    assert l6["backend"] == "onnx" and l6["quantization"] == "none"
    assert l6["engine"]["file"] == "model.onnx" and l6["engine"]["onnxruntime"]
    assert l6["replicas"] == 1 and l6["replicas_starting"] == 0
    assert l6["ndcg10_trec_dl19"] == 74.30 and l6["v100_docs_per_s"] == 1800
    assert "cross-encoder/ms-marco-MiniLM-L-6-v2" in l6["aliases"]
    assert l6["architecture"]["num_hidden_layers"] == 6


def test_health_and_readiness(url):
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_the_pages_and_their_traffic_endpoint_come_through_serves_proxy(url):
    for path in ("/", "/status", "/pages/api.js"):
        page = httpx.get(f"{url}{path}", timeout=10)
        assert (
            page.status_code == 200
            and "connect-src 'self'" in page.headers["content-security-policy"]
        ), path
    traffic = httpx.get(f"{url}/v1/traffic", timeout=10).json()
    assert isinstance(traffic["requests"], int) and set(traffic["models"]) == set(ALL_MODELS)


def test_openapi_describes_the_rerank_endpoint(url):
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/rerank", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])


def test_50_concurrent_requests_return_exactly_the_single_request_answers(url):
    requests = [
        {
            "model": ALL_MODELS[i % 5],
            "query": f"{QUERY} {i % 7}",
            "documents": TEXTS[: 2 + i % 5],
            "raw_scores": True,
        }
        for i in range(50)
    ]
    singles = [rerank(url, body).json() for body in requests]
    with ThreadPoolExecutor(max_workers=50) as pool:
        together = list(pool.map(lambda body: rerank(url, body), requests))
    for single, response in zip(singles, together):
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["model"] == single["model"]
        assert [r["index"] for r in got["results"]] == [r["index"] for r in single["results"]]
        np.testing.assert_allclose(
            [r["relevance_score"] for r in got["results"]],
            [r["relevance_score"] for r in single["results"]],
            atol=1e-5,
        )
        assert got["usage"] == single["usage"]

"""Long documents over HTTP, in process: which routes chunk, what a chunked result
carries, the per-request window limit as a 422, and windows in usage. Model scores are
the fake ones (longer pair, higher score); tests/model/test_chunking.py has the real
engine's scores."""

from __future__ import annotations

import pytest

from tests.api.test_app import AUTH, TINY, assert_error, build_parts, client

pytestmark = pytest.mark.anyio
LONG = " ".join(f"word{i % 97} filler" for i in range(1500))  # ~5,000 tokens: 11 windows


@pytest.fixture
def app(checkpoint_root, tmp_path):
    chunking = {"long_documents": "chunk", "max_chunks_per_request": 20}
    app, _, _ = build_parts(checkpoint_root, tmp_path / "usage.db", chunking=chunking)
    return app


async def test_a_long_document_is_chunked_by_default_and_carries_chunks_and_span(app):
    body = {"model": TINY, "query": "q", "documents": ["short", LONG]}
    async with client(app) as c:
        v1 = (await c.post("/v1/rerank", json=body, headers=AUTH)).json()
        v2 = (await c.post("/v2/rerank", json=body, headers=AUTH)).json()
        usage = (await c.get("/v1/usage", headers=AUTH)).json()
    for answer in (v1, v2):
        by_index = {r["index"]: r for r in answer["results"]}
        assert "chunks" not in by_index[0] and "span" not in by_index[0]
        chunks, span = by_index[1]["chunks"], by_index[1]["span"]
        assert chunks > 5 and 0 <= span["start"] < span["end"] <= len(LONG)
        assert LONG[span["start"] : span["end"]].split()[0].startswith("word")  # whole words
        assert answer["usage"]["windows"] == 1 + chunks
        assert answer["usage"]["documents"] == 2  # billed per document, not per window
    assert (usage["documents"], usage["windows"]) == (4, 2 * (1 + v1["results"][0]["chunks"]))


async def test_truncate_and_the_tei_route_score_the_first_window_only(app):
    body = {"model": TINY, "query": "q", "documents": ["short", LONG]}
    async with client(app) as c:
        cut = await c.post("/v1/rerank", json={**body, "long_documents": "truncate"}, headers=AUTH)
        tei = await c.post("/rerank", json={"query": "q", "texts": ["short", LONG]}, headers=AUTH)
        bad = await c.post("/v1/rerank", json={**body, "long_documents": "split"}, headers=AUTH)
    assert cut.status_code == tei.status_code == 200
    assert all("chunks" not in r and "span" not in r for r in cut.json()["results"])
    assert cut.json()["usage"]["windows"] == 2
    assert sorted(tei.json()[0]) == ["index", "score"]
    assert_error(bad, 422, "invalid_request", "long_documents")


async def test_more_windows_than_a_request_may_have_is_a_422_naming_the_limit(app):
    body = {"model": TINY, "query": "q", "documents": [LONG, LONG]}
    async with client(app) as c:
        over = await c.post("/v1/rerank", json=body, headers=AUTH)
        truncated = await c.post(
            "/v1/rerank", json={**body, "long_documents": "truncate"}, headers=AUTH
        )
        still_serving = await c.post("/v1/rerank", json={**body, "documents": [LONG]}, headers=AUTH)
    assert_error(over, 422, "invalid_request", "documents")
    assert "max_chunks_per_request" in over.json()["error"]["message"]
    assert truncated.status_code == still_serving.status_code == 200


async def test_max_tokens_per_doc_cuts_before_chunking(app):
    body = {"model": TINY, "query": "q", "documents": [LONG], "max_tokens_per_doc": 1200}
    async with client(app) as c:
        answer = (await c.post("/v2/rerank", json=body, headers=AUTH)).json()
    assert answer["results"][0]["chunks"] == 3  # 1,200 tokens in windows of ~505

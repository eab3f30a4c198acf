"""The wire shapes (ours, Cohere's, Jina's, TEI's) and their translation to and from the
internal types. No Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.api.schemas import (
    CohereV2RerankRequest,
    RerankRequest,
    TEIRerankRequest,
    rerank_response,
    search_units,
    tei_response,
)
from serve_app.types import RerankResult, Routing

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"


RESULT = RerankResult(
    model=L6,
    served_by=L6,
    ranked=[(2, 0.9), (0, 0.5)],
    scored=[(L6, 3)],
    total_tokens=30,
    routing=Routing("named"),
    windows=3,
    id="rerank-1",
)
TEXTS = ["a", "b", "c"]


def test_search_units_follow_cohere_one_per_hundred_documents():
    assert [search_units(n) for n in (1, 100, 101, 1000)] == [1, 1, 2, 10]


def test_cohere_v2_body_translates_and_returns_no_documents_by_default():
    body = CohereV2RerankRequest.model_validate(
        {
            "model": "rerank-v3.5",
            "query": "q",
            "documents": ["a", "b"],
            "top_n": 1,
            "max_tokens_per_doc": 4096,
            "priority": 0,
        }
    )
    translated = body.to_internal()
    assert (translated.model, translated.top_n, translated.max_tokens_per_doc) == (
        "rerank-v3.5",
        1,
        4096,
    )
    response = rerank_response(RESULT, TEXTS, body.return_documents).model_dump(exclude_none=True)
    assert response["results"] == [
        {"index": 2, "relevance_score": 0.9},
        {"index": 0, "relevance_score": 0.5},
    ]
    assert response["meta"] == {"billed_units": {"search_units": 1}}
    assert response["usage"] == {"documents": 3, "total_tokens": 30, "windows": 3}


def test_jina_shape_returns_document_text():
    response = rerank_response(RESULT, TEXTS, return_documents=True).model_dump(exclude_none=True)
    assert [r["document"]["text"] for r in response["results"]] == ["c", "a"]


def test_tei_body_and_bare_array_answer():
    body = TEIRerankRequest.model_validate(
        {
            "query": "q",
            "texts": ["a", "", "c"],
            "raw_scores": True,
            "return_text": True,
            "truncate": False,
            "truncation_direction": "Right",
        }
    )
    translated = body.to_internal()
    assert translated.texts == ["a", "", "c"] and translated.raw_scores
    assert [r.model_dump(exclude_none=True) for r in tei_response(RESULT, TEXTS, True)] == [
        {"index": 2, "score": 0.9, "text": "c"},
        {"index": 0, "score": 0.5, "text": "a"},
    ]
    assert tei_response(RESULT, TEXTS, False)[0].text is None
    for bad in (
        {"query": "q", "texts": []},
        {"query": "q", "texts": ["a", 1]},
        {"query": "q", "texts": ["a"], "truncation_direction": "Left"},
    ):
        with pytest.raises(ValidationError):
            TEIRerankRequest.model_validate(bad)


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"max_latency_ms": 0}, "max_latency_ms"),
        ({"max_latency_ms": -5}, "max_latency_ms"),
        ({"max_latency_ms": "50"}, "max_latency_ms"),
        ({"min_ndcg": 0}, "min_ndcg"),
        ({"min_ndcg": 101}, "min_ndcg"),
        ({"min_mrr": True}, "min_mrr"),
        ({"cascade": {"keep": 0}}, "cascade"),
        ({"cascade": {"keep": 2.5}}, "cascade"),
        ({"cascade": {"frist": TINY}}, "cascade"),
        ({"cascade": "yes"}, "cascade"),
    ],
)
def test_bad_budget_and_cascade_fields_are_rejected(extra, field):
    with pytest.raises(ValidationError) as e:
        RerankRequest.model_validate({"query": "q", "documents": ["a"], **extra})
    assert e.value.errors()[0]["loc"][0] == field


# -- validation -----------------------------------------------------------------------


def test_documents_accept_strings_objects_and_empty_strings():
    req = RerankRequest.model_validate(
        {"query": "q", "documents": ["a", {"text": "b", "title": "ignored"}, ""]}
    )
    assert req.document_texts() == ["a", "b", ""]
    assert req.return_documents is True and req.raw_scores is False and req.model is None


@pytest.mark.parametrize(
    "body,field",
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": "a"}, "documents"),
        ({"query": "q", "documents": ["a", 3]}, "documents"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents"),
        ({"query": 7, "documents": ["a"]}, "query"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "5"}, "top_n"),
        ({"query": "q", "documents": ["a"], "raw_scores": "yes"}, "raw_scores"),
        ({"query": "q", "documents": ["a"], "model": 5}, "model"),
    ],
)
def test_invalid_requests_name_the_offending_field(body, field):
    with pytest.raises(ValidationError) as e:
        RerankRequest.model_validate(body)
    assert e.value.errors()[0]["loc"][0] == field

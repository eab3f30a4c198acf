"""Request and response shapes of the rerank APIs clients already speak, translated to and
from one internal call. Plain Python and pydantic, no Ray.

- Cohere v2 `POST /v2/rerank` (and v1 fields on `/v1/rerank`): `max_tokens_per_doc`,
  `meta.billed_units.search_units`; v2 returns no documents unless asked.
- Jina `POST /v1/rerank`: `return_documents`, `results[].document.text`, `usage.total_tokens`.
- Hugging Face text-embeddings-inference `POST /rerank`: `texts`, `raw_scores`,
  `return_text`, `truncate`; answers a bare array of `{index, score, text?}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from serve_app.schemas import (
    BilledUnits,
    Document,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ResponseMeta,
    RoutingInfo,
    Usage,
)

DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere: one search unit is a query with up to 100 documents


@dataclass(frozen=True)
class RerankCall:
    """One rerank request, whatever shape it arrived in."""

    model: str | None
    query: str
    texts: list[str]
    top_n: int | None
    raw_scores: bool
    max_tokens_per_doc: int | None = None


@dataclass(frozen=True)
class Reranked:
    id: str
    model: str
    ranked: list[tuple[int, float]]  # (index, score), best first
    texts: list[str]  # as the client sent them
    documents: int  # billed: documents scored over every stage (a cascade scores twice)
    total_tokens: int
    routing: RoutingInfo | None = None


def search_units(documents: int) -> int:
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT))


# -- Cohere (v1 and v2) and Jina ---------------------------------------------------------


class CohereV2RerankRequest(RerankRequest):
    return_documents: StrictBool = Field(
        False, description="Cohere v2 returns no documents; true adds `document.text`."
    )


def call_from_rerank_request(body: RerankRequest) -> RerankCall:
    return RerankCall(
        model=body.model,
        query=body.query,
        texts=body.document_texts(),
        top_n=body.top_n,
        raw_scores=body.raw_scores,
        max_tokens_per_doc=body.max_tokens_per_doc,
    )


def rerank_response(result: Reranked, return_documents: bool) -> RerankResponse:
    return RerankResponse(
        id=result.id,
        model=result.model,
        results=[
            RerankResult(
                index=i,
                relevance_score=score,
                document=Document(text=result.texts[i]) if return_documents else None,
            )
            for i, score in result.ranked
        ],
        usage=Usage(documents=result.documents, total_tokens=result.total_tokens),
        meta=ResponseMeta(billed_units=BilledUnits(search_units=search_units(result.documents))),
        routing=result.routing,
    )


# -- Hugging Face text-embeddings-inference ----------------------------------------------


class TEIRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr] = Field(min_length=1, description="Empty strings are scored.")
    raw_scores: StrictBool = Field(False, description="The logit instead of its sigmoid.")
    return_text: StrictBool = Field(False, description="Add each text to its result.")
    truncate: StrictBool | None = Field(
        None, description="Accepted for compatibility: long pairs are always truncated to "
        "the model's 512 tokens (the end of the text is cut)."
    )
    truncation_direction: Literal["Right", "right"] = Field(
        "Right", description="Only `Right` (cut the end of the text) is supported."
    )
    model: StrictStr | None = Field(None, description="Not in TEI; the default model if omitted.")


class TEIRerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


def call_from_tei(body: TEIRerankRequest) -> RerankCall:
    return RerankCall(
        model=body.model, query=body.query, texts=list(body.texts), top_n=None,
        raw_scores=body.raw_scores,
    )


def as_rerank_request(body: RerankRequest | TEIRerankRequest) -> RerankRequest:
    """The native request that routing sees; TEI's shape has no budget or cascade fields."""
    if isinstance(body, RerankRequest):
        return body
    return RerankRequest(
        model=body.model, query=body.query, documents=list(body.texts), raw_scores=body.raw_scores
    )


def tei_response(result: Reranked, return_text: bool) -> list[TEIRerankResult]:
    return [
        TEIRerankResult(index=i, score=score, text=result.texts[i] if return_text else None)
        for i, score in result.ranked
    ]

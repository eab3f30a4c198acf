"""Request and response types of the HTTP API, in one place.

Validation happens here, at the edge: strict JSON types, so `"top_n": "5"` or
`"query": 42` is a precise 422 rather than a silent coercion.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_core import PydanticCustomError


class Document(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: StrictStr


def _as_document(value: Any) -> Any:
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value
    raise PydanticCustomError(
        "document_type", "a document must be a string or an object with a string `text`"
    )


DocumentInput = Annotated[
    Document, BeforeValidator(_as_document, json_schema_input_type=str | Document)
]


PositiveNumber = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
Floor = Annotated[StrictFloat, Field(gt=0, le=100, allow_inf_nan=False)]


class CascadeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first: StrictStr | None = Field(None, description="Fast model scoring every document.")
    second: StrictStr | None = Field(None, description="Accurate model re-scoring the kept ones.")
    keep: StrictInt | None = Field(None, ge=1, description="Documents passed to `second`.")


class RerankRequest(BaseModel):
    # Unknown fields are ignored, as the hosted rerank APIs do, so their clients work as-is.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(
        None, description="Model name or alias; the server's default model when omitted."
    )
    query: StrictStr
    documents: list[DocumentInput] = Field(
        min_length=1, description="Strings or `{\"text\": ...}` objects; empty strings are scored."
    )
    top_n: StrictInt | None = Field(None, ge=1, description="Return only the best `top_n`.")
    return_documents: StrictBool = True
    raw_scores: StrictBool = Field(
        False, description="Return the model's logit instead of its sigmoid."
    )
    # Budget routing (`"model": "auto"`, or no model with any of these set).
    max_latency_ms: PositiveNumber | None = Field(
        None, description="Latency budget: the most accurate model predicted to fit is used."
    )
    min_ndcg: Floor | None = Field(
        None, description="Accuracy floor: NDCG@10 on TREC DL19 (74.3 or 0.743 alike)."
    )
    min_mrr: Floor | None = Field(
        None, description="Accuracy floor: MRR@10 on MS MARCO dev (39.0 or 0.390 alike)."
    )
    cascade: CascadeRequest | None = Field(
        None, description="Two-stage cascade (with `\"model\": \"cascade\"` or no model)."
    )
    max_tokens_per_doc: StrictInt | None = Field(
        None, ge=1, description="Cohere: cut each document to this many tokens before scoring "
        "(pairs are cut at the model's 512 tokens regardless)."
    )

    def document_texts(self) -> list[str]:
        return [d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class Usage(BaseModel):
    documents: int = Field(description="Documents scored: the billed unit.")
    total_tokens: int


class RoutingInfo(BaseModel):
    policy: str = Field(description="named, default, budget, split or cascade.")
    predicted_ms: float | None = Field(None, description="Predicted queue wait + service time.")
    budget_met: bool | None = Field(None, description="Prediction within `max_latency_ms`.")
    stages: list[str] | None = Field(None, description="Cascade only: first, second model.")
class BilledUnits(BaseModel):
    search_units: int = Field(description="Cohere's unit: one per 100 documents, rounded up.")


class ResponseMeta(BaseModel):
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    routing: RoutingInfo | None = None
    meta: ResponseMeta | None = None


class ModelEntry(BaseModel):
    id: str
    object: str = "model"
    owned_by: str
    deployment: str
    weights: str | None = Field(None, description="`pretrained`, or `random` for demo checkpoints.")
    device: str | None = None
    dtype: str | None = None
    replicas: int | None = Field(None, description="Replicas running now.")
    replicas_starting: int | None = Field(
        None, description="Replicas the autoscaler has added that are not running yet."
    )
    aliases: list[str]
    architecture: dict
    ndcg10_trec_dl19: float
    mrr10_msmarco_dev: float
    v100_docs_per_s: float


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelEntry]


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class UsageTotals(BaseModel):
    requests: int
    documents: int = Field(description="Documents scored: the billed unit.")
    tokens: int
    cost_usd: float


class UsageResponse(UsageTotals):
    key_id: str
    models: dict[str, UsageTotals] = Field(description="The same totals per model.")

"""The wire types of every API shape we speak, and their translation to and from the
internal `serve_app.types`, in one place. Nothing here leaks inward.

- Ours and Jina's `POST /v1/rerank`: `return_documents`, `results[].document.text`,
  `usage.total_tokens`; Cohere's v1 fields too.
- Cohere v2 `POST /v2/rerank`: `max_tokens_per_doc`, `meta.billed_units.search_units`;
  returns no documents unless asked.
- Hugging Face text-embeddings-inference `POST /rerank`: `texts`, `raw_scores`,
  `return_text`, `truncate`; answers a bare array of `{index, score, text?}`.

Validation happens here: strict JSON types, so `"top_n": "5"` or `"query": 42` is a
precise 422 rather than a silent coercion. A document list is bounded (`max_length`, checked
before any item) and stops at its first bad item (`fail_fast`): a body of millions of
non-documents costs one error, not millions.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Annotated, Any, Literal

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

from serve_app import types
from serve_app.config import DOCUMENTS_CEILING
from serve_app.errors import InvalidRequest
from serve_app.service.usage import GROUP_BY_VALUES, UsageQuery

DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere: one search unit is a query with up to 100 documents


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
        min_length=1,
        max_length=DOCUMENTS_CEILING,
        fail_fast=True,
        description='Strings or `{"text": ...}` objects; empty strings are scored.',
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
        None, description='Two-stage cascade (with `"model": "cascade"` or no model).'
    )
    max_tokens_per_doc: StrictInt | None = Field(
        None,
        ge=1,
        description="Cohere: cut each document to this many tokens first; "
        "`long_documents` applies to what is left.",
    )
    long_documents: Literal["chunk", "truncate"] | None = Field(
        None,
        description="A document longer than the model's window (with the query): `chunk` "
        "scores every overlapping window and keeps the best, and its result carries "
        "`chunks` and `span`; `truncate` scores its first window only. Default: the "
        "server's `chunking.long_documents`.",
    )

    def document_texts(self) -> list[str]:
        return [d.text for d in self.documents]

    def to_internal(self) -> types.RerankRequest:
        cascade = self.cascade
        return types.RerankRequest(
            query=self.query,
            texts=self.document_texts(),
            model=self.model,
            top_n=self.top_n,
            raw_scores=self.raw_scores,
            max_tokens_per_doc=self.max_tokens_per_doc,
            budget=types.Budget.of(self.max_latency_ms, self.min_ndcg, self.min_mrr),
            cascade=None
            if cascade is None
            else types.CascadeSpec(cascade.first, cascade.second, cascade.keep),
            long_documents=self.long_documents,
        )


class CohereV2RerankRequest(RerankRequest):
    return_documents: StrictBool = Field(
        False, description="Cohere v2 returns no documents; true adds `document.text`."
    )


class Span(BaseModel):
    start: int = Field(description="Character offset in the document's text.")
    end: int = Field(description="Character offset just past the passage.")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None
    chunks: int | None = Field(
        None, description="Chunked documents only: windows the document was scored in."
    )
    span: Span | None = Field(
        None,
        description="Chunked documents only: the best window's text, as "
        "`text[span.start:span.end]` (Python string offsets).",
    )


class Usage(BaseModel):
    documents: int = Field(description="Documents scored: the billed unit.")
    total_tokens: int
    windows: int = Field(description="Pairs scored: one per document, one per window chunked.")


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


def search_units(documents: int) -> int:
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT))


def rerank_response(
    result: types.RerankResult, texts: list[str], return_documents: bool
) -> RerankResponse:
    """`texts`: the documents as the client sent them."""
    routing = result.routing
    passages = result.passages
    return RerankResponse(
        id=result.id,
        model=result.model,
        results=[
            RerankResult(
                index=i,
                relevance_score=score,
                document=Document(text=texts[i]) if return_documents else None,
                chunks=passages[i].chunks if i in passages else None,
                span=Span(start=passages[i].start, end=passages[i].end) if i in passages else None,
            )
            for i, score in result.ranked
        ],
        usage=Usage(
            documents=result.documents, total_tokens=result.total_tokens, windows=result.windows
        ),
        meta=ResponseMeta(billed_units=BilledUnits(search_units=search_units(result.documents))),
        routing=RoutingInfo(
            policy=routing.policy,
            predicted_ms=routing.predicted_ms,
            budget_met=routing.budget_met,
            stages=routing.stages,
        ),
    )


# -- Hugging Face text-embeddings-inference ----------------------------------------------


class TEIRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr] = Field(
        min_length=1,
        max_length=DOCUMENTS_CEILING,
        fail_fast=True,
        description="Empty strings are scored.",
    )
    raw_scores: StrictBool = Field(False, description="The logit instead of its sigmoid.")
    return_text: StrictBool = Field(False, description="Add each text to its result.")
    truncate: StrictBool | None = Field(
        None,
        description="Accepted for compatibility: on this route a long pair is always "
        "truncated to the model's window (the end of the text is cut), never chunked, "
        "whatever the server's `chunking` default.",
    )
    truncation_direction: Literal["Right", "right"] = Field(
        "Right", description="Only `Right` (cut the end of the text) is supported."
    )
    model: StrictStr | None = Field(None, description="Not in TEI; the default model if omitted.")

    def to_internal(self) -> types.RerankRequest:
        return types.RerankRequest(
            query=self.query,
            texts=list(self.texts),
            model=self.model,
            raw_scores=self.raw_scores,
            long_documents="truncate",
        )


class TEIRerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


def tei_response(
    result: types.RerankResult, texts: list[str], return_text: bool
) -> list[TEIRerankResult]:
    return [
        TEIRerankResult(index=i, score=score, text=texts[i] if return_text else None)
        for i, score in result.ranked
    ]


# -- the rest of the API ------------------------------------------------------------------


class ModelEntry(BaseModel):
    id: str
    object: str = "model"
    owned_by: str
    deployment: str
    weights: str | None = Field(None, description="`pretrained`, or `random` for demo checkpoints.")
    device: str | None = None
    dtype: str | None = None
    backend: str | None = Field(None, description="`torch`, `onnx` or `openvino`.")
    quantization: str | None = Field(
        None, description="`none`, or `int8` (scores differ slightly from fp32)."
    )
    engine: dict = Field(
        default_factory=dict,
        description="What a replica reports of its engine: backend, file, runtime versions, "
        "threads; on CUDA the attention kernels allowed and the cuDNN version.",
    )
    replicas: int | None = Field(None, description="Replicas running now.")
    replicas_starting: int | None = Field(
        None, description="Replicas the autoscaler has added that are not running yet."
    )
    aliases: list[str]
    architecture: dict = Field(
        description="The checkpoint's published config (class, sizes, labels); empty for a "
        "model outside the catalog."
    )
    in_catalog: bool = Field(
        True, description="False: served from `source` alone under a name of its config's."
    )
    ndcg10_trec_dl19: float | None = Field(
        None, description="Published NDCG@10 (TREC DL 19); null: none known (no accuracy floor)."
    )
    mrr10_msmarco_dev: float | None = Field(
        None, description="Published MRR@10 (MS MARCO dev); null: none known."
    )
    v100_docs_per_s: float | None = Field(
        None, description="Published V100 speed; null: budget routing uses measured speed only."
    )

    @classmethod
    def of(cls, status: types.ModelStatus, owned_by: str) -> ModelEntry:
        return cls(
            id=status.name,
            owned_by=owned_by,
            deployment=status.deployment,
            weights=status.weights,
            device=status.device,
            dtype=status.dtype,
            backend=status.backend,
            quantization=status.quantization,
            engine=status.engine,
            replicas=status.replicas,
            replicas_starting=status.replicas_starting,
            **status.metadata,
        )


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
    windows: int = Field(
        description="Pairs scored: one per document, one per window of a chunked document."
    )
    cost_usd: float


class UsageGroup(UsageTotals):
    group: str = Field(description="A day (YYYY-MM-DD, UTC), a month (YYYY-MM) or a model.")


class UsageResponse(UsageTotals):
    model_config = ConfigDict(populate_by_name=True)
    key_id: str
    models: dict[str, UsageTotals] = Field(description="The same totals per model.")
    start: date | None = Field(None, alias="from", description="First day counted (UTC).")
    end: date | None = Field(None, alias="to", description="Last day counted (UTC).")
    group_by: Literal["day", "month", "model"] | None = None
    groups: list[UsageGroup] | None = Field(
        None, description="With `group_by`: the same totals per day, month or model."
    )


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def usage_query(start: str | None, end: str | None, group_by: str | None) -> UsageQuery:
    """`/v1/usage`'s query parameters; a bad one is a 422 naming it."""

    def day(value: str | None, param: str) -> date | None:
        if value is None:
            return None
        try:
            if not _ISO_DATE.match(value):
                raise ValueError
            return date.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(f"not an ISO date (YYYY-MM-DD): {value!r}", param) from None

    first, last = day(start, "from"), day(end, "to")
    if first is not None and last is not None and first > last:
        raise InvalidRequest(f"{first} is after `to` ({last})", "from")
    if group_by is not None and group_by not in GROUP_BY_VALUES:
        raise InvalidRequest(
            f"must be one of {', '.join(GROUP_BY_VALUES)}, not {group_by!r}", "group_by"
        )
    return UsageQuery(first, last, group_by)  # type: ignore[arg-type]

"""The internal request and result types: every route's body becomes one `RerankRequest`,
and every answer is made from one `RerankResult`. Plain dataclasses; wire shapes live in
`serve_app/api/schemas.py` and never come further in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal


def as_percent(value: float | None) -> float | None:
    """Floors may be given as a fraction (0.72) or in percent (72), the catalog's scale."""
    if value is None:
        return None
    return value * 100.0 if value <= 1.0 else value


@dataclass(frozen=True)
class Budget:
    """A latency budget and quality floors on the catalog's scale (percent)."""

    max_latency_ms: float | None = None
    min_ndcg: float | None = None
    min_mrr: float | None = None

    @classmethod
    def of(
        cls, max_latency_ms: float | None, min_ndcg: float | None, min_mrr: float | None
    ) -> Budget:
        """From floors given as fractions or percent."""
        return cls(max_latency_ms, as_percent(min_ndcg), as_percent(min_mrr))

    @property
    def is_empty(self) -> bool:
        return self.max_latency_ms is None and self.min_ndcg is None and self.min_mrr is None


@dataclass(frozen=True)
class CascadeSpec:
    """A request's cascade overrides; None fields take the configured defaults."""

    first: str | None = None
    second: str | None = None
    keep: int | None = None


@dataclass(frozen=True)
class RerankRequest:
    """One rerank, whatever shape it arrived in."""

    query: str
    texts: list[str]
    model: str | None = None
    top_n: int | None = None
    raw_scores: bool = False
    max_tokens_per_doc: int | None = None
    budget: Budget = Budget()
    cascade: CascadeSpec | None = None
    long_documents: Literal["chunk", "truncate"] | None = None  # None: the configured default


@dataclass(frozen=True)
class Routing:
    """How the model was chosen. `budget_met` is present only when a latency budget
    applied: whether the prediction was within it."""

    policy: str  # named, default, budget, split or cascade
    predicted_ms: float | None = None
    budget_met: bool | None = None
    stages: list[str] | None = None  # cascade only: first, second


@dataclass(frozen=True)
class Passage:
    """A chunked document's best window: how many windows the document was cut into, and
    that window's character span in the document's text."""

    chunks: int
    start: int
    end: int


def new_result_id() -> str:
    return f"rerank-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class RerankResult:
    model: str  # the response's `model`: a catalog name, or "cascade"
    served_by: str  # the models that scored, comma-separated (`x-rerank-model`)
    ranked: list[tuple[int, float]]  # (index, score), best first, cut to top_n
    scored: list[tuple[str, int]]  # (model, documents) per stage: what is billed, at whose price
    total_tokens: int
    routing: Routing
    windows: int = 0  # pairs scored over every stage: a chunked document counts its windows
    passages: dict[int, Passage] = field(default_factory=dict)  # chunked documents only
    id: str = field(default_factory=new_result_id)

    @property
    def documents(self) -> int:
        """Usage: documents scored over every stage (a cascade scores some twice)."""
        return sum(n for _, n in self.scored)


@dataclass(frozen=True)
class ModelStatus:
    """One served model as `/v1/models` shows it."""

    name: str
    deployment: str
    weights: str | None  # "pretrained" or "random"; None when the model did not answer
    device: str | None
    dtype: str | None
    backend: str | None  # "torch", "onnx" or "openvino"
    quantization: str | None  # "none" or "int8"
    engine: dict  # all the replica reports of its engine (files, versions, attention kernels)
    replicas: int | None  # running; None when Serve's state is unknown
    replicas_starting: int | None
    metadata: dict  # catalog facts (aliases, architecture, published figures)

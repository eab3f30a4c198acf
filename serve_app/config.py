"""Typed application config: what a Serve config file's `args` may say, and how it turns
into Ray Serve deployment options (plain dicts). Adding a model or changing a GPU fraction
happens here, in data, never in code. Data only: nothing here writes files or imports
Ray; the random demo checkpoints are written by `serve_app/model/checkpoints.py`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.catalog import Catalog, ModelCard, load_catalog
from serve_app.types import Budget

DEFAULT_RANDOM_CHECKPOINT_ROOT = "~/.cache/rerank-serve/random-init"
DEFAULT_USAGE_DB = "~/.cache/rerank-serve/usage.db"

BackendChoice = Literal["auto", "torch", "onnx", "openvino"]
Quantization = Literal["none", "int8"]


# A model outside the catalog: `name` or `organisation/name`, letters, digits, `.`, `_`, `-`.
# The part after the slash is its Serve deployment name, so it must be one.
FREE_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def model_name(name: str) -> str:
    """A catalog model's canonical name, or a model outside the catalog's name as written
    (stripped). Which of the latter are served is checked against `models` in `AppConfig`."""
    card = load_catalog().find(name)
    if card is not None:
        return card.name
    name = name.strip()
    if not FREE_NAME.match(name):
        raise ValueError(
            f"unknown model {name!r}: not in the catalog ({sorted(load_catalog().cards)}), "
            "and not a valid name for a model outside it (`[organisation/]name` of letters, "
            "digits, '.', '_', '-')"
        )
    return name


def _bare_spellings(card: ModelCard) -> set[str]:
    return {s.split("/", 1)[-1].lower() for s in (card.name, *card.aliases)}


class _Strict(BaseModel):
    # Errors name the field and the rule, not the value: a raw API key pasted where its hash
    # belongs must not reach a log (the outermost model's setting decides, so every one).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class AutoscalingSettings(_Strict):
    """Maps onto Serve's `autoscaling_config`."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    look_back_period_s: float | None = Field(
        None,
        gt=0,
        description="Window the load is averaged over; None: Serve's (30 s). "
        "Shorter reacts to a burst sooner and to noise more.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class BatchingSettings(_Strict):
    """Sent to replicas as Serve `user_config`, so it can change at runtime without a restart.

    `max_batch_size` and `batch_wait_timeout_s` drive `@serve.batch` (requests per batch);
    `max_batch_tokens` and `max_batch_docs` bound one forward pass (padded tokens, pairs);
    `batch_overhead_tokens` is a pass's fixed cost, which decides where the packer cuts.
    """

    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_batch_tokens: int = Field(32768, ge=512)
    max_batch_docs: int = Field(512, ge=1)
    # 64 fits a CPU (MiniLM-L6 measured 30 on one thread, 58 on two); a GPU wants thousands
    # (kernel launches dwarf a short batch).
    batch_overhead_tokens: int = Field(64, ge=0)


class BackpressureSettings(_Strict):
    """The response when a deployment's queue (`max_queued_requests`) is full: maps onto
    Serve's `backpressure_config`, and the ingress answers a model's rejection the same way."""

    status_code: Literal[503, 429] = 503
    retry_after_s: float = Field(1.0, ge=0)


class _Placement(_Strict):
    """Where replicas may run and how much work waits for them; shared by models and ingress.

    `resources` are custom Ray resources per replica (e.g. `{"node:__internal_head__": 0.01}`
    pins a replica to the head node). `max_queued_requests` bounds the requests waiting at
    each caller for a free replica (-1: unbounded); beyond it requests are shed at once.
    """

    resources: dict[str, float] = Field(default_factory=dict)
    max_queued_requests: int = Field(-1, ge=-1)
    backpressure: BackpressureSettings = BackpressureSettings()

    @field_validator("max_queued_requests")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or at least 1")
        return v

    def _placement_options(self, actor_options: dict[str, Any]) -> dict[str, Any]:
        if self.resources:
            actor_options = {**actor_options, "resources": dict(self.resources)}
        return {
            "ray_actor_options": actor_options,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": self.backpressure.model_dump(),
        }


class CardFigures(_Strict):
    """Published figures of a model outside the catalog, from its card, if it has them:
    with them, budget routing treats it like a catalog model."""

    ndcg10_trec_dl19: float | None = Field(None, gt=0, le=100)
    mrr10_msmarco_dev: float | None = Field(None, gt=0, le=100)
    v100_docs_per_s: float | None = Field(None, gt=0)


class ModelDeploymentConfig(_Placement):
    name: str = Field(
        description="Catalog name or alias (normalised to the canonical name); or a free "
        "name (`[organisation/]name`) for a model outside the catalog, which needs `source`."
    )
    source: str | None = Field(
        None,
        description="Hub id or local directory; defaults to the hub id (the name). Required "
        "for a model outside the catalog.",
    )
    figures: CardFigures | None = Field(
        None,
        description="A model outside the catalog: its card's NDCG@10 / MRR@10 / V100 docs/s, "
        "if any. Without them it is routed by name, and by budget from its measured speed "
        "only; it never meets an accuracy floor.",
    )
    score_label: str | int | None = Field(
        None,
        description="For a checkpoint with more than one label: the label whose logit is "
        "the score, by name (its config's `id2label`) or index. Catalog models with two "
        "labels default to the card's ('relevant'). A one-label checkpoint needs none.",
    )
    random_init: bool = Field(
        False,
        description="Demo only: if `source` is missing, write a random-initialised checkpoint "
        "of the real architecture there first. Such weights are labelled random everywhere.",
    )
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    cpu_threads: int | None = Field(None, ge=1, description="torch threads on CPU replicas.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    backend: BackendChoice = Field(
        "auto",
        description="What runs the forward pass. `auto`: torch fp16 on CUDA; on CPU the "
        "fastest exact backend installed (ONNX Runtime, then OpenVINO, then torch).",
    )
    quantization: Quantization = Field(
        "none",
        description="`int8` (CPU, onnx or openvino only) changes scores slightly; never the "
        "default. docs/PERFORMANCE.md has its measured effect on rankings.",
    )
    calibration_pairs: str | None = Field(
        None,
        description="Static int8 (OpenVINO): a file of `query<TAB>document` lines to "
        "calibrate on; default pairs are drawn from the tokenizer's vocabulary.",
    )
    allow_cpu_fallback: bool = Field(
        False,
        description="With num_gpus > 0 and no CUDA, run on CPU (logged) instead of failing "
        "at start. For demos and tests on logical GPUs; off in production configs.",
    )
    max_query_tokens: int = Field(64, ge=1, le=500)
    max_ongoing_requests: int = Field(128, ge=1)
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="Requests waiting for a replica beyond which callers get "
        "503 overloaded (with Retry-After); -1 is unbounded. The ingress refuses a request "
        "it would exceed this with before tokenizing it.",
    )
    max_queue_wait_s: float | None = Field(
        None,
        gt=0,
        description="The ingress also refuses (503 overloaded) while the work already queued "
        "for this model would take longer than this to drain at its measured rate. Bounds "
        "admitted latency in seconds rather than requests; None: no such bound.",
    )
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    batching: BatchingSettings = BatchingSettings()

    @field_validator("name")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return model_name(v)

    @model_validator(mode="after")
    def _outside_the_catalog(self) -> ModelDeploymentConfig:
        if self.in_catalog:
            if self.figures is not None:
                raise ValueError(
                    f"{self.name} is in the catalog, which has its figures: drop `figures`"
                )
            return self
        if self.source is None:
            raise ValueError(
                f"model {self.name!r} is not in the catalog ({sorted(load_catalog().cards)}); "
                "a model outside it is served from `source` (a local directory or hub id)"
            )
        if self.random_init:
            raise ValueError(
                f"random_init writes catalog architectures only; {self.name} is not one"
            )
        bare = self.short_name.lower()
        clash = [c.name for c in load_catalog() if bare in _bare_spellings(c)]
        if clash:
            raise ValueError(
                f"model {self.name!r} would share its short name with the catalog's {clash[0]}: "
                "give it another name"
            )
        return self

    @property
    def in_catalog(self) -> bool:
        return self.name in load_catalog().cards

    @property
    def short_name(self) -> str:
        """The Serve deployment name: the part of the name after the organisation."""
        return self.name.split("/", 1)[-1]

    def card(self) -> ModelCard:
        """The catalog's card, or one for a model outside it (figures from config)."""
        if self.in_catalog:
            return load_catalog().cards[self.name]
        figures = self.figures or CardFigures()
        return ModelCard(name=self.name, in_catalog=False, **figures.model_dump())

    def resolved_source(self) -> str:
        if self.source is not None:
            return os.path.expanduser(self.source)
        if self.random_init:
            root = os.environ.get("RERANK_RANDOM_CHECKPOINTS", DEFAULT_RANDOM_CHECKPOINT_ROOT)
            return str(Path(os.path.expanduser(root)) / self.short_name)
        return self.name

    def deployment_options(self) -> dict[str, Any]:
        return {
            "name": self.short_name,
            **self._placement_options({"num_gpus": self.num_gpus, "num_cpus": self.num_cpus}),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": self.autoscaling.model_dump(exclude_none=True),
            "user_config": self.batching.model_dump(),
        }


class ModelCallSettings(_Strict):
    """How the ingress calls a model deployment (see `serve_app/runtime/model_client.py`)."""

    timeout_s: float = Field(
        120.0, gt=0, description="A call still running then: 504. Generous: a bound, not an SLO."
    )
    failover_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Limit for a retry after a replica failure, and for every call while the "
        "model has no replica; exceeded: 503 with Retry-After instead of hanging.",
    )
    replica_failure_retries: int = Field(1, ge=0, le=3)
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503.")


class IngressConfig(_Placement):
    num_cpus: float = Field(0.5, ge=0)
    tokenizer_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads one ingress replica tokenizes on; a request's "
        "documents are split over them in slices of at most 32.",
    )
    max_ongoing_requests: int = Field(256, ge=1)
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="API requests one ingress replica admits at once; beyond it `overloaded` "
        "(the backpressure status, Retry-After) in the JSON error shape. Must be below "
        "max_ongoing_requests, which leaves room for health probes; default: 15/16 of it.",
    )
    max_in_flight_per_key: int | None = Field(
        None,
        ge=1,
        description="API requests one key may have in flight on one ingress replica; beyond "
        "it 429 `rate_limited`, so one key (a slow sender, a runaway client) cannot take every "
        "slot. Default: half of the admission limit. Not applied when auth is off.",
    )
    autoscaling: AutoscalingSettings = AutoscalingSettings(
        min_replicas=1, max_replicas=1, target_ongoing_requests=64
    )
    model_calls: ModelCallSettings = ModelCallSettings()

    def deployment_options(self) -> dict[str, Any]:
        return {
            **self._placement_options({"num_cpus": self.num_cpus}),
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": self.autoscaling.model_dump(exclude_none=True),
        }

    @model_validator(mode="after")
    def _sheds_before_serve_does(self) -> IngressConfig:
        if self.max_in_flight is not None and self.max_in_flight >= self.max_ongoing_requests:
            raise ValueError("ingress.max_in_flight must be below ingress.max_ongoing_requests")
        return self

    @property
    def admission_limit(self) -> int:
        return self.max_in_flight or max(1, self.max_ongoing_requests * 15 // 16)

    @property
    def per_key_limit(self) -> int:
        return self.max_in_flight_per_key or max(1, self.admission_limit // 2)


TINYBERT_L2 = "cross-encoder/ms-marco-TinyBERT-L2-v2"
MINILM_L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"


class BudgetSettings(_Strict):
    """A latency budget and accuracy floors (NDCG@10 / MRR@10, percent or fraction)."""

    max_latency_ms: float | None = Field(None, gt=0)
    min_ndcg: float | None = Field(None, gt=0, le=100)
    min_mrr: float | None = Field(None, gt=0, le=100)

    def as_budget(self) -> Budget:
        return Budget.of(self.max_latency_ms, self.min_ndcg, self.min_mrr)


class CascadeSettings(_Strict):
    first: str = TINYBERT_L2
    second: str = MINILM_L12
    keep: int = Field(20, ge=1)

    @field_validator("first", "second")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return model_name(v)


class SplitSettings(_Strict):
    """Send `fraction` of the `auto` traffic the policy gives `from` to `to` instead."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    fraction: float = Field(ge=0, le=1)

    @field_validator("source", "target")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return model_name(v)


class ShadowSettings(_Strict):
    """Also score `fraction` of the requests served by `against` (any model if omitted)
    with `model`, off the response path, and record how well the rankings agree."""

    model: str
    against: str | None = None
    fraction: float = Field(ge=0, le=1)

    @field_validator("model", "against")
    @classmethod
    def _canonical(cls, v: str | None) -> str | None:
        return None if v is None else model_name(v)


class RoutingSettings(_Strict):
    default_budget: BudgetSettings = Field(
        BudgetSettings(), description="Used for `auto` requests that state no budget."
    )
    cascade: CascadeSettings = CascadeSettings()
    splits: list[SplitSettings] = Field(default_factory=list)
    shadow: ShadowSettings | None = None
    stats_interval_s: float = Field(
        0.5, gt=0, description="How often the ingress polls each model's stats."
    )


class QuotaSettings(_Strict):
    """Per-key admission limits; `None` means unlimited. Enforced by the usage ledger,
    so they hold across every ingress replica."""

    requests_per_second: float | None = Field(None, gt=0)
    documents_per_minute: int | None = Field(None, ge=1)


class ApiKeyConfig(_Strict):
    id: str = Field(min_length=1, description="Public key id: appears in usage and logs.")
    sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Hex SHA-256 of the key (`rerank-hash-key`); the key itself is never stored.",
    )
    quota: QuotaSettings | None = Field(None, description="Overrides `auth.default_quota`.")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class AuthConfig(_Strict):
    enabled: bool = Field(
        True, description="Off only for a local demo: every caller is then `anonymous`."
    )
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_env: str | None = Field(
        None,
        description="Name of an environment variable (on the ingress nodes) holding more keys: "
        "`id:sha256[,id:sha256...]`, or a JSON list of `keys` entries.",
    )
    default_quota: QuotaSettings = QuotaSettings()


# The most documents any configuration may allow in one request. The request schemas carry
# it as a static bound, so an oversized list fails before one of its items is validated.
DOCUMENTS_CEILING = 10_000


LongDocuments = Literal["chunk", "truncate"]


class ChunkingConfig(_Strict):
    """What happens to a document longer than the model's window (with the query)."""

    long_documents: LongDocuments = Field(
        "truncate",
        description="The default of the request field `long_documents`. `chunk`: score "
        "overlapping windows and keep the best; `truncate`: score the first window only. "
        "The shipped configs chunk.",
    )
    overlap_tokens: int = Field(
        32, ge=0, le=256, description="Tokens each window shares with the one before it."
    )
    max_chunks_per_document: int = Field(
        16,
        ge=1,
        description="Windows scored per document at most; text after the last is not seen.",
    )
    max_chunks_per_request: int = Field(
        2000,
        ge=1,
        description="Windows over all documents of a request; more is a 422 naming this limit.",
    )


class LimitsConfig(_Strict):
    max_documents_per_request: int = Field(1000, ge=1, le=DOCUMENTS_CEILING)
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Larger bodies get 413. The default fits 1,000 documents of a model "
        "window each (512 tokens: about 4 KiB of JSON, escapes included).",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="The whole body must arrive within this many seconds of the request "
        "reaching the ingress, or 408: a slow sender cannot hold a slot for longer.",
    )
    max_document_chars: int = Field(
        32_768,
        ge=1,
        description="Longer documents are rejected (422). Within it, a long document is "
        "chunked or truncated as `chunking` says; text no window covers is never tokenized.",
    )
    max_query_chars: int = Field(
        8192,
        ge=1,
        description="Longer queries are rejected (422). Within it, the query is truncated to "
        "the model's `max_query_tokens` before scoring.",
    )
    max_top_n: int | None = Field(
        None,
        ge=1,
        description="Upper bound on `top_n`; `top_n` above the document count "
        "returns every document.",
    )


class PricingConfig(_Strict):
    default_usd_per_1k_documents: float = Field(0.008, ge=0)
    usd_per_1k_documents: dict[str, float] = Field(
        default_factory=dict, description="Per-model prices (catalog name or alias)."
    )

    @field_validator("usd_per_1k_documents")
    @classmethod
    def _canonical_names(cls, v: dict[str, float]) -> dict[str, float]:
        if any(price < 0 for price in v.values()):
            raise ValueError("prices must not be negative")
        return {model_name(k): price for k, price in v.items()}

    def price(self, model: str) -> float:
        return self.usd_per_1k_documents.get(model, self.default_usd_per_1k_documents)


class UsageConfig(_Strict):
    """Where billed usage is stored, and the ledger replica's placement. Quotas are not
    stored: they live in the ledger's memory."""

    store: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="sqlite: one file on the ledger's node (demo, one machine); postgres: a "
        "database server, for clusters (usage outlives any node).",
    )
    sqlite_path: str = Field(
        DEFAULT_USAGE_DB, description="The SQLite file (WAL mode); created with its folder."
    )
    postgres_dsn_env: str = Field(
        "RERANK_USAGE_DSN",
        description="Environment variable (on the ledger's node) holding the PostgreSQL DSN; "
        "the DSN itself never goes in the config file.",
    )
    pool_size: int = Field(4, ge=1, le=64, description="PostgreSQL connections at most.")
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long a write waits for the database (a connection, a lock) "
        "before the request gets 503 ledger_unavailable.",
    )
    max_batch: int = Field(1000, ge=1, description="Records written in one transaction at most.")
    num_cpus: float = Field(0.1, ge=0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources for the ledger replica, e.g. to pin it to the node "
        "whose disk holds the SQLite file.",
    )

    @model_validator(mode="before")
    @classmethod
    def _journal_is_gone(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("journal_path" in data or "fsync" in data):
            raise ValueError(
                "usage.journal_path and usage.fsync are gone: usage is kept in a database "
                "(usage.store). Load an old journal once with `rerank-import-journal PATH`."
            )
        return data

    def deployment_options(self) -> dict[str, Any]:
        return {"ray_actor_options": {"num_cpus": self.num_cpus, "resources": self.resources}}


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class AppConfig(_Strict):
    """The `args` of the Serve application (see `deployments/*.yaml`)."""

    model_defaults: dict[str, Any] = Field(
        default_factory=dict, description="Merged under every entry of `models`."
    )
    models: list[ModelDeploymentConfig] = Field(min_length=1)
    default_model: str | None = Field(
        None, description="Served when a request names no model; defaults to the first."
    )
    ingress: IngressConfig = IngressConfig()
    routing: RoutingSettings = RoutingSettings()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    pricing: PricingConfig = PricingConfig()
    usage: UsageConfig = UsageConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model_defaults"):
            defaults = data["model_defaults"]
            data = dict(data)
            data["models"] = [
                _deep_merge(defaults, m) if isinstance(m, dict) else m
                for m in data.get("models", [])
            ]
        return data

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is listed twice: {names}")
        deployments = [m.short_name.lower() for m in self.models]
        if len(set(deployments)) != len(deployments):
            raise ValueError(f"two models would share a deployment name: {names}")
        self._name_served_models_canonically()
        if self.default_model is not None:
            if self.default_model not in names:
                raise ValueError(f"default_model {self.default_model} is not enabled")
        catalog = load_catalog().cards
        cascade = self.routing.cascade
        for name, where in (
            (cascade.first, "routing.cascade.first"),
            (cascade.second, "routing.cascade.second"),
            *((n, "pricing.usd_per_1k_documents") for n in self.pricing.usd_per_1k_documents),
        ):
            if name not in catalog and name not in names:
                raise ValueError(
                    f"{where} names {name}, which is neither in the catalog nor enabled"
                )
        routed = [(s.source, "routing.splits") for s in self.routing.splits]
        routed += [(s.target, "routing.splits") for s in self.routing.splits]
        if self.routing.shadow is not None:
            routed.append((self.routing.shadow.model, "routing.shadow"))
            if self.routing.shadow.against is not None:
                routed.append((self.routing.shadow.against, "routing.shadow"))
        for name, where in routed:
            if name not in names:
                raise ValueError(f"{where} names {name}, which is not enabled")
        sources = [s.source for s in self.routing.splits]
        if len(set(sources)) != len(sources):
            raise ValueError(f"routing.splits: more than one split from one model: {sources}")
        return self

    def _name_served_models_canonically(self) -> None:
        """Names elsewhere in the config may spell a model outside the catalog as its
        deployment does (`bge-reranker-base` for `BAAI/bge-reranker-base`): one name each."""
        catalog = self.catalog()

        def canonical(name: str) -> str:
            card = catalog.find(name)
            return name if card is None else card.name

        if self.default_model is not None:
            self.default_model = canonical(self.default_model)
        cascade = self.routing.cascade
        cascade.first, cascade.second = canonical(cascade.first), canonical(cascade.second)
        for split in self.routing.splits:
            split.source, split.target = canonical(split.source), canonical(split.target)
        shadow = self.routing.shadow
        if shadow is not None:
            shadow.model = canonical(shadow.model)
            shadow.against = None if shadow.against is None else canonical(shadow.against)
        prices = self.pricing.usd_per_1k_documents
        self.pricing.usd_per_1k_documents = {canonical(k): v for k, v in prices.items()}

    @property
    def enabled_models(self) -> list[str]:
        return [m.name for m in self.models]

    def catalog(self) -> Catalog:
        """The catalog, with a card for each enabled model outside it."""
        return load_catalog().with_cards(m.card() for m in self.models if not m.in_catalog)

"""Typed application config: what a Serve config file's `args` may say, and how it turns
into Ray Serve deployment options (plain dicts). Adding a model or changing a GPU fraction
happens here, in data, never in code. Data only: nothing here writes files or imports
Ray; the random demo checkpoints are written by `serve_app/model/checkpoints.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.catalog import UnknownModelError, load_catalog
from serve_app.types import Budget

DEFAULT_RANDOM_CHECKPOINT_ROOT = "~/.cache/rerank-serve/random-init"


def canonical_model_name(name: str) -> str:
    try:
        return load_catalog().resolve(name).name
    except UnknownModelError as e:
        raise ValueError(f"unknown model {name!r}; the catalog has {e.available}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class ModelDeploymentConfig(_Placement):
    name: str = Field(description="Catalog name or alias; normalised to the canonical name.")
    source: str | None = Field(
        None, description="Hub id or local directory; defaults to the hub id (the name)."
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
        return canonical_model_name(v)

    @property
    def short_name(self) -> str:
        return load_catalog().resolve(self.name).short_name

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
        return canonical_model_name(v)


class SplitSettings(_Strict):
    """Send `fraction` of the `auto` traffic the policy gives `from` to `to` instead."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    fraction: float = Field(ge=0, le=1)

    @field_validator("source", "target")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return canonical_model_name(v)


class ShadowSettings(_Strict):
    """Also score `fraction` of the requests served by `against` (any model if omitted)
    with `model`, off the response path, and record how well the rankings agree."""

    model: str
    against: str | None = None
    fraction: float = Field(ge=0, le=1)

    @field_validator("model", "against")
    @classmethod
    def _canonical(cls, v: str | None) -> str | None:
        return None if v is None else canonical_model_name(v)


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


class LimitsConfig(_Strict):
    max_documents_per_request: int = Field(1000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
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
        return {canonical_model_name(k): price for k, price in v.items()}

    def price(self, model: str) -> float:
        return self.usd_per_1k_documents.get(model, self.default_usd_per_1k_documents)


class UsageConfig(_Strict):
    journal_path: str | None = Field(
        None,
        description="Append-only JSON-lines journal of billed requests; the ledger replays it "
        "when it (re)starts. Without it, totals live only in the ledger's memory.",
    )
    fsync: bool = Field(False, description="fsync the journal after every ledger write.")
    num_cpus: float = Field(0.1, ge=0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources for the ledger replica, e.g. to pin it to the node "
        "whose disk holds the journal.",
    )

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
        if self.default_model is not None:
            self.default_model = canonical_model_name(self.default_model)
            if self.default_model not in names:
                raise ValueError(f"default_model {self.default_model} is not enabled")
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

    @property
    def enabled_models(self) -> list[str]:
        return [m.name for m in self.models]

"""Typed application config: what a Serve config file's `args` may say, and how it turns
into Ray Serve deployment options. Adding a model or changing a GPU fraction happens here,
in data, never in code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.catalog import UnknownModelError, load_catalog

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

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class BatchingSettings(_Strict):
    """Sent to replicas as Serve `user_config`, so it can change at runtime without a restart.

    `max_batch_size` and `batch_wait_timeout_s` drive `@serve.batch` (requests per batch);
    `max_batch_tokens` and `max_batch_docs` bound one forward pass (padded tokens, pairs).
    """

    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_batch_tokens: int = Field(32768, ge=512)
    max_batch_docs: int = Field(512, ge=1)


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
            "autoscaling_config": self.autoscaling.model_dump(exclude_none=True),
            "user_config": self.batching.model_dump(),
        }


class ModelCallSettings(_Strict):
    """How the ingress calls a model deployment (see `serve_app/resilience.py`)."""

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
    max_ongoing_requests: int = Field(256, ge=1)
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
    def _check(self) -> "AppConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is listed twice: {names}")
        if self.default_model is not None:
            self.default_model = canonical_model_name(self.default_model)
            if self.default_model not in names:
                raise ValueError(f"default_model {self.default_model} is not enabled")
        return self

    @property
    def enabled_models(self) -> list[str]:
        return [m.name for m in self.models]

"""How the ingress calls a model deployment when replicas die, nodes vanish or queues fill.

A rerank is idempotent, so a call that lost its replica is retried once (Serve routes the
retry to another replica, or waits for the replacement). Nothing hangs: every call has a
deadline; a call that outlives it is a 504, but after a replica failure, or while a model
has no live replica, the shorter `failover_timeout_s` applies and the answer is a 503 with
`Retry-After`. A full model queue (Serve's backpressure) is shed at once with the
deployment's configured status and `Retry-After`. A failed call never yields a partial
result: the caller gets the model's whole answer or an `APIError`.

The policy is plain Python; `classify_serve_error` is the one place that knows Ray's
exception types.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.config import ModelCallSettings
from serve_app.errors import APIError

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


class FailureKind(enum.Enum):
    REPLICA_LOST = "replica_lost"  # the replica died or is unreachable: retry elsewhere
    OVERLOADED = "overloaded"  # the queue is full: shed now, the client retries later
    OTHER = "other"


def classify_serve_error(exc: BaseException) -> FailureKind:
    if isinstance(exc, BackPressureError):
        return FailureKind.OVERLOADED
    # ActorDiedError and ActorUnavailableError are RayActorErrors; a TimeoutError from
    # inside the call (e.g. GetTimeoutError) means a replica did not respond.
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, TimeoutError)):
        return FailureKind.REPLICA_LOST
    return FailureKind.OTHER


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


class ModelCaller:
    """Calls model deployments for the ingress under `ModelCallSettings`.

    Remembers which models lost their last call for want of a replica; calls to them use
    the failover deadline until one succeeds again, so clients get a quick 503 while a
    node is gone and full service as soon as Serve has a replica back.
    """

    def __init__(
        self,
        settings: ModelCallSettings,
        classify: Callable[[BaseException], FailureKind] = classify_serve_error,
    ):
        self.settings = settings
        self.classify = classify
        self.unavailable: set[str] = set()

    async def call(self, model: str, make_call: Callable[[], Awaitable[T]]) -> T:
        """`make_call` starts one attempt (e.g. `lambda: handle.score.remote(...)`)."""
        failing_over = model in self.unavailable
        attempt = 0
        while True:
            timeout_s = (
                self.settings.failover_timeout_s if failing_over else self.settings.timeout_s
            )
            try:
                result = await _within(make_call(), timeout_s)
            except _DeadlineExceeded:
                if failing_over:
                    self.unavailable.add(model)
                    raise self._unavailable(model, f"no replica answered in {timeout_s}s")
                raise APIError(
                    504, "model_timeout", f"{model} did not answer within {timeout_s}s"
                ) from None
            except Exception as exc:
                kind = self.classify(exc)
                if kind is FailureKind.OVERLOADED:
                    raise self._overloaded(model, exc) from None
                if kind is FailureKind.REPLICA_LOST:
                    if attempt < self.settings.replica_failure_retries:
                        attempt += 1
                        failing_over = True
                        logger.warning("%s: replica lost (%s); retrying", model, type(exc).__name__)
                        continue
                    self.unavailable.add(model)
                logger.warning("%s: call failed: %r", model, exc)
                raise self._unavailable(model, f"could not score the request ({type(exc).__name__})")
            self.unavailable.discard(model)
            return result

    def _unavailable(self, model: str, why: str) -> APIError:
        return APIError(
            503,
            "model_unavailable",
            f"{model} {why}; retry",
            headers=_retry_after(self.settings.retry_after_s),
        )

    def _overloaded(self, model: str, exc: BaseException) -> APIError:
        status = getattr(exc, "status_code", 503)
        retry_after_s = getattr(exc, "retry_after_s", None)
        if retry_after_s is None:
            retry_after_s = self.settings.retry_after_s
        return APIError(
            status,
            "overloaded",
            f"{model} is at capacity and its queue is full; retry later",
            headers=_retry_after(retry_after_s),
        )


class _DeadlineExceeded(Exception):
    """Our own deadline, kept apart from any TimeoutError raised inside the call."""


async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """Await with a deadline; on expiry also cancel the request itself when it can be
    (a Serve `DeploymentResponse` can), so an abandoned call stops using the replica."""
    task = asyncio.ensure_future(_awaited(awaitable))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            cancel = getattr(awaitable, "cancel", None)
            if callable(cancel):
                cancel()
            raise _DeadlineExceeded()
        return task.result()
    finally:
        if not task.done():
            task.cancel()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable

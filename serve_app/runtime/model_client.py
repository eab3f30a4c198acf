"""The ingress's client for the model deployments: scoring, self-descriptions, replica
counts, and what happens when replicas die, nodes vanish or queues fill.

A rerank is idempotent, so a call that lost its replica is retried once (Serve routes the
retry to another replica, or waits for the replacement). Nothing hangs: every call has a
deadline; a call that outlives it is a 504, but after a replica failure, or while a model
has no live replica, the shorter `failover_timeout_s` applies and the answer is a 503 with
`Retry-After`. A full model queue (Serve's backpressure) is shed at once with the
deployment's configured status and `Retry-After`. A failed call never yields a partial
result: the caller gets the model's whole answer or a `RerankError`.

`ModelCaller` is the policy (tested without Ray); `classify_serve_error` is the one place
that knows Ray's exception types.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.config import ModelCallSettings
from serve_app.errors import ModelTimeout, ModelUnavailable, Overloaded
from serve_app.model.stats import ModelStatsSnapshot
from serve_app.model.tokenization import EncodedPairs
from serve_app.observer import NullObserver, Observer
from serve_app.runtime.serve_state import replica_states, serve_details

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


class ModelCaller:
    """Calls model deployments for the ingress under `ModelCallSettings`.

    A model is marked unavailable when a call to it ran out of replicas (its retry failed
    too), or when Serve reports no running replica of it (`mark_unavailable`; calls only
    waiting for a replica see no error to react to). From then until a call succeeds, new
    calls get the failover deadline, and so do calls already waiting (they would otherwise
    sit out the full deadline on a replica that vanished with its node): clients get a
    quick 503 while no replica exists, and full service as soon as Serve has one back.
    """

    def __init__(
        self,
        settings: ModelCallSettings,
        classify: Callable[[BaseException], FailureKind] = classify_serve_error,
    ):
        self.settings = settings
        self.classify = classify
        self.unavailable: set[str] = set()
        # Per model, one future per waiting call, resolved when the model is marked.
        self._waiting: dict[str, set[asyncio.Future]] = {}

    async def call(self, model: str, make_call: Callable[[], Awaitable[T]]) -> T:
        """`make_call` starts one attempt (e.g. `lambda: handle.score.remote(...)`)."""
        failing_over = model in self.unavailable
        attempt = 0
        while True:
            try:
                result = await self._attempt(model, make_call(), failing_over)
            except _DeadlineExceeded as late:
                if late.failing_over:
                    self.mark_unavailable(model)
                    why = f"no replica answered in {late.seconds}s"
                    raise self._unavailable(model, why) from None
                raise ModelTimeout(f"{model} did not answer within {late.seconds}s") from None
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
                    self.mark_unavailable(model)
                logger.warning("%s: call failed: %r", model, exc)
                why = f"could not score the request ({type(exc).__name__})"
                raise self._unavailable(model, why) from exc
            self.unavailable.discard(model)
            return result

    def mark_available(self, model: str) -> None:
        """Serve has a running replica of `model` again: calls get the full deadline."""
        self.unavailable.discard(model)

    def mark_unavailable(self, model: str) -> None:
        self.unavailable.add(model)
        for waiter in self._waiting.pop(model, set()):
            if not waiter.done():
                waiter.set_result(None)

    async def _attempt(self, model: str, awaitable: Awaitable[T], failing_over: bool) -> T:
        """One call under its deadline: `failover_timeout_s` when failing over (from the
        start, or from the moment the model is marked unavailable), else `timeout_s`.
        On expiry the request itself is cancelled too when it can be (a Serve
        `DeploymentResponse` can), so an abandoned call stops using the replica."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(_awaited(awaitable))
        marked = loop.create_future()
        waiting_for: set[asyncio.Future] = {task}
        timeout_s = self.settings.failover_timeout_s if failing_over else self.settings.timeout_s
        if not failing_over:
            self._waiting.setdefault(model, set()).add(marked)
            waiting_for.add(marked)
        deadline = loop.time() + timeout_s
        try:
            while True:
                done, _ = await asyncio.wait(
                    waiting_for,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if task in done:
                    return task.result()
                if marked not in done:
                    break
                failing_over = True
                waiting_for = {task}
                timeout_s = self.settings.failover_timeout_s
                deadline = min(deadline, loop.time() + timeout_s)
            cancel = getattr(awaitable, "cancel", None)
            if callable(cancel):
                cancel()
            raise _DeadlineExceeded(timeout_s, failing_over)
        finally:
            self._waiting.get(model, set()).discard(marked)
            if not task.done():
                task.cancel()

    def _unavailable(self, model: str, why: str) -> ModelUnavailable:
        return ModelUnavailable(f"{model} {why}; retry", retry_after_s=self.settings.retry_after_s)

    def _overloaded(self, model: str, exc: BaseException) -> Overloaded:
        retry_after_s = getattr(exc, "retry_after_s", None)
        if retry_after_s is None:
            retry_after_s = self.settings.retry_after_s
        return Overloaded(
            f"{model} is at capacity and its queue is full; retry later",
            retry_after_s=retry_after_s,
            # The deployment's `backpressure.status_code`, which Serve carries on the error.
            throttle=getattr(exc, "status_code", 503) == 429,
        )


class _DeadlineExceeded(Exception):
    """Our own deadline, kept apart from any TimeoutError raised inside the call."""

    def __init__(self, seconds: float, failing_over: bool):
        super().__init__(seconds, failing_over)
        self.seconds = seconds
        self.failing_over = failing_over


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class ModelClient:
    """The model deployments behind one ingress replica (the service's `ModelBackend`):
    each call through `ModelCaller`, timed for the observer."""

    def __init__(
        self,
        handles: Mapping[str, DeploymentHandle],
        deployments: Mapping[str, str],
        settings: ModelCallSettings,
        observer: Observer = NullObserver(),
    ):
        self.handles = dict(handles)
        self.deployments = dict(deployments)  # model -> Serve deployment name
        self.caller = ModelCaller(settings)
        self.observer = observer

    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        handle = self.handles[model]
        started = time.perf_counter()
        logits = await self.caller.call(model, lambda: handle.score.remote(pairs))
        self.observer.model_called(model, time.perf_counter() - started)
        return logits

    async def describe(self, model: str) -> dict:
        return await self.handles[model].describe.remote()

    async def stats(self, model: str) -> ModelStatsSnapshot:
        return await self.handles[model].stats.remote()

    async def replica_states(self) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self.replica_states_now)

    def replica_states_now(self) -> dict[str, dict[str, int]]:
        """Replicas per state per model, from the Serve controller; {} if unknown.
        Blocking: call it in a thread."""
        try:
            states = replica_states(serve_details(), serve.get_replica_context().app_name)
        except Exception:
            return {}
        return {m: states[d] for m, d in self.deployments.items() if d in states}

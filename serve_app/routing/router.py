"""The router: decides which model scores a request and runs that decision. Named or
default, budget (`auto`) with traffic splits, the two-stage cascade, and background shadow
scoring. The decisions come from the plain-Python policies beside it (`names`, `budget`,
`splits`, `cascade`, `shadow`, `ranking`); this module sequences them around an injected
`score(model, pairs)`, so it knows nothing of how a replica is reached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from serve_app.catalog import Catalog
from serve_app.config import AppConfig
from serve_app.errors import InvalidRequest, Overloaded
from serve_app.model.tokenization import DocumentOptions, EncodedPairs, PairEncoders
from serve_app.observer import NullObserver, Observer
from serve_app.routing.admission import Admission, Reservation, drain_seconds
from serve_app.routing.budget import BudgetPolicy
from serve_app.routing.cascade import merge
from serve_app.routing.loads import LoadBoard
from serve_app.routing.names import ModelNames
from serve_app.routing.ranking import rank, scored, top_indices
from serve_app.routing.shadow import AgreementSummary, agreement
from serve_app.routing.splits import FractionSampler, TrafficSplitter
from serve_app.types import Budget, RerankRequest, RerankResult, Routing

logger = logging.getLogger("ray.serve")

AUTO = "auto"
CASCADE = "cascade"

ScoreFn = Callable[[str, EncodedPairs], Awaitable[np.ndarray]]


def budget_met(predicted_ms: float | None, budget: Budget) -> bool | None:
    """Whether a prediction fits the latency budget; None when there is no budget, or no
    prediction (a model without a published speed, not measured yet)."""
    if budget.max_latency_ms is None or predicted_ms is None:
        return None
    return predicted_ms <= budget.max_latency_ms


def total_ms(*parts: float | None) -> float | None:
    """The sum of predictions, None if any part has none."""
    return None if any(p is None for p in parts) else sum(parts)


def rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


class Router:
    def __init__(
        self,
        config: AppConfig,
        catalog: Catalog,
        encoders: PairEncoders,
        score: ScoreFn,
        board: LoadBoard,
        observer: Observer = NullObserver(),
        clock: Callable[[], float] = time.perf_counter,
    ):
        enabled = config.enabled_models
        self.clock = clock
        self.names = ModelNames(catalog, enabled, config.default_model)
        self.policy = BudgetPolicy(catalog, enabled)
        self.encoders = encoders
        self.score_fn = score
        self.board = board
        self.admission = Admission.from_config(config, board)
        self.observer = observer
        routing = config.routing
        self.default_budget = routing.default_budget.as_budget()
        self.cascade_defaults = routing.cascade
        self.long_documents = config.chunking.long_documents
        self.splitter = TrafficSplitter((s.source, s.target, s.fraction) for s in routing.splits)
        self.shadow = routing.shadow
        self.shadow_sampler = FractionSampler(routing.shadow.fraction) if routing.shadow else None
        self.agreement = AgreementSummary()
        self._background: set[asyncio.Task] = set()

    def admit(self, request: RerankRequest, reservation: Reservation | None = None) -> Reservation:
        """The place `request` holds while it is worked on, from its fields alone (no
        tokenization), so a refusal costs nothing; raises `Overloaded` when no model it
        could go to can take it now. Named: that model; cascade: its first stage; `auto`:
        any eligible one (no place held: its model is chosen later and its call counts once
        dispatched). `reservation`: the place the edge took before the body was read; kept
        when it is on the right model, so what the edge admitted is not judged again."""
        requested = (request.model or "").strip().lower()
        if request.cascade is not None or requested == CASCADE:
            spec = request.cascade
            first = spec.first if spec and spec.first else self.cascade_defaults.first
            model = self.names.resolve(first, "cascade.first").model
        elif requested == AUTO or (not requested and not request.budget.is_empty):
            budget = self.default_budget if request.budget.is_empty else request.budget
            return self.admission.assign_any(reservation, self.policy.eligible(budget))
        else:
            model = self.names.resolve(request.model).model
        return self.admission.assign(reservation, model)

    async def rerank(self, request: RerankRequest, arrived: float | None = None) -> RerankResult:
        """Score the request's documents.
        `arrived`: the clock (`time.perf_counter()`) when the request reached the ingress;
        time spent since then counts against a latency budget. None: now."""
        requested = (request.model or "").strip().lower()
        arrived = self.clock() if arrived is None else arrived
        if request.cascade is not None or requested == CASCADE:
            if requested and requested != CASCADE:
                raise InvalidRequest(
                    'give `"model": "cascade"` or no model with a `cascade` object', "cascade"
                )
            return await self._cascade(request, arrived)
        if requested == AUTO or (not requested and not request.budget.is_empty):
            return await self._auto(request, arrived)
        return await self._named(request, arrived)

    def options(self, request: RerankRequest) -> DocumentOptions:
        """How this request's documents are cut: its own choice, else the configured one."""
        return DocumentOptions(
            request.long_documents or self.long_documents, request.max_tokens_per_doc
        )

    def documents_to_score(self, request: RerankRequest) -> int:
        """Pairs this request will have scored, which quotas count: a cascade's first
        stage scores every document and its second the kept ones again."""
        n = len(request.texts)
        if request.cascade is None and (request.model or "").strip().lower() != CASCADE:
            return n
        spec = request.cascade
        keep = spec.keep if spec and spec.keep else self.cascade_defaults.keep
        return n + min(keep, n)

    # -- the three routes -------------------------------------------------------------

    async def _named(self, request: RerankRequest, arrived: float) -> RerankResult:
        named = self.names.resolve(request.model)
        pairs = await self.encoders.encode(
            named.model, request.query, request.texts, self.options(request)
        )
        predicted = total_ms(
            self._spent_ms(arrived),
            self.policy.predict(named.model, pairs.total_tokens, self.board.loads()),
        )
        routing = Routing(named.policy, rounded(predicted), budget_met(predicted, request.budget))
        return await self._single(named.model, pairs, request, routing)

    async def _auto(self, request: RerankRequest, arrived: float) -> RerankResult:
        budget = self.default_budget if request.budget.is_empty else request.budget
        candidates = self.policy.eligible(budget)
        # One tokenization serves the decision and, with a shared vocabulary, the model.
        probe, options = candidates[0], self.options(request)
        pairs = await self.encoders.encode(probe, request.query, request.texts, options)
        loads = self.board.loads()
        spent = self._spent_ms(arrived)
        full = self.admission.full_models(candidates)  # admitted: not all of them
        choice = self.policy.choose(budget, pairs.total_tokens, loads, spent, exclude=full)
        model, predicted, policy = choice.model, choice.predicted_ms, "budget"
        diverted = self.splitter.divert(model, [m for m in candidates if m not in full])
        if diverted is not None:
            model, policy = diverted, "split"
            predicted = total_ms(spent, self.policy.predict(model, pairs.total_tokens, loads))
        pairs = await self.encoders.encode(
            model, request.query, request.texts, options, reuse=(probe, pairs)
        )
        routing = Routing(policy, rounded(predicted), budget_met(predicted, budget))
        return await self._single(model, pairs, request, routing)

    async def _single(
        self,
        model: str,
        pairs: EncodedPairs,
        request: RerankRequest,
        routing: Routing,
    ) -> RerankResult:
        logits, best = pairs.best(await self._score(model, pairs))
        self._maybe_shadow(model, logits, request)
        return RerankResult(
            model=model,
            served_by=model,
            ranked=rank(logits.tolist(), request.top_n, request.raw_scores),
            scored=[(model, pairs.documents)],
            total_tokens=pairs.total_tokens,
            routing=routing,
            windows=len(pairs),
            passages=pairs.passages(best),
        )

    async def _cascade(self, request: RerankRequest, arrived: float) -> RerankResult:
        spec, defaults = request.cascade, self.cascade_defaults
        first = self.names.resolve(
            spec.first if spec and spec.first else defaults.first, "cascade.first"
        ).model
        second = self.names.resolve(
            spec.second if spec and spec.second else defaults.second, "cascade.second"
        ).model
        keep = spec.keep if spec and spec.keep else defaults.keep
        options = self.options(request)
        texts = request.texts
        pairs = await self.encoders.encode(first, request.query, texts, options)
        keep = min(keep, pairs.documents)
        loads = self.board.loads()
        # Estimated: which documents the first stage keeps is not known yet.
        second_tokens = pairs.total_tokens * keep // max(1, pairs.documents)
        predicted = total_ms(
            self._spent_ms(arrived),
            self.policy.predict(first, pairs.total_tokens, loads),
            self.policy.predict(second, second_tokens, loads),
        )
        first_logits, first_best = pairs.best(await self._score(first, pairs))
        kept = top_indices(first_logits.tolist(), keep)
        second_pairs = await self.encoders.encode(
            second,
            request.query,
            [texts[i] for i in kept],
            options,
            reuse=(first, pairs.select(kept)),
        )
        second_logits, second_best = second_pairs.best(await self._score(second, second_pairs))
        # A kept document's passage is the one the second model scored it by.
        passages = pairs.passages(first_best)
        for position, passage in second_pairs.passages(second_best).items():
            passages[kept[position]] = passage
        return RerankResult(
            model=CASCADE,
            served_by=f"{first},{second}",
            ranked=scored(
                merge(first_logits.tolist(), kept, second_logits.tolist()),
                request.top_n,
                request.raw_scores,
            ),
            scored=[(first, pairs.documents), (second, second_pairs.documents)],
            total_tokens=pairs.total_tokens + second_pairs.total_tokens,
            windows=len(pairs) + len(second_pairs),
            passages=passages,
            routing=Routing(
                CASCADE, rounded(predicted), budget_met(predicted, request.budget), [first, second]
            ),
        )

    # -- plumbing ---------------------------------------------------------------------

    async def _score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        try:
            with self.board.dispatched(model, pairs.total_tokens):
                return await self.score_fn(model, pairs)
        except Overloaded as e:
            # Serve's queue refused after all (another ingress's calls, a replica count one
            # poll old): the wait is the model's drain time once it is measured.
            if drain_seconds(self.board.loads()[model]) is None:
                raise
            retry_after_s = self.admission.retry_after_s(model)
            raise Overloaded(e.message, retry_after_s, throttle=e.throttle) from e

    def _spent_ms(self, arrived: float) -> float:
        return (self.clock() - arrived) * 1000.0

    # -- shadow scoring ---------------------------------------------------------------

    def _maybe_shadow(self, served: str, logits: np.ndarray, request: RerankRequest) -> None:
        shadow = self.shadow
        if shadow is None or shadow.model == served:
            return
        if shadow.against is not None and shadow.against != served:
            return
        if not self.shadow_sampler():
            return
        task = asyncio.get_running_loop().create_task(self._shadow_score(served, logits, request))
        # Keep a reference until it finishes: the response never waits for it.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow_score(self, served: str, logits: np.ndarray, request: RerankRequest) -> None:
        """`logits`: the served model's document scores."""
        model = self.shadow.model
        primary = self.shadow.against or "any"
        try:
            # Cut as the served model's were (`max_tokens_per_doc`, chunking).
            pairs = await self.encoders.encode(
                model, request.query, request.texts, self.options(request)
            )
            shadow_logits, _ = pairs.best(await self._score(model, pairs))
            # Kendall tau is O(n^2): computed off the event loop, recorded on it.
            overlap, tau = await asyncio.to_thread(agreement, logits, shadow_logits)
        except Exception:
            logger.warning("shadow scoring on %s failed", model, exc_info=True)
            self.agreement.failed += 1
            self.observer.shadow_failed(primary, model)
            return
        self.agreement.add(overlap, tau)
        self.observer.shadow_compared(primary, model, overlap, tau)

    def describe(self) -> dict:
        return {
            "models": self.board.describe(),
            "default_budget": dataclasses.asdict(self.default_budget),
            "cascade": self.cascade_defaults.model_dump(),
            "splits": self.splitter.describe(),
            "shadow": None
            if self.shadow is None
            else {**self.shadow.model_dump(), **self.agreement.as_dict()},
        }

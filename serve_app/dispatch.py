"""Routing a request to model deployments and running it: named/default, budget (`auto`)
with traffic splits, the two-stage cascade, and background shadow scoring. Decisions come
from the plain-Python policies (`router`, `budget`, `traffic`, `cascade`, `shadow`); this
module only sequences them around an injected `score(model, pairs)` call, so it knows
nothing of how the ingress reaches a replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from serve_app.budget import Budget, BudgetPolicy, FloorUnreachable
from serve_app.cascade import merge, select_pairs, top_indices
from serve_app.catalog import Catalog, UnknownModelError
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.ranking import rank, sigmoid
from serve_app.router import ModelRouter, RouteDecision
from serve_app.schemas import RerankRequest, RoutingInfo
from serve_app.shadow import ShadowMetrics, agreement
from serve_app.stats_collector import LoadBoard
from serve_app.tokenization import EncodedPairs, PairEncoder
from serve_app.traffic import FractionSampler, TrafficSplitter

logger = logging.getLogger("ray.serve")

AUTO = "auto"
CASCADE = "cascade"
ENCODE_SLICE_DOCS = 32  # documents per tokenizer call; more run as parallel slices

ScoreFn = Callable[[str, EncodedPairs], Awaitable[np.ndarray]]


def as_percent(value: float | None) -> float | None:
    """Floors may be given as a fraction (0.72) or in percent (72), the catalog's scale."""
    if value is None:
        return None
    return value * 100.0 if value <= 1.0 else value


def request_budget(body: RerankRequest) -> Budget:
    return Budget(body.max_latency_ms, as_percent(body.min_ndcg), as_percent(body.min_mrr))


@dataclass
class Outcome:
    model: str  # the response's `model`
    served_by: str  # the `x-rerank-model` header
    ranked: list[tuple[int, float]]  # (index, score) best first, cut to top_n
    scored: list[tuple[str, int]]  # (model, documents) per stage: what is billed, at whose price
    total_tokens: int
    routing: RoutingInfo

    @property
    def documents(self) -> int:
        """Usage: documents scored, over all stages."""
        return sum(n for _, n in self.scored)


class Dispatcher:
    def __init__(
        self,
        config: AppConfig,
        catalog: Catalog,
        encoders: Mapping[str, PairEncoder],
        encode_pool: Executor,
        score: ScoreFn,
        board: LoadBoard,
        clock: Callable[[], float] = time.perf_counter,
    ):
        enabled = config.enabled_models
        self.clock = clock
        self.router = ModelRouter(catalog, enabled, config.default_model)
        self.policy = BudgetPolicy(catalog, enabled)
        self.encoders = encoders
        self.encode_pool = encode_pool
        self.score_fn = score
        self.board = board
        routing = config.routing
        b = routing.default_budget
        self.default_budget = Budget(b.max_latency_ms, as_percent(b.min_ndcg), as_percent(b.min_mrr))
        self.cascade_defaults = routing.cascade
        self.splitter = TrafficSplitter((s.source, s.target, s.fraction) for s in routing.splits)
        self.shadow = routing.shadow
        self.shadow_sampler = FractionSampler(routing.shadow.fraction) if routing.shadow else None
        self.shadow_metrics = (
            ShadowMetrics(routing.shadow.against or "any", routing.shadow.model)
            if routing.shadow
            else None
        )
        self._background: set[asyncio.Task] = set()

    # -- plumbing ---------------------------------------------------------------------

    async def _encode(self, model: str, query: str, texts: list[str]) -> EncodedPairs:
        # The query once, then slices of the documents in parallel on the pool's threads:
        # a lone request's documents use several cores (the tokenizer's own parallelism is
        # off in the ingress).
        encoder, loop = self.encoders[model], asyncio.get_running_loop()
        head = await loop.run_in_executor(self.encode_pool, encoder.head, query)
        slices = max(1, -(-len(texts) // ENCODE_SLICE_DOCS))
        size = max(1, -(-len(texts) // slices))  # even slices: 100 documents are 4 x 25
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self.encode_pool, encoder.encode_documents, head, texts[i : i + size]
                )
                for i in range(0, len(texts), size) or [0]
            )
        )
        return EncodedPairs.concat(list(parts))

    async def _reencode_if_needed(
        self, pairs: EncodedPairs, encoded_for: str, model: str, query: str, texts: list[str]
    ) -> EncodedPairs:
        if self.encoders[model] is self.encoders[encoded_for]:
            return pairs
        return await self._encode(model, query, texts)

    async def _score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        with self.board.dispatched(model, pairs.total_tokens):
            return await self.score_fn(model, pairs)

    def _spent_ms(self, arrived: float) -> float:
        return (self.clock() - arrived) * 1000.0

    def _route(self, name: str | None, param: str) -> RouteDecision:
        try:
            return self.router.route(name)
        except UnknownModelError as e:
            raise APIError(
                404,
                "model_not_found",
                f"model {e.requested!r} is not served here; available: {', '.join(e.available)}",
                param,
            ) from None

    # -- entry point ------------------------------------------------------------------

    async def rerank(
        self, body: RerankRequest, texts: list[str], arrived: float | None = None
    ) -> Outcome:
        """`arrived`: the clock (`time.perf_counter()`) when the request reached the ingress;
        time spent since then counts against a latency budget. None: now."""
        requested = (body.model or "").strip()
        arrived = self.clock() if arrived is None else arrived
        budget = request_budget(body)
        if body.cascade is not None or requested.lower() == CASCADE:
            if requested and requested.lower() != CASCADE:
                raise APIError(
                    422,
                    "invalid_request",
                    'cascade: give `"model": "cascade"` or no model with a `cascade` object',
                    "cascade",
                )
            return await self._cascade(body, texts, budget, arrived)
        if requested.lower() == AUTO or (not requested and not budget.is_empty):
            return await self._auto(body, texts, budget, arrived)
        return await self._named(body, texts, budget, arrived)

    async def _named(
        self, body: RerankRequest, texts: list[str], budget: Budget, arrived: float
    ) -> Outcome:
        decision = self._route(body.model, "model")
        model = decision.model
        pairs = await self._encode(model, body.query, texts)
        predicted = self._spent_ms(arrived) + self.policy.predict(
            model, pairs.total_tokens, self.board.loads()
        )
        routing = RoutingInfo(
            policy=decision.policy,
            predicted_ms=round(predicted, 3),
            budget_met=None if budget.max_latency_ms is None else predicted <= budget.max_latency_ms,
        )
        return await self._single(model, pairs, body, texts, routing)

    async def _auto(
        self, body: RerankRequest, texts: list[str], budget: Budget, arrived: float
    ) -> Outcome:
        if budget.is_empty:
            budget = self.default_budget
        try:
            candidates = self.policy.eligible(budget)
        except FloorUnreachable as e:
            raise APIError(400, "budget_unsatisfiable", str(e), e.param) from None
        # One tokenization serves the decision and, with a shared vocabulary, the model.
        probe = candidates[0]
        pairs = await self._encode(probe, body.query, texts)
        loads = self.board.loads()
        spent = self._spent_ms(arrived)
        choice = self.policy.choose(budget, pairs.total_tokens, loads, spent)
        model, predicted, met, policy = choice.model, choice.predicted_ms, choice.budget_met, "budget"
        candidate = self.splitter.divert(model, candidates)
        if candidate is not None:
            model, policy = candidate, "split"
            predicted = spent + self.policy.predict(model, pairs.total_tokens, loads)
            met = budget.max_latency_ms is None or predicted <= budget.max_latency_ms
        pairs = await self._reencode_if_needed(pairs, probe, model, body.query, texts)
        routing = RoutingInfo(policy=policy, predicted_ms=round(predicted, 3), budget_met=met)
        return await self._single(model, pairs, body, texts, routing)

    async def _single(
        self,
        model: str,
        pairs: EncodedPairs,
        body: RerankRequest,
        texts: list[str],
        routing: RoutingInfo,
    ) -> Outcome:
        logits = await self._score(model, pairs)
        self._maybe_shadow(model, pairs, logits, body.query, texts)
        return Outcome(
            model=model,
            served_by=model,
            ranked=rank(logits.tolist(), body.top_n, body.raw_scores),
            scored=[(model, len(pairs))],
            total_tokens=pairs.total_tokens,
            routing=routing,
        )

    async def _cascade(
        self, body: RerankRequest, texts: list[str], budget: Budget, arrived: float
    ) -> Outcome:
        spec = body.cascade
        first = self._route(
            spec.first if spec and spec.first else self.cascade_defaults.first, "cascade.first"
        ).model
        second = self._route(
            spec.second if spec and spec.second else self.cascade_defaults.second, "cascade.second"
        ).model
        keep = spec.keep if spec and spec.keep else self.cascade_defaults.keep
        pairs = await self._encode(first, body.query, texts)
        keep = min(keep, len(pairs))
        loads = self.board.loads()
        # Estimated: which documents the first stage keeps is not known yet.
        second_tokens = pairs.total_tokens * keep // len(pairs)
        predicted = (
            self._spent_ms(arrived)
            + self.policy.predict(first, pairs.total_tokens, loads)
            + self.policy.predict(second, second_tokens, loads)
        )
        first_logits = (await self._score(first, pairs)).tolist()
        kept = top_indices(first_logits, keep)
        if self.encoders[second] is self.encoders[first]:
            second_pairs = select_pairs(pairs, kept)
        else:
            second_pairs = await self._encode(second, body.query, [texts[i] for i in kept])
        second_logits = (await self._score(second, second_pairs)).tolist()
        merged = merge(first_logits, kept, second_logits)
        if body.top_n is not None:
            merged = merged[: body.top_n]
        if not body.raw_scores:
            merged = [(i, sigmoid(s)) for i, s in merged]
        return Outcome(
            model=CASCADE,
            served_by=f"{first},{second}",
            ranked=merged,
            scored=[(first, len(pairs)), (second, len(second_pairs))],
            total_tokens=pairs.total_tokens + second_pairs.total_tokens,
            routing=RoutingInfo(
                policy=CASCADE,
                predicted_ms=round(predicted, 3),
                budget_met=None if budget.max_latency_ms is None else predicted <= budget.max_latency_ms,
                stages=[first, second],
            ),
        )

    # -- shadow scoring ---------------------------------------------------------------

    def _maybe_shadow(
        self, served: str, pairs: EncodedPairs, logits: np.ndarray, query: str, texts: list[str]
    ) -> None:
        shadow = self.shadow
        if shadow is None or shadow.model == served:
            return
        if shadow.against is not None and shadow.against != served:
            return
        if not self.shadow_sampler():
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow_score(served, pairs, logits, query, texts)
        )
        # Keep a reference until it finishes: the response never waits for it.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow_score(
        self, served: str, pairs: EncodedPairs, logits: np.ndarray, query: str, texts: list[str]
    ) -> None:
        model = self.shadow.model
        try:
            if self.encoders[model] is not self.encoders[served]:
                # The texts the served model scored (after any `max_tokens_per_doc` cut).
                pairs = await self._encode(model, query, texts)
            shadow_logits = await self._score(model, pairs)
            # Kendall tau is O(n^2): computed off the event loop, recorded on it.
            overlap, tau = await asyncio.to_thread(agreement, logits, shadow_logits)
            self.shadow_metrics.record(overlap, tau)
        except Exception:
            logger.warning("shadow scoring on %s failed", model, exc_info=True)
            self.shadow_metrics.record_failure()

    def describe(self) -> dict:
        return {
            "models": self.board.describe(),
            "default_budget": dataclasses.asdict(self.default_budget),
            "cascade": self.cascade_defaults.model_dump(),
            "splits": self.splitter.describe(),
            "shadow": None
            if self.shadow is None
            else {**self.shadow.model_dump(), **self.shadow_metrics.summary.as_dict()},
        }

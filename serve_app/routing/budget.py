"""Budget routing: pick the model for an `auto` request from its latency budget and accuracy
floor, using live per-model measurements. Plain Python, no Ray: unit-tested with synthetic
stats, and one decision is a few float operations per enabled model.

Policy: among enabled models that meet the floor, the most accurate whose predicted latency
fits the budget; if none fits, the fastest (by prediction) that meets the floor, with
`budget_met` false. Prediction = queue wait + this request's own service time, both from
the model's measured seconds per token; a model without measurements yet uses a prior from
the catalog's V100 docs/s, scaled by how the measured models compare with their own priors
(so priors follow the hardware once anything has been measured). A measured fixed
per-call overhead (transport, batch wait) is added; unmeasured models borrow the median.
The time the request has already spent in the ingress (body, validation, tokenization)
counts against the budget too, so `predicted_ms` is the request's, not only the model's.

A model without published figures (outside the catalog, its config giving none) ranks
below every model with them and never meets an accuracy floor. Without a docs/s figure it
has no prior: until it has measured batches of its own (traffic sent to it by name, or as
the only candidate) it has no prediction, so budget routing does not pick it while any
other candidate has one; once measured, its own rate alone predicts it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from serve_app.catalog import Catalog, ModelCard
from serve_app.errors import BudgetUnsatisfiable
from serve_app.types import Budget

# The published docs/s figures come with no length; assume a typical passage pair.
PRIOR_TOKENS_PER_DOC = 128
# A measured rate counts as this many batches' worth of evidence against the calibrated
# prior, so one noisy first batch cannot make a model look slow (and so go unused) forever.
PRIOR_WEIGHT_BATCHES = 4


@dataclass(frozen=True)
class ModelLoad:
    """What the router knows about one model right now."""

    seconds_per_token: float | None  # measured service rate; None: not measured yet
    batches_measured: int = 0  # how many batches the rate rests on
    queued_tokens: int = 0  # tokens already waiting or running, over all replicas
    replicas: int = 1
    # Measured fixed cost of a call beyond its service time (transport, batch wait);
    # None: not measured yet.
    overhead_ms: float | None = None


@dataclass(frozen=True)
class BudgetChoice:
    model: str
    predicted_ms: float | None  # None: nothing to predict from (no figures, not measured)
    budget_met: bool | None  # None: no latency budget applied, or no prediction


def quality_key(card: ModelCard) -> tuple[float, float]:
    """Published quality; a figure that is missing counts as below every real one."""
    return tuple(
        -math.inf if v is None else v for v in (card.ndcg10_trec_dl19, card.mrr10_msmarco_dev)
    )


class LatencyPredictor:
    def __init__(self, catalog: Catalog, prior_tokens_per_doc: int = PRIOR_TOKENS_PER_DOC):
        self.prior_rate = {
            card.name: 1.0 / (card.v100_docs_per_s * prior_tokens_per_doc)
            for card in catalog
            if card.v100_docs_per_s
        }

    def rates(
        self, models: Sequence[str], loads: Mapping[str, ModelLoad]
    ) -> dict[str, float | None]:
        """Seconds per token for each model: measured, shrunk towards the calibrated prior
        where it has one; the calibrated prior alone if not measured yet; None for a model
        with neither (no published speed, not measured)."""
        measured = {
            m: loads[m]
            for m in models
            if m in loads and loads[m].seconds_per_token is not None and loads[m].batches_measured
        }
        ratios = [
            load.seconds_per_token / self.prior_rate[m]
            for m, load in measured.items()
            if m in self.prior_rate
        ]
        calibration = statistics.median(ratios) if ratios else 1.0
        rates: dict[str, float | None] = {}
        for m in models:
            load = measured.get(m)
            if m not in self.prior_rate:  # no published speed: its own measurements only
                rates[m] = None if load is None else load.seconds_per_token
                continue
            prior = self.prior_rate[m] * calibration
            if load is None:
                rates[m] = prior
            else:
                n = load.batches_measured
                rates[m] = (n * load.seconds_per_token + PRIOR_WEIGHT_BATCHES * prior) / (
                    n + PRIOR_WEIGHT_BATCHES
                )
        return rates

    @staticmethod
    def overheads(models: Sequence[str], loads: Mapping[str, ModelLoad]) -> dict[str, float]:
        measured = {
            m: loads[m].overhead_ms
            for m in models
            if m in loads and loads[m].overhead_ms is not None
        }
        fallback = statistics.median(measured.values()) if measured else 0.0
        return {m: measured.get(m, fallback) for m in models}

    @staticmethod
    def predict_ms(
        rate: float | None, load: ModelLoad | None, tokens: int, overhead_ms: float = 0.0
    ) -> float | None:
        if rate is None:
            return None
        queued = (load.queued_tokens / max(1, load.replicas)) if load else 0.0
        return (queued + tokens) * rate * 1000.0 + overhead_ms


class BudgetPolicy:
    def __init__(self, catalog: Catalog, enabled: Sequence[str]):
        if not enabled:
            raise ValueError("at least one model must be enabled")
        self.catalog = catalog
        # Most accurate first; the name breaks exact ties so decisions are deterministic.
        self.by_quality = sorted(
            enabled, key=lambda m: (*(-q for q in quality_key(catalog.cards[m])), m)
        )
        self.predictor = LatencyPredictor(catalog)

    def eligible(self, budget: Budget) -> list[str]:
        """Enabled models meeting the floors, most accurate first; raises
        `BudgetUnsatisfiable` when none does."""
        models = self.by_quality
        for param, floor, attr in (
            ("min_ndcg", budget.min_ndcg, "ndcg10_trec_dl19"),
            ("min_mrr", budget.min_mrr, "mrr10_msmarco_dev"),
        ):
            if floor is None:
                continue
            # A model without the figure cannot show that it meets the floor.
            figure = {m: getattr(self.catalog.cards[m], attr) for m in self.by_quality}
            passing = [m for m in models if figure[m] is not None and figure[m] >= floor]
            if not passing:
                known = [m for m in self.by_quality if figure[m] is not None]
                best = (
                    f"the best available is {max(known, key=figure.__getitem__)} with "
                    f"{max(figure[m] for m in known):g}"
                    if known
                    else "no enabled model has a published figure for it"
                )
                raise BudgetUnsatisfiable(
                    f"no enabled model reaches {param}={floor:g}; {best}", param
                )
            models = passing
        return models

    def predict(self, model: str, tokens: int, loads: Mapping[str, ModelLoad]) -> float | None:
        """The model call alone: queue wait, service and per-call overhead; None when the
        model has neither a published speed nor measurements."""
        rate = self.predictor.rates(self.by_quality, loads)[model]
        overhead = self.predictor.overheads(self.by_quality, loads)[model]
        return self.predictor.predict_ms(rate, loads.get(model), tokens, overhead)

    def choose(
        self,
        budget: Budget,
        tokens: int,
        loads: Mapping[str, ModelLoad],
        spent_ms: float = 0.0,
        exclude: Collection[str] = (),
    ) -> BudgetChoice:
        """`spent_ms`: what the request has already used of its budget before this call.
        `exclude`: eligible models that cannot take a request now (full queues); ignored
        if it would leave none."""
        candidates = [m for m in self.eligible(budget) if m not in exclude] or self.eligible(budget)
        rates = self.predictor.rates(self.by_quality, loads)
        overheads = self.predictor.overheads(self.by_quality, loads)
        predicted: dict[str, float | None] = {}
        for m in candidates:
            own = self.predictor.predict_ms(rates[m], loads.get(m), tokens, overheads[m])
            predicted[m] = None if own is None else spent_ms + own
        if budget.max_latency_ms is None:
            best = candidates[0]
            return BudgetChoice(best, predicted[best], None)
        known = [m for m in candidates if predicted[m] is not None]
        for m in known:  # most accurate first
            if predicted[m] <= budget.max_latency_ms:
                return BudgetChoice(m, predicted[m], True)
        if not known:  # only models nothing predicts: the most accurate of them, unjudged
            return BudgetChoice(candidates[0], None, None)
        # Nothing fits: the fastest; among equally fast, the more accurate (earlier).
        fastest = min(known, key=predicted.__getitem__)
        return BudgetChoice(fastest, predicted[fastest], False)

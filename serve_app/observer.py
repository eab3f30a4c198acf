"""What the request path reports as it goes: one interface for every layer's measurements.
`serve_app/runtime/metrics.py` exports them as Prometheus series through Ray; tests and
tools use `NullObserver`. Durations are seconds; phases follow TEI's `te_*_duration`
family: `rerank_<phase>_duration_seconds`.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def request_done(
        self, route: str, model: str | None, status: int, seconds: float, error_type: str | None
    ) -> None:
        """One HTTP request answered; `error_type` is the error body's `type` if it failed."""

    def tokenized(self, model: str, seconds: float) -> None:
        """One request's pairs encoded for `model`."""

    def model_called(self, model: str, seconds: float) -> None:
        """One call to a model deployment answered: transport, queue, batching, forward."""

    def scored(self, model: str, documents: int, tokens: int) -> None:
        """One successful request's billed documents and pair tokens."""

    def shadow_compared(
        self,
        primary: str,
        shadow: str,
        overlap: float,
        mean_overlap: float,
        mean_tau: float | None,
    ) -> None:
        """A shadow score compared with the served one (running means since start)."""

    def shadow_failed(self, primary: str, shadow: str) -> None: ...


class NullObserver:
    """Measures nothing."""

    def request_done(self, route, model, status, seconds, error_type) -> None:
        pass

    def tokenized(self, model, seconds) -> None:
        pass

    def model_called(self, model, seconds) -> None:
        pass

    def scored(self, model, documents, tokens) -> None:
        pass

    def shadow_compared(self, primary, shadow, overlap, mean_overlap, mean_tau) -> None:
        pass

    def shadow_failed(self, primary, shadow) -> None:
        pass

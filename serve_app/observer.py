"""What the request path reports as it goes: one interface for every layer's measurements.
`serve_app/runtime/metrics.py` exports them as Prometheus series through Ray; tests and
tools use `NullObserver`. Durations are seconds; phases follow TEI's `te_*_duration`
family: `rerank_<phase>_duration_seconds`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol


@dataclass
class AccessRecord:
    """One answered HTTP request: ids, sizes, status and timing, never a key or a text."""

    request_id: str
    method: str
    path: str  # the route template, or "other": bounded label values
    status: int
    duration_s: float
    key_id: str | None
    model: str | None
    documents: int | None
    client_name: str | None
    error_type: str | None = None  # the error body's `type` when the request failed

    @property
    def failure(self) -> str | None:
        """Why it failed, for counting: the error type, else the status; None if it did not."""
        if self.status < 400:
            return None
        return self.error_type or f"http_{self.status}"

    def log_line(self) -> str:
        return json.dumps(
            {
                "event": "access",
                "request_id": self.request_id[:128],
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "duration_ms": round(self.duration_s * 1000, 3),
                "key_id": self.key_id,
                "model": self.model,
                "documents": self.documents,
                "client_name": self.client_name,
                "error_type": self.failure,
            },
            separators=(",", ":"),
        )


class Observer(Protocol):
    def request_done(self, record: AccessRecord) -> None:
        """One HTTP request answered."""

    def tokenized(self, model: str, seconds: float) -> None:
        """One request's pairs encoded for `model`."""

    def model_called(self, model: str, seconds: float) -> None:
        """One call to a model deployment answered: transport, queue, batching, forward."""

    def scored(self, model: str, documents: int, tokens: int) -> None:
        """One successful request's billed documents and pair tokens."""

    def shadow_compared(self, primary: str, shadow: str, overlap: float, tau: float | None) -> None:
        """A shadow score compared with the served one: overlap@10 and Kendall tau-b."""

    def shadow_failed(self, primary: str, shadow: str) -> None: ...


class NullObserver:
    """Measures nothing."""

    def request_done(self, record) -> None:
        pass

    def tokenized(self, model, seconds) -> None:
        pass

    def model_called(self, model, seconds) -> None:
        pass

    def scored(self, model, documents, tokens) -> None:
        pass

    def shadow_compared(self, primary, shadow, overlap, tau) -> None:
        pass

    def shadow_failed(self, primary, shadow) -> None:
        pass

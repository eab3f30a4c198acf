"""Which model serves a request: a plain-Python policy, no Ray, unit-tested in milliseconds.

The ingress asks `route()`; the Ray layer only maps the chosen canonical name to a handle.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.catalog import Catalog, UnknownModelError


@dataclass(frozen=True)
class RouteDecision:
    model: str  # canonical catalog name
    policy: str  # how it was chosen: "named" or "default"


class ModelRouter:
    def __init__(self, catalog: Catalog, enabled: list[str], default_model: str | None = None):
        if not enabled:
            raise ValueError("at least one model must be enabled")
        self.catalog = catalog
        self.enabled = list(enabled)
        self.default_model = default_model or self.enabled[0]

    def route(self, requested: str | None) -> RouteDecision:
        if requested is None or requested == "":
            return RouteDecision(self.default_model, "default")
        try:
            name = self.catalog.resolve(requested).name
        except UnknownModelError:
            raise UnknownModelError(requested, self.enabled) from None
        if name not in self.enabled:
            raise UnknownModelError(requested, self.enabled)
        return RouteDecision(name, "named")

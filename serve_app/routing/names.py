"""Model names: which served model a request's name or alias means. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.catalog import Catalog, UnknownModelError
from serve_app.errors import ModelNotFound


@dataclass(frozen=True)
class NamedModel:
    model: str  # canonical catalog name
    policy: str  # how it was chosen: "named" or "default"


class ModelNames:
    def __init__(self, catalog: Catalog, enabled: list[str], default_model: str | None = None):
        if not enabled:
            raise ValueError("at least one model must be enabled")
        self.catalog = catalog
        self.enabled = list(enabled)
        self.default_model = default_model or self.enabled[0]

    def resolve(self, requested: str | None, param: str = "model") -> NamedModel:
        """The served model `requested` names (any spelling), or the default for none;
        raises `ModelNotFound` naming `param`."""
        if requested is None or requested == "":
            return NamedModel(self.default_model, "default")
        try:
            name = self.catalog.resolve(requested).name
        except UnknownModelError:
            name = None
        if name not in self.enabled:
            raise ModelNotFound(
                f"model {requested!r} is not served here; available: {', '.join(self.enabled)}",
                param,
            )
        return NamedModel(name, "named")

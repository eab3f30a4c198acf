"""Assembles the Serve application from config: one `RerankModel` deployment per enabled
model, the usage ledger, and the ingress holding a handle to each.

    import_path: serve_app.builder:build_app   (with the app config as `args`)
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.ingress import RerankIngress
from serve_app.ledger import UsageLedger
from serve_app.model_deployment import RerankModel


def build_app(args: dict[str, Any]) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    models = {
        m.name: RerankModel.options(**m.deployment_options()).bind(m) for m in config.models
    }
    ledger = UsageLedger.options(**config.usage.deployment_options()).bind(config.usage)
    return RerankIngress.options(**config.ingress.deployment_options()).bind(
        config, models, ledger
    )

"""All the wiring. `build_app` turns the app config into the Serve application: one
`RerankModel` deployment per enabled model, the usage ledger, and the ingress holding a
handle to each. `build_frontend` assembles what one ingress replica runs: the model and
ledger clients, the parts `api/assembly.py` wires over them (router, service, edge
policy), the stats poller and the FastAPI app.

    import_path: serve_app.runtime.builder:build_app   (with the app config as `args`)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serve_app.api.app import create_app
from serve_app.api.assembly import assemble
from serve_app.config import AppConfig, ModelDeploymentConfig
from serve_app.model.engine import check_checkpoint, on_this_machine
from serve_app.routing.admission import serve_queue_bound
from serve_app.runtime.ingress import RerankIngress
from serve_app.runtime.ledger import LedgerClient, UsageLedger
from serve_app.runtime.metrics import RayMetrics
from serve_app.runtime.model_client import ModelClient
from serve_app.runtime.model_deployment import RerankModel
from serve_app.runtime.serve_state import StatsPoller
from serve_app.service.rerank import RerankService


def build_app(args: dict[str, Any] | AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    check_checkpoints(config)
    models = {m.name: RerankModel.options(**model_options(m)).bind(m) for m in config.models}
    ledger = UsageLedger.options(**config.usage.deployment_options()).bind(config.usage)
    return RerankIngress.options(**config.ingress.deployment_options()).bind(
        build_frontend, config, models, ledger
    )


def model_options(model: ModelDeploymentConfig) -> dict[str, Any]:
    """The model's deployment options, with Serve's own queue bound a backstop above the
    one admission enforces (`serve_queue_bound`), so admission is what decides."""
    options = model.deployment_options()
    options["max_queued_requests"] = serve_queue_bound(
        model.max_ongoing_requests, model.max_queued_requests, model.autoscaling.max_replicas
    )
    return options


def check_checkpoints(config: AppConfig) -> None:
    """Refuse the whole application, before anything deploys, when a model's checkpoint
    cannot be served (`check_checkpoint`: not loadable as a sequence classifier, or
    several labels and no `score_label`): a replica would fail the same way at start,
    and Serve would restart it a few times before giving up. Checkpoints not on this
    machine (another node's directory, a hub id not in the cache) are checked by their
    replicas at start instead; random demo checkpoints are written by this code."""
    for model in config.models:
        source = model.resolved_source()
        if model.random_init or not on_this_machine(source):
            continue
        check_checkpoint(
            model.name, source, model.score_label, model.backend, model.card().score_label
        )


@dataclass
class Frontend:
    app: Callable[..., Any]  # the ASGI app
    service: RerankService
    models: ModelClient
    poller: StatsPoller


def build_frontend(
    config: AppConfig, model_handles: Mapping[str, DeploymentHandle], ledger: DeploymentHandle
) -> Frontend:
    metrics = RayMetrics()
    models = ModelClient(
        model_handles,
        {m.name: m.short_name for m in config.models},
        config.ingress.model_calls,
        metrics,
    )
    parts = assemble(config, models, LedgerClient(ledger), metrics, proxy_sets_request_id=True)
    service = parts.service
    poller = StatsPoller(
        parts.board,
        fetch=models.stats,
        replica_counts=lambda: {
            m: s.get("RUNNING", 0) for m, s in models.replica_states_now().items()
        },
        interval_s=config.routing.stats_interval_s,
        no_replica=models.caller.mark_unavailable,
        replica_running=models.caller.mark_available,
    )

    async def background() -> None:  # the stats poller and the readiness refresh
        await asyncio.gather(poller.run(), service.readiness.run())

    app = create_app(service, parts.edge, background=background)
    return Frontend(app, service, models, poller)

"""What one ingress runs, from the app config and two ports: the tokenizers, the load
board, the router, the service and the edge policy, wired the one way production wires
them. `runtime/builder.py` calls it with the Ray clients; tests and load tools call it
with in-process models and ledger, so they exercise the same wiring without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serve_app.api.app import PUBLIC_PATHS, ROUTES, SCORING_PATHS
from serve_app.api.edge import EdgePolicy
from serve_app.config import AppConfig
from serve_app.model.tokenization import PairEncoders
from serve_app.observer import NullObserver, Observer
from serve_app.routing.loads import LoadBoard
from serve_app.routing.router import Router
from serve_app.service.auth import Authenticator
from serve_app.service.ports import Ledger, ModelBackend
from serve_app.service.rerank import RerankService


@dataclass(frozen=True)
class IngressParts:
    service: RerankService
    router: Router
    edge: EdgePolicy

    @property
    def board(self) -> LoadBoard:
        return self.router.board


def assemble(
    config: AppConfig,
    models: ModelBackend,
    ledger: Ledger,
    observer: Observer = NullObserver(),
    *,
    environ: Mapping[str, str] | None = None,
    proxy_sets_request_id: bool = False,
) -> IngressParts:
    """`environ`: where API keys given by environment are read (the process's own by
    default)."""
    catalog = config.catalog()
    encoders = PairEncoders.load(
        config.models, config.ingress.tokenizer_threads, config.chunking, observer
    )
    board = LoadBoard(config.enabled_models)
    router = Router(config, catalog, encoders, models.score, board, observer)
    service = RerankService(config, catalog, router, models, ledger, observer)
    backpressure = config.ingress.backpressure
    edge = EdgePolicy(
        authenticator=Authenticator(config.auth, environ=environ),
        max_body_bytes=config.limits.max_body_bytes,
        public_paths=PUBLIC_PATHS,
        known_paths=ROUTES | PUBLIC_PATHS,
        proxy_sets_request_id=proxy_sets_request_id,
        observer=observer,
        max_in_flight=config.ingress.admission_limit,
        overload_throttles=backpressure.status_code == 429,
        retry_after_s=backpressure.retry_after_s,
        body_timeout_s=config.limits.body_timeout_s,
        max_in_flight_per_key=config.ingress.per_key_limit,
        retry_after=lambda: router.admission.soonest_retry_after_s(config.enabled_models),
        scoring_paths=SCORING_PATHS,
        # Before the body: a place at the models (one model: on it, exactly; several: in
        # their pool, so refused here only when every free place is taken).
        reserve_scoring=lambda: router.admission.reserve(config.enabled_models),
    )
    return IngressParts(service, router, edge)

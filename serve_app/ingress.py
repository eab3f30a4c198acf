"""The HTTP ingress: parses and validates requests, asks the router which model serves
them, calls that model's deployment and shapes the response. No model code here.
"""

import asyncio
import logging
import uuid

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app import __version__
from serve_app.catalog import ORGANISATION, UnknownModelError, load_catalog
from serve_app.config import AppConfig
from serve_app.errors import APIError, error_response
from serve_app.ranking import rank
from serve_app.resilience import ModelCaller
from serve_app.router import ModelRouter
from serve_app.schemas import (
    Document,
    ErrorResponse,
    ModelEntry,
    ModelList,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Usage,
)

logger = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 5.0
_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 422, 429, 503, 504)}

app = FastAPI(
    title="Rerank API",
    version=__version__,
    description="Cross-encoder reranking (cross-encoder/ms-marco v2 family) on Ray Serve.",
)


@app.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", "request body is not valid JSON")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing":
        return error_response(400, "invalid_json", "request body must be a JSON object")
    # loc is ("body", "documents", 3, "text"): report the field path without "body".
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "missing" and param is None:
        message = "request body is required"
    return error_response(422, "invalid_request", f"{param or 'body'}: {message}", param)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)


@serve.deployment
@serve.ingress(app)
class RerankIngress:
    def __init__(self, config: AppConfig, model_handles: dict[str, DeploymentHandle]):
        self.config = config
        self.catalog = load_catalog()
        self.router = ModelRouter(self.catalog, config.enabled_models, config.default_model)
        self.models = model_handles
        self.deployment_names = {m.name: m.short_name for m in config.models}
        self.model_caller = ModelCaller(config.ingress.model_calls)

    @app.post(
        "/v1/rerank",
        response_model=RerankResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
    )
    async def rerank(self, body: RerankRequest) -> RerankResponse:
        try:
            decision = self.router.route(body.model)
        except UnknownModelError as e:
            raise APIError(
                404,
                "model_not_found",
                f"model {e.requested!r} is not served here; available: {', '.join(e.available)}",
                "model",
            ) from None
        texts = body.document_texts()
        handle = self.models[decision.model]
        # Retries once on a lost replica, sheds on a full queue, never hangs: resilience.py
        scored = await self.model_caller.call(
            decision.model, lambda: handle.score.remote(body.query, texts)
        )
        ranked = rank(scored.logits, body.top_n, body.raw_scores)
        return RerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=decision.model,
            results=[
                RerankResult(
                    index=i,
                    relevance_score=score,
                    document=Document(text=texts[i]) if body.return_documents else None,
                )
                for i, score in ranked
            ],
            usage=Usage(documents=len(texts), total_tokens=scored.total_tokens),
        )

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def list_models(self) -> ModelList:
        infos = await asyncio.gather(
            *(self._describe(name) for name in self.config.enabled_models)
        )
        replicas = self._replica_counts()
        data = []
        for name, info in zip(self.config.enabled_models, infos):
            card = self.catalog.cards[name]
            deployment = self.deployment_names[name]
            data.append(
                ModelEntry(
                    id=name,
                    owned_by=ORGANISATION,
                    deployment=deployment,
                    weights=info.get("weights"),
                    device=info.get("device"),
                    dtype=info.get("dtype"),
                    replicas=replicas.get(deployment),
                    **card.public_metadata(),
                )
            )
        return ModelList(data=data)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses=_ERRORS)
    async def readyz(self) -> JSONResponse:
        names = self.config.enabled_models
        infos = await asyncio.gather(*(self._describe(n) for n in names))
        not_ready = [n for n, info in zip(names, infos) if not info]
        if not_ready:
            return error_response(
                503, "not_ready", f"models not ready: {', '.join(not_ready)}",
                headers={"Retry-After": "1"},
            )
        return JSONResponse({"status": "ready", "models": names})

    async def _describe(self, name: str) -> dict:
        try:
            return await asyncio.wait_for(
                self.models[name].describe.remote(), timeout=READY_TIMEOUT_S
            )
        except Exception:
            return {}

    def _replica_counts(self) -> dict[str, int]:
        """Running replicas per deployment, from the Serve controller; empty if unknown."""
        try:
            app_name = serve.get_replica_context().app_name
            status = serve.status().applications[app_name]
        except Exception:
            return {}
        return {
            name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()
        }

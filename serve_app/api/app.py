"""The HTTP API as a FastAPI app: parse each shape, call the service, shape the answer.
Nothing else happens here. `create_app` takes the service and the edge policy ready-made
(`serve_app/runtime/builder.py` builds them), so tests run the whole API in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app import __version__
from serve_app.api.edge import EdgeMiddleware, EdgePolicy
from serve_app.api.errors import (
    DOCUMENTED_STATUSES,
    FRAMEWORK_ERROR_TYPES,
    FRAMEWORK_OTHER_TYPE,
    error_response,
    error_type,
    http_error,
)
from serve_app.api.schemas import (
    CohereV2RerankRequest,
    ErrorResponse,
    ModelEntry,
    ModelList,
    RerankRequest,
    RerankResponse,
    TEIRerankRequest,
    TEIRerankResult,
    UsageResponse,
    rerank_response,
    tei_response,
    usage_query,
)
from serve_app.catalog import ORGANISATION
from serve_app.config import QuotaSettings
from serve_app.errors import InvalidJSON, InvalidRequest, RerankError
from serve_app.service.auth import ANONYMOUS, Principal
from serve_app.service.rerank import RerankService
from serve_app.service.traffic import RecentTraffic, TeeObserver
from serve_app.types import RerankResult

RERANK_ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/rerank"})
# The routes that call a model: the edge refuses them before reading the body when no
# model can take a request.
SCORING_PATHS = RERANK_ROUTES
ROUTES = RERANK_ROUTES | {"/v1/models", "/v1/usage", "/v1/routing", "/v1/traffic"}
# The playground and status pages (`serve_app/api/pages/`): static files, path -> (file,
# media type). Public: they hold no secrets and must load before a key is typed; every API
# call they make carries the key and goes through the normal auth, quotas and billing.
PAGES = {
    "/": ("playground.html", "text/html; charset=utf-8"),
    "/status": ("status.html", "text/html; charset=utf-8"),
    "/pages/pages.css": ("pages.css", "text/css; charset=utf-8"),
    "/pages/api.js": ("api.js", "text/javascript; charset=utf-8"),
    "/pages/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/pages/status.js": ("status.js", "text/javascript; charset=utf-8"),
}
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", *PAGES}
)
# The pages may talk to this origin only, run only their own files, and never be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# TEI's body calls the documents `texts`: errors name the field as the client spelt it.
TEI_FIELDS = {"documents": "texts"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in DOCUMENTED_STATUSES
}
# Documents the Bearer scheme in OpenAPI; the key is checked by `EdgeMiddleware`.
_bearer = Security(HTTPBearer(auto_error=False, description="An API key from the operator."))
_RERANK_ROUTE: dict[str, Any] = dict(
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[_bearer],
)


def create_app(
    service: RerankService,
    edge: EdgePolicy,
    background: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """`background`: started with the app and cancelled when it stops (the runtime's
    stats poller)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        task = asyncio.get_running_loop().create_task(background()) if background else None
        yield
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="Rerank API",
        version=__version__,
        description="Cross-encoder reranking (cross-encoder/ms-marco v2 family) on Ray Serve.",
        lifespan=lifespan,
    )
    # The status page's totals and recent latencies: every request the edge answers.
    traffic = RecentTraffic(RERANK_ROUTES)
    edge = dataclasses.replace(edge, observer=TeeObserver(edge.observer, traffic))
    app.add_middleware(EdgeMiddleware, policy=edge)
    _add_error_handlers(app)
    _add_pages(app)

    async def rerank(
        request: Request, response: Response, body: RerankRequest | TEIRerankRequest
    ) -> tuple[list[str], RerankResult]:
        """The documents as sent, and the service's answer."""
        internal = body.to_internal()
        request.state.documents = len(internal.texts)
        result = await service.rerank(
            internal,
            _caller(request),
            getattr(request.state, "arrived", None),
            getattr(request.state, "reservation", None),
        )
        request.state.model = result.model
        response.headers["x-rerank-model"] = result.served_by
        return internal.texts, result

    @app.post("/v1/rerank", **_RERANK_ROUTE)
    async def rerank_v1(
        body: RerankRequest, request: Request, response: Response
    ) -> RerankResponse:
        """Rerank `documents` by relevance to `query` (Cohere v1 and Jina field names).
        `"model": "auto"` with a budget, or `"cascade"`, lets the server choose."""
        texts, result = await rerank(request, response, body)
        return rerank_response(result, texts, body.return_documents)

    @app.post("/v2/rerank", **_RERANK_ROUTE)
    async def rerank_v2(
        body: CohereV2RerankRequest, request: Request, response: Response
    ) -> RerankResponse:
        """Cohere v2 rerank: documents are returned only with `return_documents: true`."""
        texts, result = await rerank(request, response, body)
        return rerank_response(result, texts, body.return_documents)

    @app.post(
        "/rerank",
        response_model=list[TEIRerankResult],
        response_model_exclude_none=True,
        responses=_ERRORS,
        dependencies=[_bearer],
    )
    async def rerank_tei(
        body: TEIRerankRequest, request: Request, response: Response
    ) -> list[TEIRerankResult]:
        """Hugging Face text-embeddings-inference rerank: a bare array, best first."""
        request.state.field_renames = TEI_FIELDS
        texts, result = await rerank(request, response, body)
        return tei_response(result, texts, body.return_text)

    @app.get(
        "/v1/usage",
        response_model=UsageResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        dependencies=[_bearer],
    )
    async def usage(
        request: Request,
        start: str | None = Query(None, alias="from", description="First day (YYYY-MM-DD, UTC)."),
        end: str | None = Query(None, alias="to", description="Last day, inclusive."),
        group_by: str | None = Query(None, description="Also split by `day`, `month` or `model`."),
    ) -> UsageResponse:
        """The calling key's stored usage: overall, per model and, with `group_by`, per day,
        month or model; `from`/`to` limit it to those days."""
        query = usage_query(start, end, group_by)
        return UsageResponse.model_validate(await service.usage(_caller(request), query))

    @app.get("/v1/routing", dependencies=[_bearer])
    async def routing_state() -> dict:
        """What budget routing sees now: per-model measured rate, queue and stats age;
        default budget, cascade, splits and shadow agreement so far."""
        return service.routing_state()

    @app.get("/v1/traffic", dependencies=[_bearer])
    async def recent_traffic() -> dict:
        """What this ingress replica has answered: rerank requests and errors (by type)
        since it started, and per model the latency p50/p99 (ms, at the ingress) and
        documents per second over the last `window_s`. With several ingress replicas,
        each reports its own share."""
        return traffic.snapshot(service.config.enabled_models)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS, dependencies=[_bearer])
    async def list_models() -> ModelList:
        """The models served, with catalog metadata and running replicas."""
        statuses = await service.models_status()
        return ModelList(
            data=[
                ModelEntry.of(s, s.name.split("/", 1)[0] if "/" in s.name else ORGANISATION)
                for s in statuses
            ]
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive; needs no key."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """Every model can serve (503 otherwise); needs no key."""
        return JSONResponse({"status": "ready", "models": await service.check_ready()})

    return app


def _add_pages(app: FastAPI) -> None:
    folder = resources.files("serve_app.api") / "pages"
    for path, (name, media_type) in PAGES.items():
        app.add_api_route(
            path,
            _static((folder / name).read_bytes(), media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def _static(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def page() -> Response:
        return Response(content, media_type=media_type, headers=PAGE_HEADERS)

    return page


def _caller(request: Request) -> Principal:
    # Set by EdgeMiddleware on every non-public path; anonymous only when auth is off.
    return getattr(request.state, "principal", None) or Principal(ANONYMOUS, QuotaSettings())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RerankError)
    async def _domain_error(request: Request, exc: RerankError) -> JSONResponse:
        request.state.error_type = error_type(exc)
        # A route whose shape spells fields differently (TEI) says so before it fails.
        return http_error(exc, getattr(request.state, "field_renames", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _domain_error(request, _wire_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's only 400 is a body json could not read at all (not UTF-8, a number past
        # int's digit limit, nesting past the recursion limit): still "not valid JSON".
        kind = FRAMEWORK_ERROR_TYPES.get(exc.status_code, FRAMEWORK_OTHER_TYPE)
        request.state.error_type = kind
        return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)


def _wire_error(exc: RequestValidationError) -> RerankError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidJSON("request body is not valid JSON")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing":
        return InvalidJSON("request body must be a JSON object")
    # loc is ("body", "documents", 3, "text"): report the field path without "body".
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg", "invalid request")
    if param is None:
        return InvalidRequest(
            f"body: {'request body is required' if first.get('type') == 'missing' else message}"
        )
    return InvalidRequest(message, param)

"""The HTTP ingress: parses and validates requests, asks the router which model serves
them, calls that model's deployment and shapes the response. No model code here.

In front of every route, `EdgeMiddleware` (http_edge.py) assigns request ids, enforces
the body limit and API keys and writes access logs. Quotas and billing go to the usage
ledger (ledger.py), one replica shared by every ingress replica.
"""

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_app import __version__
from serve_app.auth import ANONYMOUS, Authenticator, Principal
from serve_app.catalog import ORGANISATION, load_catalog
from serve_app.compat import (
    CohereV2RerankRequest,
    Reranked,
    TEIRerankRequest,
    TEIRerankResult,
    as_rerank_request,
    call_from_rerank_request,
    call_from_tei,
    rerank_response,
    tei_response,
)
from serve_app.config import AppConfig, QuotaSettings
from serve_app.dispatch import Dispatcher
from serve_app.errors import APIError, error_response
from serve_app.http_edge import AccessRecord, EdgeMiddleware, EdgePolicy, access_logger
from serve_app.limits import check_limits
from serve_app.metrics import RerankMetrics
from serve_app.quotas import never_admitted
from serve_app.resilience import ModelCaller
from serve_app.stats_collector import LoadBoard, StatsPoller, replica_states
from serve_app.tokenization import EncodedPairs, PairEncoder
from serve_app.schemas import (
    ErrorResponse,
    ModelEntry,
    ModelList,
    RerankRequest,
    RerankResponse,
    UsageResponse,
)
from serve_app.truncation import DocumentTruncator
from serve_app.usage import RecordBatcher, UsageRecord

logger = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 5.0
LEDGER_TIMEOUT_S = 10.0
_ERRORS = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 404, 413, 422, 429, 500, 503, 504)
}
_HEALTH_ERRORS = {status: {"model": ErrorResponse} for status in (503,)}
ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/v1/usage",
                    "/v1/routing"})
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
# Documents the Bearer scheme in OpenAPI; the key is checked by `EdgeMiddleware`.
_bearer = Security(HTTPBearer(auto_error=False, description="An API key from the operator."))
_RERANK_ROUTE = dict(
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    dependencies=[_bearer],
)

app = FastAPI(
    title="Rerank API",
    version=__version__,
    description="Cross-encoder reranking (cross-encoder/ms-marco v2 family) on Ray Serve.",
)


def _edge_policy() -> EdgePolicy:
    return serve.get_replica_context().servable_object.edge_policy


app.add_middleware(EdgeMiddleware, resolve_policy=_edge_policy)


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
    # FastAPI's only 400 is a body json could not read at all (not UTF-8, a number past
    # int's digit limit, nesting past the recursion limit): still "not valid JSON".
    kind = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)


def load_encoders(config: AppConfig) -> dict[str, PairEncoder]:
    """One pair encoder per distinct tokenizer setup, shared by the models that use it."""
    distinct: dict[str, PairEncoder] = {}
    encoders = {}
    for model in config.models:
        source = model.ensure_source()
        key = PairEncoder.fingerprint(source, model.max_query_tokens)
        if key not in distinct:
            distinct[key] = PairEncoder.from_pretrained(source, model.max_query_tokens)
        encoders[model.name] = distinct[key]
    return encoders


def _principal(request: Request) -> Principal:
    # Set by EdgeMiddleware on every non-public path; anonymous only when auth is off.
    return getattr(request.state, "principal", None) or Principal(ANONYMOUS, QuotaSettings())


def _serve_details() -> dict:
    """The Serve controller's instance details: a dict of the public `ServeInstanceDetails`
    schema. `serve.status()` builds pydantic objects from the same dict and cloudpickles
    every deployment's request-router class on the way, holding the GIL and so stalling
    this replica's event loop for tens of milliseconds a call. The accessor is private;
    tests/test_serve_app.py reads replica counts through it."""
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


# Helpers used by the routes must be defined above this point: `serve.ingress` freezes a
# copy of the app, with its endpoints' globals, when the class is decorated.
@serve.deployment
@serve.ingress(app)
class RerankIngress:
    def __init__(
        self,
        config: AppConfig,
        model_handles: dict[str, DeploymentHandle],
        ledger: DeploymentHandle,
    ):
        self.config = config
        self.catalog = load_catalog()
        self.models = model_handles
        self.deployment_names = {m.name: m.short_name for m in config.models}
        self.encoders = load_encoders(config)
        # The fast tokenizer releases the GIL: encoding in threads keeps the event loop free
        # and uses every core the replica has. Its own thread pool stays off: each busy
        # ingress process would start one spinning thread per core of the host, against
        # the other ingress replicas; instead requests are sliced over these threads.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self._tokenize_pool = ThreadPoolExecutor(
            config.ingress.tokenizer_threads, thread_name_prefix="tok"
        )
        self.model_caller = ModelCaller(config.ingress.model_calls)
        self.load_board = LoadBoard(config.enabled_models)
        self.stats_poller = StatsPoller(
            self.load_board,
            fetch=lambda name: self.models[name].stats.remote(),
            replica_counts=self._model_replica_counts,
            interval_s=config.routing.stats_interval_s,
            # A model whose node died with no call in flight on it gives its waiting calls
            # no error: without this they would wait out model_calls.timeout_s.
            no_replica=self.model_caller.mark_unavailable,
        )
        self.dispatcher = Dispatcher(
            config, self.catalog, self.encoders, self._tokenize_pool, self._score,
            self.load_board,
        )
        self.ledger = ledger
        self.recorder = RecordBatcher(lambda records: self._ledger_call("record", records))
        self.metrics = RerankMetrics()
        self.truncator = DocumentTruncator()
        self.edge_policy = EdgePolicy(
            authenticator=Authenticator(config.auth),
            max_body_bytes=config.limits.max_body_bytes,
            public_paths=PUBLIC_PATHS,
            known_paths=ROUTES | PUBLIC_PATHS,
            proxy_sets_request_id=True,
            observe=self._observe_access,
            max_in_flight=config.ingress.admission_limit,
            overload_status=config.ingress.backpressure.status_code,
            retry_after_s=config.ingress.backpressure.retry_after_s,
        )

    def _observe_access(self, record: AccessRecord) -> None:
        access_logger.info(record.log_line())
        self.metrics.observe_access(record)

    @app.post("/v1/rerank", **_RERANK_ROUTE)
    async def rerank(
        self, body: RerankRequest, request: Request, response: Response
    ) -> RerankResponse:
        """Rerank `documents` by relevance to `query` (Cohere v1 and Jina field names).
        `"model": "auto"` with a budget, or `"cascade"`, lets the server choose."""
        result = await self._rerank(request, response, body, "documents")
        return rerank_response(result, body.return_documents)

    @app.post("/v2/rerank", **_RERANK_ROUTE)
    async def rerank_v2(
        self, body: CohereV2RerankRequest, request: Request, response: Response
    ) -> RerankResponse:
        """Cohere v2 rerank: documents are returned only with `return_documents: true`."""
        result = await self._rerank(request, response, body, "documents")
        return rerank_response(result, body.return_documents)

    @app.post(
        "/rerank",
        response_model=list[TEIRerankResult],
        response_model_exclude_none=True,
        responses=_ERRORS,
        dependencies=[_bearer],
    )
    async def rerank_tei(
        self, body: TEIRerankRequest, request: Request, response: Response
    ) -> list[TEIRerankResult]:
        """Hugging Face text-embeddings-inference rerank: a bare array, best first."""
        result = await self._rerank(request, response, body, "texts")
        return tei_response(result, body.return_text)

    @app.get("/v1/usage", response_model=UsageResponse, responses=_ERRORS, dependencies=[_bearer])
    async def usage(self, request: Request) -> UsageResponse:
        """The calling key's totals since the ledger's journal began."""
        totals = await self._ledger_call("usage", _principal(request).key_id)
        return UsageResponse.model_validate(totals)

    async def _rerank(
        self,
        request: Request,
        response: Response,
        body: RerankRequest | TEIRerankRequest,
        documents_field: str,
    ) -> Reranked:
        self.stats_poller.ensure_started()
        call = call_from_tei(body) if isinstance(body, TEIRerankRequest) else (
            call_from_rerank_request(body)
        )
        check_limits(self.config.limits, call, documents_field)
        request.state.documents = len(call.texts)
        principal = _principal(request)
        await self._admit(principal, len(call.texts), documents_field)

        texts = call.texts
        if call.max_tokens_per_doc is not None:
            texts = await asyncio.to_thread(self.truncator.truncate, texts, call.max_tokens_per_doc)
        started = time.perf_counter()
        outcome = await self.dispatcher.rerank(
            as_rerank_request(body), texts, getattr(request.state, "arrived", None)
        )
        model_seconds = time.perf_counter() - started
        request.state.model = outcome.model
        response.headers["x-rerank-model"] = outcome.served_by

        result = Reranked(
            id=f"rerank-{uuid.uuid4().hex}",
            model=outcome.model,
            ranked=outcome.ranked,
            texts=call.texts,
            documents=outcome.documents,
            total_tokens=outcome.total_tokens,
            routing=outcome.routing,
        )
        # Billed before answering: a request the ledger has not counted is not served.
        await self.recorder.record(
            UsageRecord(
                request_id=result.id,
                key_id=principal.key_id,
                model=outcome.model,
                documents=outcome.documents,
                tokens=outcome.total_tokens,
                charges=tuple((n, self.config.pricing.price(m)) for m, n in outcome.scored),
            ),
        )
        self.metrics.observe_scored(
            outcome.model, outcome.documents, outcome.total_tokens, model_seconds
        )
        return result

    async def _score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        handle = self.models[model]
        # Retries once on a lost replica, sheds on a full queue, never hangs: resilience.py
        return await self.model_caller.call(model, lambda: handle.score.remote(pairs))

    @app.get("/v1/routing", dependencies=[_bearer])
    async def routing_state(self) -> dict:
        """What budget routing sees now: per-model measured rate, queue and stats age;
        default budget, cascade, splits and shadow agreement so far."""
        self.stats_poller.ensure_started()
        return self.dispatcher.describe()

    async def _admit(self, principal: Principal, documents: int, documents_field: str) -> None:
        quota = principal.quota
        if quota.requests_per_second is None and quota.documents_per_minute is None:
            return
        # Not a 429: no Retry-After would ever let it through.
        why_never = never_admitted(quota, documents)
        if why_never is not None:
            raise APIError(422, "invalid_request", f"{documents_field}: {why_never}",
                           documents_field)
        admission = await self._ledger_call("admit", principal.key_id, quota, documents)
        if not admission.allowed:
            raise APIError(
                429, "rate_limited", admission.reason,
                headers={"Retry-After": admission.retry_after_header},
            )

    async def _ledger_call(self, method: str, *args):
        """Call the usage ledger, retrying while it restarts; records are idempotent."""
        deadline = time.monotonic() + LEDGER_TIMEOUT_S
        while True:
            try:
                return await getattr(self.ledger, method).remote(*args)
            except Exception as e:
                if time.monotonic() >= deadline:
                    logger.error("usage ledger unavailable for %s: %s", method, type(e).__name__)
                    raise APIError(
                        503, "ledger_unavailable", "usage accounting is unavailable; retry",
                        headers={"Retry-After": "1"},
                    ) from None
                await asyncio.sleep(0.2)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS, dependencies=[_bearer])
    async def list_models(self) -> ModelList:
        """The models served, with catalog metadata and running replicas."""
        infos = await asyncio.gather(
            *(self._describe(name) for name in self.config.enabled_models)
        )
        states = await asyncio.to_thread(self._replica_states)
        data = []
        for name, info in zip(self.config.enabled_models, infos):
            card = self.catalog.cards[name]
            deployment = self.deployment_names[name]
            state = states.get(deployment)
            data.append(
                ModelEntry(
                    id=name,
                    owned_by=ORGANISATION,
                    deployment=deployment,
                    weights=info.get("weights"),
                    device=info.get("device"),
                    dtype=info.get("dtype"),
                    replicas=state.get("RUNNING", 0) if state is not None else None,
                    replicas_starting=state.get("STARTING", 0) if state is not None else None,
                    **card.public_metadata(),
                )
            )
        return ModelList(data=data)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Alive; needs no key."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_HEALTH_ERRORS)
    async def readyz(self) -> JSONResponse:
        """Every model can serve (503 otherwise); needs no key."""
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

    def _model_replica_counts(self) -> dict[str, int]:
        """Running replicas per model."""
        states = self._replica_states()
        return {
            m: states[d].get("RUNNING", 0) for m, d in self.deployment_names.items() if d in states
        }

    def _replica_states(self) -> dict[str, dict[str, int]]:
        """Replicas per state per deployment, from the Serve controller; empty if unknown.
        Blocking: call it in a thread."""
        try:
            return replica_states(_serve_details(), serve.get_replica_context().app_name)
        except Exception:
            return {}

"""Every overload refusal, through the whole API in process (no Ray): where it is decided,
that nothing is tokenized or truncated for it, and that each one has the JSON error shape,
`Retry-After` and `x-request-id`. The models' queues are filled through the load board's
own bookkeeping (`LoadBoard.dispatched`), as the router fills them for real calls."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import httpx
import numpy as np
import pytest

from serve_app import errors
from serve_app.api.app import PUBLIC_PATHS, ROUTES, SCORING_PATHS, create_app
from serve_app.api.edge import EdgePolicy
from serve_app.catalog import load_catalog
from serve_app.config import AppConfig, UsageConfig
from serve_app.model.stats import ModelStatsSnapshot
from serve_app.model.tokenization import EncodedPairs, PairEncoders
from serve_app.observer import NullObserver
from serve_app.routing.loads import LoadBoard
from serve_app.routing.router import Router
from serve_app.service.auth import Authenticator, hash_key
from serve_app.service.rerank import RerankService
from serve_app.service.usage import LocalLedger
from tests.conftest import checkpoint_path, usage_db_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
KEY = "rr-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOW = {"Authorization": "Bearer slow-key"}
BODY = {"query": "q", "documents": ["a", "bb bb", "ccc ccc ccc"], "max_tokens_per_doc": 2}


class TokenizationCounter(NullObserver):
    """The encoders report each time they tokenize (pairs reused between models with one
    vocabulary are not tokenized again, and not reported)."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenized(self, model: str, seconds: float) -> None:
        self.calls += 1


class Models:
    def __init__(self, models: list[str]):
        self.models = models
        self.gate: asyncio.Event | None = None  # set: score waits on it
        self.failure: Exception | None = None

    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return pairs.doc_lengths.astype(np.float32)

    async def describe(self, model: str) -> dict:
        return {"weights": "random"}

    async def replica_states(self) -> dict[str, dict[str, int]]:
        return {m: {"RUNNING": 1} for m in self.models}


class Parts:
    def __init__(self, root, max_in_flight: int | None = None):
        self.config = AppConfig.model_validate(
            {
                "models": [
                    {
                        "name": TINY,
                        "source": checkpoint_path(root, TINY),
                        "max_ongoing_requests": 1,
                        "max_queued_requests": 2,
                        "backpressure": {"status_code": 503, "retry_after_s": 4},
                    },
                    {
                        "name": L12,
                        "source": checkpoint_path(root, L12),
                        "max_ongoing_requests": 1,
                        "max_queued_requests": 1,
                        "backpressure": {"status_code": 429, "retry_after_s": 6},
                    },
                ],
                "auth": {
                    "keys": [
                        {"id": "alice", "sha256": hash_key(KEY)},
                        {
                            "id": "slow",
                            "sha256": hash_key("slow-key"),
                            "quota": {"requests_per_second": 1},
                        },
                    ]
                },
            }
        )
        config = self.config
        self.models = Models(config.enabled_models)
        self.tokenizations = TokenizationCounter()
        encoders = PairEncoders.load(config.models, threads=1, observer=self.tokenizations)
        self.board = LoadBoard(config.enabled_models)
        router = Router(config, load_catalog(), encoders, self.models.score, self.board)
        self.router = router
        self.service = RerankService(
            config,
            load_catalog(),
            router,
            self.models,
            LocalLedger(UsageConfig(sqlite_path=usage_db_path(root))),
        )
        edge = EdgePolicy(
            authenticator=Authenticator(config.auth, environ={}),
            max_body_bytes=config.limits.max_body_bytes,
            public_paths=PUBLIC_PATHS,
            known_paths=ROUTES | PUBLIC_PATHS,
            max_in_flight=max_in_flight,
            retry_after=lambda: router.admission.soonest_retry_after_s(config.enabled_models),
            scoring_paths=SCORING_PATHS,
            admit_scoring=lambda: router.admission.check(config.enabled_models),
        )
        self.app = create_app(self.service, edge)

    def fill(self, stack: ExitStack, model: str, calls: int, tokens: int = 1000) -> None:
        for _ in range(calls):
            stack.enter_context(self.board.dispatched(model, tokens))

    def measured(self, model: str, seconds_per_token: float) -> None:
        """A replica's report, as the stats poller feeds it in."""
        snapshot = ModelStatsSnapshot(seconds_per_token, 0, 0, batches_measured=8)
        self.board.update(model, snapshot, inflight_when_sent=0)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")


def assert_refusal(response: httpx.Response, status: int, kind: str, retry_after: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == kind and error["message"] and set(error) == {"type", "message", "param"}
    assert response.headers["retry-after"] == retry_after
    assert response.headers["x-request-id"] == "rid-1"


@pytest.mark.anyio
async def test_every_model_full_is_refused_at_the_edge_before_the_body_is_read(checkpoint_root):
    parts = Parts(checkpoint_root)
    parts.measured(TINY, 1e-3)  # 3 calls x 1000 tokens: 3 s to drain
    read = 0

    async def body_chunks():
        nonlocal read
        read += 1
        yield b'{"query": "q", "documents": ["a"]}'

    with ExitStack() as held:
        parts.fill(held, TINY, 3)  # 1 ongoing + 2 queued
        parts.fill(held, L12, 2)  # 1 ongoing + 1 queued; no rate yet: its constant, 6 s
        async with parts.client() as c:
            refused = await c.post(
                "/v1/rerank", content=body_chunks(), headers={**AUTH, "x-request-id": "rid-1"}
            )
    assert_refusal(refused, 503, "overloaded", "3")  # the sooner to drain: TINY's 3 s
    assert read == 0  # the body was never pulled from the client
    assert parts.tokenizations.calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
async def test_a_full_named_model_is_refused_before_quota_truncation_and_tokenization(
    checkpoint_root, path
):
    parts = Parts(checkpoint_root)
    parts.measured(L12, 2.5e-3)  # 2 calls x 1000 tokens: 5 s
    body = {**BODY, "model": L12}
    if path == "/rerank":  # TEI: `texts`, and no per-document cut
        body = {"query": "q", "texts": BODY["documents"], "model": L12}
    with ExitStack() as held:
        parts.fill(held, L12, 2)
        async with parts.client() as c:
            refused = await c.post(path, json=body, headers={**SLOW, "x-request-id": "rid-1"})
            # TINY still has room: the edge let it through; it is served.
            served = await c.post(path, json={**body, "model": TINY}, headers=AUTH)
    # L12's deployment answers backpressure with 429.
    assert_refusal(refused, 429, "overloaded", "5")
    assert served.status_code == 200
    # Only the served request was tokenized (and cut); the refused one did not use the
    # slow key's one request per second either.
    assert parts.tokenizations.calls == 1
    async with parts.client() as c:
        assert (await c.post(path, json=body, headers=SLOW)).status_code == 200


@pytest.mark.anyio
async def test_auto_is_refused_only_when_every_eligible_model_is_full(checkpoint_root):
    parts = Parts(checkpoint_root)
    auto = {**BODY, "model": "auto", "max_latency_ms": 1e9}
    with ExitStack() as held:
        parts.fill(held, L12, 2)
        async with parts.client() as c:
            routed = await c.post("/v1/rerank", json=auto, headers=AUTH)
        assert routed.status_code == 200 and routed.headers["x-rerank-model"] == TINY
        # Only models above the floor are eligible: L12 alone, which is full.
        async with parts.client() as c:
            refused = await c.post(
                "/v1/rerank",
                json={**auto, "min_ndcg": 0.74},
                headers={**AUTH, "x-request-id": "rid-1"},
            )
    assert_refusal(refused, 429, "overloaded", "6")  # L12 unmeasured: its configured 6 s
    assert parts.tokenizations.calls == 1


@pytest.mark.anyio
async def test_the_in_flight_limit_refuses_with_the_models_drain_time(checkpoint_root):
    parts = Parts(checkpoint_root, max_in_flight=1)
    parts.measured(TINY, 1e-3)
    parts.models.gate = asyncio.Event()
    async with parts.client() as c:
        held = asyncio.create_task(c.post("/v1/rerank", json={**BODY, "model": TINY}, headers=AUTH))
        deadline = asyncio.get_running_loop().time() + 10
        while parts.board.requests_in_flight(TINY) == 0:  # the first request is at the model
            assert asyncio.get_running_loop().time() < deadline, "first request never dispatched"
            await asyncio.sleep(0.01)
        refused = await c.post("/v1/rerank", json=BODY, headers={**AUTH, "x-request-id": "rid-1"})
        parts.models.gate.set()
        assert (await held).status_code == 200
    # TINY's queued work (the held call's tokens at 1 ms each) rounds up to a second.
    assert_refusal(refused, 503, "overloaded", "1")
    assert parts.tokenizations.calls == 1


@pytest.mark.anyio
async def test_serve_refusing_after_admission_still_gets_the_drain_time(checkpoint_root):
    """Another ingress's calls can fill a model's replicas unseen by this one: Serve's own
    backpressure then refuses the call, and the wait is still the drain time."""
    parts = Parts(checkpoint_root)
    parts.measured(TINY, 1e-3)
    parts.models.failure = errors.Overloaded("full", retry_after_s=4)
    with ExitStack() as held:
        parts.fill(held, TINY, 2)  # 2 s of queued work, one call short of the bound
        async with parts.client() as c:
            refused = await c.post(
                "/v1/rerank",
                json={**BODY, "model": TINY},
                headers={**AUTH, "x-request-id": "rid-1"},
            )
    assert_refusal(refused, 503, "overloaded", "2")


@pytest.mark.anyio
async def test_quota_is_refused_before_truncation_and_tokenization(checkpoint_root):
    parts = Parts(checkpoint_root)
    async with parts.client() as c:
        first = await c.post("/v1/rerank", json=BODY, headers=SLOW)
        refused = await c.post("/v1/rerank", json=BODY, headers={**SLOW, "x-request-id": "rid-1"})
    assert first.status_code == 200
    assert_refusal(refused, 429, "rate_limited", "1")
    assert parts.tokenizations.calls == 1

"""Every overload refusal, through the whole API in process (no Ray): where it is decided,
that nothing is tokenized or truncated for it, and that each one has the JSON error shape,
`Retry-After` and `x-request-id`. The models' queues are filled through the load board's
own bookkeeping (`LoadBoard.dispatched`), as the router fills them for real calls."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack

import httpx
import numpy as np
import pytest

from serve_app import errors
from serve_app.api.app import create_app
from serve_app.api.assembly import assemble
from serve_app.config import AppConfig
from serve_app.model.stats import ModelStatsSnapshot
from serve_app.model.tokenization import EncodedPairs
from serve_app.observer import AccessRecord, NullObserver
from serve_app.service.auth import hash_key
from serve_app.service.usage import LocalLedger
from tests.conftest import checkpoint_path, rerank_scope, usage_db_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
KEY = "rr-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_AUTH = {**AUTH, "content-type": "application/json"}
SLOW = {"Authorization": "Bearer slow-key"}
BODY = {"query": "q", "documents": ["a", "bb bb", "ccc ccc ccc"], "max_tokens_per_doc": 2}


class Observations(NullObserver):
    """Each tokenization the encoders report (pairs reused between models with one
    vocabulary are not tokenized again, and not reported) and each access record."""

    def __init__(self) -> None:
        self.calls = 0
        self.records: list[AccessRecord] = []

    def tokenized(self, model: str, seconds: float) -> None:
        self.calls += 1

    def request_done(self, record: AccessRecord) -> None:
        self.records.append(record)


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
    def __init__(
        self, root, max_in_flight: int | None = None, models: tuple[str, ...] = (TINY, L12)
    ):
        self.config = AppConfig.model_validate(
            {
                "models": [
                    m
                    for m in [
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
                    ]
                    if m["name"] in models
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
                "ingress": {"max_in_flight": max_in_flight},
                "usage": {"sqlite_path": usage_db_path(root)},
            }
        )
        config = self.config
        self.models = Models(config.enabled_models)
        self.tokenizations = observed = Observations()
        self.access = observed.records
        parts = assemble(config, self.models, LocalLedger(config.usage), observed, environ={})
        self.board, self.router, self.service = parts.board, parts.router, parts.service
        self.app = create_app(self.service, parts.edge)

    def fill(self, stack: ExitStack, model: str, calls: int, tokens: int = 1000) -> None:
        for _ in range(calls):
            stack.enter_context(self.board.dispatched(model, tokens))

    def measured(self, model: str, seconds_per_token: float) -> None:
        """A replica's report, as the stats poller feeds it in."""
        snapshot = ModelStatsSnapshot(seconds_per_token, 0, 0, batches_measured=8)
        self.board.update(model, snapshot, inflight_when_sent=0)

    def places_held(self) -> dict:
        """Every place and call this ingress counts: all zero once no request is open."""
        return {
            "admitted": self.board.admitted,
            "calls": self.board.inflight_requests,
            "pooled": self.router.admission.pooled,
        }

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


class HeldBody:
    """A request body that arrives only when `arrive` is set, counting reads of it."""

    def __init__(self, body: dict):
        self.content = json.dumps(body).encode()
        self.arrive = asyncio.Event()
        self.read = 0

    async def chunks(self):
        self.read += 1
        await self.arrive.wait()
        yield self.content


async def until(condition, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_one_model_a_request_is_refused_before_its_body_or_not_at_all(checkpoint_root):
    """The single-model deployment: the edge's place is the one the service uses, so
    requests whose bodies are still arriving hold it and the next one is refused before
    its body is read; none of the admitted ones is refused after its parse."""
    parts = Parts(checkpoint_root, models=(TINY,))  # 1 ongoing + 2 queued
    bodies = [HeldBody({**BODY, "model": TINY}) for _ in range(3)]
    late = HeldBody({**BODY, "model": TINY})
    async with parts.client() as c:
        held = [
            asyncio.create_task(c.post("/v1/rerank", content=b.chunks(), headers=JSON_AUTH))
            for b in bodies
        ]
        await until(lambda: parts.board.admitted[TINY] == 3, "the edge never took 3 places")
        refused = await c.post(
            "/v1/rerank", content=late.chunks(), headers={**AUTH, "x-request-id": "rid-1"}
        )
        for b in bodies:
            b.arrive.set()
        served = [await t for t in held]
    assert_refusal(refused, 503, "overloaded", "4")  # no rate measured: the configured 4 s
    assert late.read == 0 and [b.read for b in bodies] == [1, 1, 1]
    assert [r.status_code for r in served] == [200, 200, 200]
    assert parts.tokenizations.calls == 3
    assert parts.places_held() == {"admitted": {TINY: 0}, "calls": {TINY: 0}, "pooled": 0}


@pytest.mark.anyio
async def test_several_models_the_edge_holds_a_place_in_their_pool(checkpoint_root):
    """Two models: 3 + 2 free places. Five requests being read take them all, so a sixth
    is refused before its body; which model a request names is known only after the
    parse, so one for a model that turns out full is refused then (the documented gap)."""
    parts = Parts(checkpoint_root)
    parts.models.gate = asyncio.Event()  # calls stay at the models until set
    names = [TINY, TINY, TINY, L12, TINY]
    bodies = [HeldBody({**BODY, "model": m}) for m in names]
    late = HeldBody({**BODY, "model": L12})
    async with parts.client() as c:
        held = [
            asyncio.create_task(c.post("/v1/rerank", content=b.chunks(), headers=JSON_AUTH))
            for b in bodies
        ]
        await until(lambda: parts.router.admission.pooled == 5, "the edge never took 5 places")
        refused = await c.post(
            "/v1/rerank", content=late.chunks(), headers={**AUTH, "x-request-id": "rid-1"}
        )
        for b in bodies[:4]:
            b.arrive.set()
        await until(lambda: sum(parts.board.inflight_requests.values()) == 4, "not dispatched")
        bodies[4].arrive.set()  # a fourth for TINY, whose 3 places are taken
        after_parse = await held[4]
        parts.models.gate.set()
        served = [await t for t in held[:4]]
    assert late.read == 0
    # The soonest to drain sets the wait and the status: neither is measured, TINY's 4 s.
    assert_refusal(refused, 503, "overloaded", "4")
    assert after_parse.status_code == 503 and after_parse.json()["error"]["type"] == "overloaded"
    assert [r.status_code for r in served] == [200] * 4
    assert parts.tokenizations.calls == 4  # the one refused after its parse: not tokenized
    assert parts.places_held() == {
        "admitted": {TINY: 0, L12: 0},
        "calls": {TINY: 0, L12: 0},
        "pooled": 0,
    }


def failing_model(parts: Parts) -> dict:
    parts.models.failure = errors.ModelUnavailable("the replica died")
    return {**BODY, "model": TINY}


def scoring_bug(parts: Parts) -> dict:
    parts.models.failure = RuntimeError("a bug")
    return {**BODY, "model": TINY}


@pytest.mark.anyio
@pytest.mark.parametrize("models", [(TINY,), (TINY, L12)], ids=["one model", "two models"])
@pytest.mark.parametrize(
    "outcome, make_body, headers, status",
    [
        ("served", lambda p: {**BODY, "model": TINY}, AUTH, 200),
        ("served auto", lambda p: {**BODY, "model": "auto", "max_latency_ms": 1e9}, AUTH, 200),
        ("served cascade", lambda p: {**BODY, "model": "cascade"}, AUTH, 200),
        ("model fails", failing_model, AUTH, 503),
        ("scoring bug", scoring_bug, AUTH, 500),
        ("no key", lambda p: BODY, {}, 401),
        ("unknown model", lambda p: {**BODY, "model": "nope"}, AUTH, 404),
        ("invalid request", lambda p: {"query": "q", "documents": []}, AUTH, 422),
        ("not JSON", lambda p: None, AUTH, 400),
    ],
)
async def test_every_way_a_request_ends_gives_its_place_back(
    checkpoint_root, models, outcome, make_body, headers, status
):
    parts = Parts(checkpoint_root, models=models)
    body = make_body(parts)
    async with parts.client() as c:
        if body is None:
            response = await c.post("/v1/rerank", content=b'{"query": ', headers=headers)
        else:
            response = await c.post("/v1/rerank", json=body, headers=headers)
    if outcome == "served cascade" and len(models) == 1:
        status = 404  # the cascade's default second stage is not deployed
    assert response.status_code == status, response.text
    zero = {m: 0 for m in models}
    assert parts.places_held() == {"admitted": zero, "calls": zero, "pooled": 0}


@pytest.mark.anyio
@pytest.mark.parametrize("models", [(TINY,), (TINY, L12)], ids=["one model", "two models"])
async def test_a_request_cancelled_at_the_model_gives_its_place_back(checkpoint_root, models):
    """Serve cancels a request whose client has gone away: logged as 499, places back."""
    parts = Parts(checkpoint_root, models=models)
    parts.models.gate = asyncio.Event()  # never set
    async with parts.client() as c:
        task = asyncio.create_task(c.post("/v1/rerank", json={**BODY, "model": TINY}, headers=AUTH))
        await until(lambda: parts.board.inflight_requests[TINY] == 1, "never dispatched")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    zero = {m: 0 for m in models}
    assert parts.places_held() == {"admitted": zero, "calls": zero, "pooled": 0}
    assert [(r.status, r.failure) for r in parts.access] == [(499, "client_closed")]


@pytest.mark.anyio
@pytest.mark.parametrize("models", [(TINY,), (TINY, L12)], ids=["one model", "two models"])
async def test_a_client_gone_mid_body_gives_its_place_back_as_a_499(checkpoint_root, models):
    parts = Parts(checkpoint_root, models=models)
    messages = [{"type": "http.request", "body": b'{"query": "q", "docu', "more_body": True}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = rerank_scope(
        [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", b"200")]
    )
    await parts.app(scope, receive, send)
    assert sent == []  # nobody to answer
    assert [(r.status, r.failure) for r in parts.access] == [(499, "client_closed")]
    zero = {m: 0 for m in models}
    assert parts.places_held() == {"admitted": zero, "calls": zero, "pooled": 0}
    assert parts.tokenizations.calls == 0


@pytest.mark.anyio
async def test_only_a_caller_with_a_key_takes_a_place(checkpoint_root):
    """The place is taken once the key is checked (before the body): a request without
    one is a 401 whatever the load, and holds nothing while its body would arrive."""
    parts = Parts(checkpoint_root, models=(TINY,))
    with ExitStack() as held:
        parts.fill(held, TINY, 3)  # full
        async with parts.client() as c:
            no_key = await c.post("/v1/rerank", json=BODY)
            full = await c.post("/v1/rerank", json=BODY, headers={**AUTH, "x-request-id": "rid-1"})
    assert no_key.status_code == 401
    assert_refusal(full, 503, "overloaded", "4")
    assert parts.board.admitted == {TINY: 0}

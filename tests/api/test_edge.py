"""The HTTP edge middleware in front of a plain Starlette app: ids, auth, body limit,
in-flight limit, access records. No Ray."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.api.edge import EdgeMiddleware, EdgePolicy
from serve_app.config import AuthConfig
from serve_app.observer import AccessRecord
from serve_app.service.auth import Authenticator, hash_key

KEY = "rr-secret-key"
BOB_KEY = "rr-bob-key"


def auth_config(**kw) -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "enabled": True,
            "keys": [
                {"id": "alice", "sha256": hash_key(KEY)},
                {"id": "bob", "sha256": hash_key(BOB_KEY)},
            ],
            **kw,
        }
    )


class Recorder:
    def __init__(self, records: list[AccessRecord]):
        self.records = records

    def request_done(self, record: AccessRecord) -> None:
        self.records.append(record)


def edge_app(
    observed: list[AccessRecord],
    max_body: int = 100,
    max_in_flight: int | None = None,
    gate: asyncio.Event | None = None,
    max_in_flight_per_key: int | None = None,
) -> Starlette:
    async def hold(request: Request) -> JSONResponse:
        await gate.wait()
        return JSONResponse({"held": True})

    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        request.state.model = "m"
        request.state.documents = len(body.get("documents", []))
        return JSONResponse(
            {
                "principal": request.state.principal.key_id,
                "bytes": len(json.dumps(body)),
                # Budget routing counts from here: set before the body was read.
                "waited_s": time.perf_counter() - request.state.arrived,
            }
        )

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("bug")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    policy = EdgePolicy(
        authenticator=Authenticator(auth_config(), environ={}),
        max_body_bytes=max_body,
        public_paths=frozenset({"/healthz"}),
        known_paths=frozenset({"/echo", "/healthz", "/boom", "/hold"}),
        observer=Recorder(observed),
        max_in_flight=max_in_flight,
        retry_after_s=2,
        max_in_flight_per_key=max_in_flight_per_key,
    )
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/boom", boom),
            Route("/healthz", health),
            Route("/hold", hold),
        ]
    )
    app.add_middleware(EdgeMiddleware, policy=policy)
    return app


async def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.anyio
async def test_edge_authenticates_limits_bodies_and_tags_request_ids():
    observed: list[AccessRecord] = []
    async with await _client(edge_app(observed)) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        ok = await client.post(
            "/echo", json={"documents": ["secret text"]}, headers={**auth, "X-Request-ID": "abc-1"}
        )
        assert ok.status_code == 200 and ok.json()["principal"] == "alice"
        assert 0 <= ok.json()["waited_s"]
        assert ok.headers["x-request-id"] == "abc-1"
        denied = await client.post("/echo", json={})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
        assert len(denied.headers["x-request-id"]) == 32
        assert (await client.get("/healthz")).status_code == 200
        too_big = await client.post("/echo", content=b"x" * 101, headers=auth)
        assert too_big.status_code == 413 and too_big.json()["error"]["param"] is None

        async def stream():
            for _ in range(20):
                yield b"x" * 10

        chunked = await client.post("/echo", content=stream(), headers=auth)
        assert chunked.status_code == 413
        crash = await client.get("/boom", headers=auth)
        assert crash.status_code == 500 and crash.json()["error"]["type"] == "internal_error"
        assert (await client.get("/other/path", headers=auth)).status_code == 404

    first = observed[0]
    assert (first.request_id, first.status, first.key_id, first.model, first.documents) == (
        "abc-1",
        200,
        "alice",
        "m",
        1,
    )
    assert [r.status for r in observed] == [200, 401, 200, 413, 413, 500, 404]
    assert observed[-1].path == "other"


@pytest.mark.anyio
async def test_edge_sheds_beyond_its_in_flight_limit_in_the_error_shape_and_recovers():
    observed: list[AccessRecord] = []
    gate = asyncio.Event()
    auth = {"Authorization": f"Bearer {KEY}"}
    async with await _client(edge_app(observed, max_in_flight=2, gate=gate)) as client:
        held = [asyncio.create_task(client.get("/hold", headers=auth)) for _ in range(2)]
        # Poll with a request that never blocks until both held ones are in flight.
        deadline = asyncio.get_running_loop().time() + 10
        while (shed := await client.post("/echo", json={}, headers=auth)).status_code == 200:
            assert asyncio.get_running_loop().time() < deadline, "held requests never admitted"
            await asyncio.sleep(0)
        assert shed.status_code == 503
        assert shed.json()["error"]["type"] == "overloaded"
        assert shed.headers["retry-after"] == "2" and shed.headers["x-request-id"]
        assert (await client.get("/healthz")).status_code == 200  # probes are never shed
        gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        again = await client.post("/echo", json={}, headers=auth)
        assert again.status_code == 200
    assert [r.status for r in observed].count(503) >= 1


@pytest.mark.anyio
async def test_access_log_lines_never_hold_keys_or_text(caplog):
    observed: list[AccessRecord] = []
    async with await _client(edge_app(observed, max_body=10_000)) as client:
        await client.post(
            "/echo",
            json={"query": "private query", "documents": ["secret"]},
            headers={"Authorization": f"Bearer {KEY}", "X-Client-Name": "app"},
        )
        await client.post("/echo", json={}, headers={"Authorization": "Bearer guessed-key"})
    with caplog.at_level(logging.INFO, logger="ray.serve.rerank_access"):
        for r in observed:
            logging.getLogger("ray.serve.rerank_access").info(r.log_line())
    lines = [json.loads(m) for m in caplog.messages]
    assert lines[0]["key_id"] == "alice" and lines[0]["client_name"] == "app"
    assert lines[1]["status"] == 401 and lines[1]["key_id"] is None
    text = "\n".join(caplog.messages)
    for secret in (KEY, "guessed-key", "private query", "secret"):
        assert secret not in text


def bare_policy(**kw) -> EdgePolicy:
    return EdgePolicy(
        authenticator=Authenticator(auth_config(), environ={}),
        max_body_bytes=1000,
        public_paths=frozenset({"/healthz"}),
        known_paths=frozenset({"/healthz", "/echo"}),
        **kw,
    )


async def drive(policy: EdgePolicy, path: str, headers: dict[str, str], chunks: list[bytes]):
    """One request through the edge with a client that sends `chunks` and then nothing,
    ever (a slow sender). Returns the status, the JSON answer, what the app saw, and
    how many times the edge asked for body."""
    seen: dict = {}
    reads = 0

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        seen["body"] = (await receive())["body"]
        await JSONResponse({"ok": True})(scope, receive, send)

    async def receive():
        nonlocal reads
        reads += 1
        if reads <= len(chunks):
            return {"type": "http.request", "body": chunks[reads - 1], "more_body": True}
        await asyncio.Event().wait()  # the rest never comes

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    # Bounded: without a deadline the edge would wait for the body forever.
    await asyncio.wait_for(EdgeMiddleware(app, policy)(scope, receive, send), 10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body), seen, reads


@pytest.mark.anyio
async def test_public_paths_read_no_body_and_refuse_one_announced():
    policy = bare_policy()
    status, headers, body, _, reads = await drive(
        policy, "/healthz", {"content-length": "16000000"}, [b"x"]
    )
    assert (status, body["error"]["type"], reads) == (413, "request_too_large", 0)
    assert headers[b"connection"] == b"close"  # the rest is not waited for
    status, _, body, seen, reads = await drive(policy, "/healthz", {}, [])
    assert (status, body, seen["body"], reads) == (200, {"ok": True}, b"", 0)


@pytest.mark.anyio
async def test_a_body_that_does_not_arrive_in_time_is_a_408():
    policy = bare_policy(body_timeout_s=0.05)
    auth = {"authorization": f"Bearer {KEY}", "content-length": "500"}
    status, headers, body, seen, _ = await drive(policy, "/echo", auth, [b"{", b'"a'])
    assert (status, body["error"]["type"], seen) == (408, "request_timeout", {})
    assert headers[b"connection"] == b"close"


@pytest.mark.anyio
async def test_client_sent_serve_control_headers_never_reach_the_app():
    policy = bare_policy()
    headers = {
        "authorization": f"Bearer {KEY}",
        "content-length": "2",
        "x-request-timeout-seconds": "0",
        "X-Request-Disconnect-Disabled": "?1",
    }

    async def one_chunk_then_done():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    seen: dict = {}

    async def app(scope, receive, send):
        seen.update(scope["headers"])
        await JSONResponse({})(scope, receive, send)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def send(message):
        pass

    await EdgeMiddleware(app, policy)(scope, one_chunk_then_done, send)
    assert b"authorization" in seen
    assert b"x-request-timeout-seconds" not in seen
    assert b"x-request-disconnect-disabled" not in seen


@pytest.mark.anyio
async def test_one_key_cannot_hold_more_than_its_share_of_slots():
    observed: list[AccessRecord] = []
    gate = asyncio.Event()
    app = edge_app(observed, max_in_flight=4, gate=gate, max_in_flight_per_key=2)
    alice = {"Authorization": f"Bearer {KEY}"}
    async with await _client(app) as client:
        held = [asyncio.create_task(client.get("/hold", headers=alice)) for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 10
        while (refused := await client.post("/echo", json={}, headers=alice)).status_code == 200:
            assert asyncio.get_running_loop().time() < deadline, "held requests never admitted"
            await asyncio.sleep(0)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limited"
        assert refused.headers["retry-after"] == "2"
        bob = await client.post("/echo", json={}, headers={"Authorization": f"Bearer {BOB_KEY}"})
        assert bob.status_code == 200  # another key still has room
        gate.set()
        assert [(await t).status_code for t in held] == [200, 200]
        assert (await client.post("/echo", json={}, headers=alice)).status_code == 200


class CountedPlace:
    """A scoring place (the routing layer's `Reservation` stand-in) counting its releases."""

    def __init__(self) -> None:
        self.releases = 0

    def release(self) -> None:
        self.releases += 1


def scoring_policy(observed: list[AccessRecord], places: list[CountedPlace]) -> EdgePolicy:
    def reserve() -> CountedPlace:
        places.append(CountedPlace())
        return places[-1]

    return bare_policy(
        observer=Recorder(observed), scoring_paths=frozenset({"/echo"}), reserve_scoring=reserve
    )


AUTH_BODY = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", b"20")]


@pytest.mark.anyio
async def test_a_client_that_hangs_up_mid_body_is_a_499_and_gives_its_place_back():
    observed: list[AccessRecord] = []
    places: list[CountedPlace] = []
    messages = [{"type": "http.request", "body": b'{"qu', "more_body": True}]
    app_called = sent = 0

    async def app(scope, receive, send):
        nonlocal app_called
        app_called += 1

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        nonlocal sent
        sent += 1

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": AUTH_BODY}
    await EdgeMiddleware(app, scoring_policy(observed, places))(scope, receive, send)
    # Nothing is answered (nobody is there) and the partial body is not parsed.
    assert (app_called, sent) == (0, 0)
    assert [(r.status, r.failure) for r in observed] == [(499, "client_closed")]
    assert [p.releases for p in places] == [1]


@pytest.mark.anyio
async def test_a_request_cancelled_while_worked_on_is_a_499_and_gives_its_place_back():
    """Serve cancels the handler of a request whose client has gone away."""
    observed: list[AccessRecord] = []
    places: list[CountedPlace] = []
    working = asyncio.Event()

    async def app(scope, receive, send):
        await receive()
        working.set()
        await asyncio.Event().wait()  # scoring that never ends

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        raise AssertionError("nothing is answered to a cancelled request")

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": AUTH_BODY}
    edge = EdgeMiddleware(app, scoring_policy(observed, places))
    task = asyncio.get_running_loop().create_task(edge(scope, receive, send))
    await asyncio.wait_for(working.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(r.status, r.failure) for r in observed] == [(499, "client_closed")]
    assert [p.releases for p in places] == [1] and edge.in_flight == 0

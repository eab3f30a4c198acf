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


def auth_config(**kw) -> AuthConfig:
    return AuthConfig.model_validate(
        {"enabled": True, "keys": [{"id": "alice", "sha256": hash_key(KEY)}], **kw}
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

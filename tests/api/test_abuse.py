"""Abuse at the edge, against the whole API in process (no Ray): slow senders on real
loopback sockets (uvicorn on 127.0.0.1), oversized lists and documents, probe bursts,
cascade quotas, work kept on the tokenizer threads. Bounded in count and time."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError

from serve_app.api.app import create_app
from serve_app.api.assembly import assemble
from serve_app.api.schemas import RerankRequest, TEIRerankRequest
from serve_app.config import AppConfig
from serve_app.service.auth import hash_key
from serve_app.service.usage import LocalLedger
from tests.api.test_app import FakeModels, Recorder
from tests.conftest import checkpoint_path, free_port, usage_db_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
KEYS = {"alice": "rr-alice-key", "mallory": "rr-mallory-key", "metered": "rr-metered-key"}
BODY = {"query": "q", "documents": ["a", "bb bb", "ccc ccc ccc"]}


def auth(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key_id]}"}


class CountingModels(FakeModels):
    def __init__(self, models: list[str]):
        super().__init__(models)
        self.described = 0
        self.scored_lengths: list[int] = []

    async def describe(self, model: str) -> dict:
        self.described += 1
        return await super().describe(model)

    async def score(self, model, pairs):
        self.scored_lengths += pairs.doc_lengths.tolist()
        return await super().score(model, pairs)


def build(root, limits: dict[str, Any] | None = None, ingress: dict[str, Any] | None = None):
    config = AppConfig.model_validate(
        {
            "models": [{"name": m, "source": checkpoint_path(root, m)} for m in (TINY, L12)],
            "auth": {
                "keys": [
                    {"id": "alice", "sha256": hash_key(KEYS["alice"])},
                    {"id": "mallory", "sha256": hash_key(KEYS["mallory"])},
                    {
                        "id": "metered",
                        "sha256": hash_key(KEYS["metered"]),
                        "quota": {"documents_per_minute": 8},
                    },
                ]
            },
            "limits": limits or {},
            "ingress": ingress or {},
            "usage": {"sqlite_path": usage_db_path(root)},
        }
    )
    models = CountingModels(config.enabled_models)
    parts = assemble(config, models, LocalLedger(config.usage), Recorder(), environ={})
    return create_app(parts.service, parts.edge), parts.service, models


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def raw_request(port: int, head: str, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"\r\n\r\n" + body)
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict, bool]:
    """The answer's status and JSON body, and whether the server then closed the
    connection (408 and 413 do; a 429 may keep it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = dict(
        line.split(": ", 1) for line in head.decode("latin-1").lower().split("\r\n")[1:] if line
    )
    body = await reader.readexactly(int(fields["content-length"]))
    closed = fields.get("connection") == "close" and await reader.read() == b""
    return int(head.split()[1]), json.loads(body), closed


@pytest.mark.anyio
async def test_slow_senders_cannot_take_every_slot_and_are_closed_by_their_deadline(
    checkpoint_root,
):
    """200 connections that announce a body and send one byte: 100 on /healthz (no key),
    100 on /v1/rerank with one key. A rerank from another key is still served while they
    are held; each slow one is answered 413 (public path: no body) at once, 429 (beyond
    its key's in-flight cap) at once, or 408 at its body deadline; 413 and 408 close the
    connection."""
    app, _, _ = build(
        checkpoint_root,
        {"body_timeout_s": 4.0},
        {"max_in_flight": 64, "max_in_flight_per_key": 16},
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        probes = [
            await raw_request(
                port,
                "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 16000000"
                "\r\nx-request-timeout-seconds: 0",
                b"x",
            )
            for _ in range(100)
        ]
        key = f"Authorization: Bearer {KEYS['mallory']}"
        slow = [
            await raw_request(
                port,
                f"POST /v1/rerank HTTP/1.1\r\nHost: t\r\n{key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000",
                b"{",
            )
            for _ in range(100)
        ]
        answers = [asyncio.create_task(answer(r)) for r, _ in probes + slow]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            served = await c.post("/v1/rerank", json=BODY, headers=auth("alice"))
        served_while_held = sum(not a.done() for a in answers[100:])
        statuses = await asyncio.wait_for(asyncio.gather(*answers), 60)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
    for _, writer in probes + slow:
        writer.close()
    assert served.status_code == 200, served.text
    codes = [s for s, _, _ in statuses]
    assert codes[:100] == [413] * 100  # the public path read no body
    assert sorted(codes[100:]) == [408] * 16 + [429] * 84  # the key's cap, then its deadline
    assert served_while_held == 16  # alice was served while mallory's 16 still waited
    assert all(closed for s, _, closed in statuses if s in (408, 413))
    assert {b["error"]["type"] for _, b, _ in statuses} == {
        "request_too_large",
        "rate_limited",
        "request_timeout",
    }


EIGHT_MILLION_INTEGERS = b'{"query": "q", "documents": [' + b"1," * (8_000_000 - 1) + b"1]}"


@pytest.mark.anyio
@pytest.mark.parametrize("max_body_bytes", [None, 16 * 1024 * 1024])
async def test_a_body_of_millions_of_integers_is_a_4xx_and_the_service_keeps_serving(
    checkpoint_root, max_body_bytes
):
    """16 MiB of `[1,1,...]` as `documents`: 413 under the default body limit; under the
    old 16 MiB limit it is parsed, and refused by the schema (next test: at what cost)."""
    assert len(EIGHT_MILLION_INTEGERS) <= 16 * 1024 * 1024
    limits = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    app, _, _ = build(checkpoint_root, limits)
    headers = {**auth("alice"), "content-type": "application/json"}
    async with client(app) as c:
        got = await c.post("/v1/rerank", content=EIGHT_MILLION_INTEGERS, headers=headers)
        after = await c.post("/v1/rerank", json=BODY, headers=auth("alice"))
    if max_body_bytes is None:
        assert got.status_code == 413 and got.json()["error"]["type"] == "request_too_large"
    else:
        assert got.status_code == 422 and got.json()["error"]["param"].startswith("documents")
    assert after.status_code == 200  # the service keeps serving


@pytest.mark.parametrize(
    "shape, field", [(RerankRequest, "documents"), (TEIRerankRequest, "texts")]
)
def test_validating_millions_of_non_documents_stops_at_the_first(shape, field):
    """What the edge's body limit lets through is parsed (json: a 64 MiB list); validating
    it must not cost more. Bound: one error and under 1 MiB of Python heap. Before the
    schema's bound, each of the 8 million items got an error: gigabytes, tens of seconds."""
    parsed = json.loads(EIGHT_MILLION_INTEGERS)
    body = {"query": "q", field: parsed["documents"]}
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as e:
            shape.model_validate(body)
        errors = e.value.errors()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(errors) == 1 and errors[0]["loc"][0] == field
    assert peak < 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.anyio
async def test_a_ten_megabyte_document_is_refused_before_tokenizing_and_starves_no_one(
    checkpoint_root,
):
    app, _, models = build(checkpoint_root, {"max_body_bytes": 16 * 1024 * 1024})
    huge = {"query": "q", "documents": ["ok", "word " * 2_000_000]}
    async with client(app) as c:
        big, normal = await asyncio.gather(
            c.post("/v1/rerank", json=huge, headers=auth("alice")),
            c.post("/v1/rerank", json=BODY, headers=auth("alice")),
        )
    assert big.status_code == 422, big.text
    assert big.json()["error"]["param"] == "documents.1"
    assert normal.status_code == 200
    assert len(models.scored_lengths) == 3  # only the normal request's documents were scored


@pytest.mark.anyio
async def test_long_documents_within_the_limit_are_cut_to_their_window_exactly(checkpoint_root):
    app, service, models = build(checkpoint_root)
    text = "word " * 6000  # 30,000 characters: under the limit, far over a window
    async with client(app) as c:
        got = await c.post(
            "/v1/rerank", json={"query": "q", "documents": [text]}, headers=auth("alice")
        )
    assert got.status_code == 200
    encoder = service.router.encoders.encoders[TINY]
    whole = encoder._documents.encode(text, add_special_tokens=False).ids  # no cut
    head = encoder.head("q")
    assert models.scored_lengths == [min(len(whole), 512 - len(head) - 1) + 1]


@pytest.mark.anyio
async def test_a_burst_of_readiness_probes_makes_one_round_of_model_calls(checkpoint_root):
    app, _, models = build(checkpoint_root)
    async with client(app) as c:
        probes = await asyncio.gather(*(c.get("/readyz") for _ in range(50)))
        again = await c.get("/readyz")
    assert {p.status_code for p in probes} == {200} and again.status_code == 200
    assert models.described == 2  # one describe per model, shared by all 51 probes


@pytest.mark.anyio
async def test_a_cascade_is_admitted_for_what_it_scores(checkpoint_root):
    """`metered` may score 8 documents a minute: a cascade of 6 keeping 3 scores 9."""
    app, _, _ = build(checkpoint_root)
    docs = ["a", "b b", "c c c", "d", "e e", "f"]
    async with client(app) as c:
        cascade = await c.post(
            "/v1/rerank",
            json={"query": "q", "documents": docs, "cascade": {"keep": 3}},
            headers=auth("metered"),
        )
        plain = await c.post(
            "/v1/rerank", json={"query": "q", "documents": docs}, headers=auth("metered")
        )
    assert cascade.status_code == 422, cascade.text
    assert cascade.json()["error"]["message"].startswith("documents: 9 documents exceed")
    assert plain.status_code == 200

"""Plain-Python units of the production API: keys, quotas, usage and its journal, limits,
client-shape translation, truncation and the HTTP edge middleware. No Ray."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.auth import ANONYMOUS, Authenticator, hash_key, keys_from_env, main
from serve_app.compat import (
    CohereV2RerankRequest,
    RerankCall,
    Reranked,
    TEIRerankRequest,
    call_from_rerank_request,
    call_from_tei,
    rerank_response,
    search_units,
    tei_response,
)
from serve_app.config import AppConfig, AuthConfig, LimitsConfig, PricingConfig, QuotaSettings
from serve_app.errors import APIError
from serve_app.http_edge import AccessRecord, EdgeMiddleware, EdgePolicy
from serve_app.limits import check_limits
from serve_app.quotas import QuotaBook, TokenBucket, never_admitted
from serve_app.schemas import RerankRequest
from serve_app.truncation import DocumentTruncator
from serve_app.usage import RecordBatcher, UsageBook, UsageJournal, UsageRecord

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"
KEY = "rr-secret-key"
DEPLOYMENTS = Path(__file__).parent.parent / "deployments"


def auth_config(**kw) -> AuthConfig:
    return AuthConfig.model_validate(
        {"enabled": True, "keys": [{"id": "alice", "sha256": hash_key(KEY)}], **kw}
    )


# -- auth --------------------------------------------------------------------------------


def test_hash_is_hex_sha256_and_config_never_needs_the_key():
    assert hash_key(KEY) == hashlib.sha256(KEY.encode()).hexdigest()
    entry = auth_config().keys[0]
    assert KEY not in entry.model_dump_json()


def test_bearer_key_authenticates_to_its_id_and_quota():
    auth = Authenticator(auth_config(default_quota={"requests_per_second": 5}), environ={})
    principal = auth.authenticate(f"Bearer {KEY}")
    assert principal.key_id == "alice" and principal.quota.requests_per_second == 5
    assert auth.authenticate(f"bearer   {KEY} ").key_id == "alice"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", KEY, f"Basic {KEY}", "Bearer wrong", f"Bearer {KEY}x"]
)
def test_missing_malformed_or_wrong_keys_are_401(header):
    with pytest.raises(APIError) as e:
        Authenticator(auth_config(), environ={}).authenticate(header)
    assert e.value.status == 401 and e.value.type == "unauthorized"
    assert e.value.headers["WWW-Authenticate"] == "Bearer"
    assert KEY not in e.value.message


def test_disabled_auth_makes_everyone_anonymous():
    auth = Authenticator(AuthConfig(enabled=False), environ={})
    assert auth.authenticate(None).key_id == ANONYMOUS


def test_keys_come_from_an_environment_variable_in_two_forms():
    digest = hash_key("k2")
    assert [k.id for k in keys_from_env("K", {"K": f"bob:{digest}, carol:{hash_key('k3')}"})] == [
        "bob", "carol"]
    entries = json.dumps([{"id": "dan", "sha256": digest,
                           "quota": {"documents_per_minute": 10}}])
    (dan,) = keys_from_env("K", {"K": entries})
    assert dan.quota.documents_per_minute == 10
    auth = Authenticator(AuthConfig(keys_env="K"), environ={"K": f"bob:{digest}"})
    assert auth.authenticate("Bearer k2").key_id == "bob"
    with pytest.raises(ValueError):
        keys_from_env("K", {"K": "no-colon"})


def test_enabled_auth_without_keys_or_with_duplicate_ids_refuses_to_start():
    with pytest.raises(ValueError, match="no keys"):
        Authenticator(AuthConfig(keys_env="UNSET"), environ={})
    with pytest.raises(ValueError, match="twice"):
        Authenticator(auth_config(keys_env="K"), environ={"K": f"alice:{hash_key('other')}"})
    with pytest.raises(ValidationError):
        AuthConfig.model_validate({"keys": [{"id": "x", "sha256": "not-hex"}]})


def test_hash_key_cli_hashes_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    main(["--stdin", "--id", "alice"])
    out = capsys.readouterr().out
    assert hash_key(KEY) in out and KEY not in out
    main([])
    generated = capsys.readouterr().out.splitlines()[0].rsplit(" ", 1)[-1]
    assert generated.startswith("rr-") and len(generated) > 40


def test_production_configs_require_keys_and_the_demo_does_not():
    def args(name: str) -> AppConfig:
        raw = yaml.safe_load((DEPLOYMENTS / name).read_text())
        return AppConfig.model_validate(raw["applications"][0]["args"])

    assert args("demo.yaml").auth.enabled is False
    for name in ("gpu-1.yaml", "local-cpu.yaml"):
        config = args(name)
        assert config.auth.enabled and config.auth.keys_env == "RERANK_API_KEYS"
        assert config.usage.journal_path


# -- quotas ------------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_capacity():
    bucket = TokenBucket(rate_per_s=2, capacity=4, now=0)
    assert bucket.wait_for(4, now=0) == 0
    bucket.take(4)
    assert bucket.wait_for(1, now=0) == pytest.approx(0.5)
    assert bucket.wait_for(1, now=0.5) == 0
    assert bucket.wait_for(4, now=100) == 0 and bucket.tokens == 4


def test_request_rate_quota():
    book, quota = QuotaBook(), QuotaSettings(requests_per_second=2)
    assert all(book.admit("a", quota, 1, now=0).allowed for _ in range(2))
    refused = book.admit("a", quota, 1, now=0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert refused.retry_after_header == "1" and "requests per second" in refused.reason
    assert book.admit("b", quota, 1, now=0).allowed  # per key
    assert book.admit("a", quota, 1, now=0.5).allowed


def test_document_quota_and_refusals_cost_nothing():
    book = QuotaBook()
    quota = QuotaSettings(requests_per_second=100, documents_per_minute=60)
    assert book.admit("a", quota, 50, now=0).allowed
    refused = book.admit("a", quota, 20, now=0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(10)
    assert refused.retry_after_header == "10"
    assert book.admit("a", quota, 10, now=0).allowed  # the refusal took no tokens
    too_big = book.admit("a", quota, 61, now=1000)
    assert not too_big.allowed and "never be admitted" in too_big.reason
    assert never_admitted(quota, 61) == too_big.reason and never_admitted(quota, 60) is None
    assert never_admitted(QuotaSettings(requests_per_second=1), 10**6) is None


def test_no_quota_admits_everything():
    book = QuotaBook()
    assert all(book.admit("a", QuotaSettings(), 10**6, now=0).allowed for _ in range(100))


# -- usage -------------------------------------------------------------------------------


def record(request_id: str, documents: int, model: str = L6, price: float = 0.008,
           key_id: str = "alice") -> UsageRecord:
    return UsageRecord(request_id, key_id, model, documents, documents * 10, ((documents, price),))


def test_usage_counts_each_request_once_per_key_and_model_with_exact_cost():
    book = UsageBook()
    assert book.record(record("r1", 1000))
    assert not book.record(record("r1", 1000))  # a retried record
    assert book.record(record("r2", 3, model=TINY, price=0.004))
    assert book.record(record("r3", 7, key_id="bob"))
    totals = book.totals("alice")
    assert (totals["requests"], totals["documents"], totals["tokens"]) == (2, 1003, 10030)
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.008") + Decimal("0.000012")
    assert totals["models"][TINY] == {"requests": 1, "documents": 3, "tokens": 30,
                                      "cost_usd": 0.000012}
    assert book.totals("nobody")["documents"] == 0


def test_cost_sums_exactly_over_many_requests():
    book = UsageBook()
    for i in range(10_000):
        book.record(record(f"r{i}", 1))
    assert book.totals("alice")["cost_usd"] == 0.08  # floats would drift


def test_a_cascade_is_charged_each_stage_at_its_models_price():
    book = UsageBook()
    # 100 documents at TinyBERT's $0.004 per 1k, then the best 20 at L12's $0.012.
    cascade = UsageRecord("c1", "alice", "cascade", 120, 9000, ((100, 0.004), (20, 0.012)))
    assert book.record(cascade)
    totals = book.totals("alice")
    assert Decimal(str(totals["cost_usd"])) == Decimal("0.00064")
    assert totals["models"]["cascade"]["documents"] == 120


def test_journal_lines_written_with_one_price_per_request_still_replay(tmp_path):
    path = tmp_path / "usage.jsonl"
    path.write_text(json.dumps({"request_id": "old", "key_id": "alice", "model": L6,
                                "documents": 500, "tokens": 5000,
                                "usd_per_1k_documents": 0.008}) + "\n")
    book = UsageBook()
    assert UsageJournal(path).replay_into(book) == 1
    assert book.totals("alice")["cost_usd"] == 0.004


def test_dedup_window_is_bounded():
    book = UsageBook(dedup_window=2)
    for rid in ("a", "b", "c"):
        book.record(record(rid, 1))
    assert not book.seen("a") and book.seen("c")


def test_journal_replay_restores_totals_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "state" / "usage.jsonl"
    journal, book = UsageJournal(path), UsageBook()
    for r in (record("r1", 4), record("r2", 5, model=TINY, price=0.004)):
        journal.append([r])
        book.record(r)
    journal.close()
    with open(path, "a") as f:
        f.write('{"request_id": "torn", "key_id"')  # a crash mid-write
    reopened, replayed = UsageJournal(path), UsageBook()
    assert reopened.replay_into(replayed) == 2
    assert replayed.totals("alice") == book.totals("alice")
    reopened.append([record("r3", 1)])  # starts on a fresh line after the torn one
    reopened.close()
    again = UsageBook()
    assert UsageJournal(path).replay_into(again) == 3
    assert again.seen("r1") and again.totals("alice")["documents"] == 10


@pytest.mark.anyio
async def test_ledger_counts_each_id_once_within_and_across_calls_and_replays(tmp_path):
    from serve_app.config import UsageConfig
    from serve_app.ledger import UsageLedger

    config = UsageConfig(journal_path=str(tmp_path / "usage.jsonl"))
    ledger = UsageLedger.func_or_class(config)
    assert await ledger.record([record("a", 2), record("b", 3), record("a", 2)]) == [
        True, True, False]
    assert await ledger.record([record("b", 3), record("c", 1)]) == [False, True]
    assert (await ledger.usage("alice"))["documents"] == 6
    restarted = UsageLedger.func_or_class(config)  # a new replica replays the journal
    assert await restarted.usage("alice") == await ledger.usage("alice")
    assert await restarted.record([record("c", 1)]) == [False]


@pytest.mark.anyio
async def test_record_batcher_coalesces_concurrent_records_and_shares_failures():
    import asyncio

    calls: list[list[str]] = []
    release = asyncio.Event()

    async def send(records: list[UsageRecord]) -> list[bool]:
        calls.append([r.request_id for r in records])
        await release.wait()
        if any(r.request_id == "poison" for r in records):
            raise APIError(503, "ledger_unavailable", "down")
        return [not r.request_id.startswith("dup") for r in records]

    batcher = RecordBatcher(send)
    first = asyncio.create_task(batcher.record(record("r0", 1)))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.record(record(rid, 1)))
            for rid in ("r1", "dup2", "r3")]
    await asyncio.sleep(0)
    release.set()
    assert await first is True
    assert [await t for t in rest] == [True, False, True]
    assert calls == [["r0"], ["r1", "dup2", "r3"]]  # one call for all that queued meanwhile

    failing = [asyncio.create_task(batcher.record(record(rid, 1))) for rid in ("poison", "x")]
    for task in failing:
        with pytest.raises(APIError):
            await task
    assert await batcher.record(record("after", 1)) is True  # the batcher keeps working


# -- limits, pricing ---------------------------------------------------------------------


def call(texts, query="q", top_n=None) -> RerankCall:
    return RerankCall(model=None, query=query, texts=texts, top_n=top_n, raw_scores=False)


def test_limits_name_the_field():
    limits = LimitsConfig(max_documents_per_request=3, max_query_chars=5, max_top_n=2)
    check_limits(limits, call(["a", "b", ""]), "documents")
    for bad, param in [(call(["a"] * 4), "texts"), (call(["a"], query="x" * 6), "query"),
                       (call(["a"], top_n=3), "top_n")]:
        with pytest.raises(APIError) as e:
            check_limits(limits, bad, "texts")
        assert (e.value.status, e.value.param) == (422, param)
    assert LimitsConfig().max_documents_per_request == 1000


def test_unpaired_surrogates_are_rejected_not_sent_to_a_tokenizer():
    limits = LimitsConfig()
    check_limits(limits, call(["naïve café 😀", ""], query="émile"), "documents")
    for bad, param in [(call(["ok", "a \ud800 b"]), "documents.1"),
                       (call(["ok"], query="\udfff"), "query")]:
        with pytest.raises(APIError) as e:
            check_limits(limits, bad, "documents")
        assert (e.value.status, e.value.param) == (422, param)


def test_prices_per_model_accept_aliases_and_default():
    pricing = PricingConfig(usd_per_1k_documents={"cross-encoder/ms-marco-MiniLM-L-6-v2": 0.02})
    assert pricing.price(L6) == 0.02 and pricing.price(TINY) == 0.008
    with pytest.raises(ValidationError):
        PricingConfig(usd_per_1k_documents={"nope": 1})


# -- compatibility shapes ----------------------------------------------------------------


RESULT = Reranked(id="rerank-1", model=L6, ranked=[(2, 0.9), (0, 0.5)],
                  texts=["a", "b", "c"], documents=3, total_tokens=30)


def test_search_units_follow_cohere_one_per_hundred_documents():
    assert [search_units(n) for n in (1, 100, 101, 1000)] == [1, 1, 2, 10]


def test_cohere_v2_body_translates_and_returns_no_documents_by_default():
    body = CohereV2RerankRequest.model_validate(
        {"model": "rerank-v3.5", "query": "q", "documents": ["a", "b"], "top_n": 1,
         "max_tokens_per_doc": 4096, "priority": 0}
    )
    translated = call_from_rerank_request(body)
    assert (translated.model, translated.top_n, translated.max_tokens_per_doc) == (
        "rerank-v3.5", 1, 4096)
    response = rerank_response(RESULT, body.return_documents).model_dump(exclude_none=True)
    assert response["results"] == [{"index": 2, "relevance_score": 0.9},
                                   {"index": 0, "relevance_score": 0.5}]
    assert response["meta"] == {"billed_units": {"search_units": 1}}
    assert response["usage"] == {"documents": 3, "total_tokens": 30}


def test_jina_shape_returns_document_text():
    response = rerank_response(RESULT, return_documents=True).model_dump(exclude_none=True)
    assert [r["document"]["text"] for r in response["results"]] == ["c", "a"]


def test_tei_body_and_bare_array_answer():
    body = TEIRerankRequest.model_validate(
        {"query": "q", "texts": ["a", "", "c"], "raw_scores": True, "return_text": True,
         "truncate": False, "truncation_direction": "Right"}
    )
    translated = call_from_tei(body)
    assert translated.texts == ["a", "", "c"] and translated.raw_scores
    assert [r.model_dump(exclude_none=True) for r in tei_response(RESULT, True)] == [
        {"index": 2, "score": 0.9, "text": "c"}, {"index": 0, "score": 0.5, "text": "a"}]
    assert tei_response(RESULT, False)[0].text is None
    for bad in ({"query": "q", "texts": []}, {"query": "q", "texts": ["a", 1]},
                {"query": "q", "texts": ["a"], "truncation_direction": "Left"}):
        with pytest.raises(ValidationError):
            TEIRerankRequest.model_validate(bad)


def test_truncation_cuts_after_n_tokens_and_keeps_short_texts():
    truncator = DocumentTruncator()
    texts = ["Paris is the capital of France.", "short", ""]
    assert truncator.truncate(texts, 3) == ["Paris is the", "short", ""]
    assert truncator.truncate(["one two three"], 3) == ["one two three"]
    assert truncator.truncate(texts, 10**30) == texts  # no-op at or above the model's 512


# -- HTTP edge ---------------------------------------------------------------------------


def edge_app(
    observed: list[AccessRecord], max_body: int = 100, max_in_flight: int | None = None,
    gate: asyncio.Event | None = None,
) -> Starlette:
    async def hold(request: Request) -> JSONResponse:
        await gate.wait()
        return JSONResponse({"held": True})

    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        request.state.model = "m"
        request.state.documents = len(body.get("documents", []))
        return JSONResponse({
            "principal": request.state.principal.key_id,
            "bytes": len(json.dumps(body)),
            # Budget routing counts from here: set before the body was read.
            "waited_s": time.perf_counter() - request.state.arrived,
        })

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("bug")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    policy = EdgePolicy(
        authenticator=Authenticator(auth_config(), environ={}),
        max_body_bytes=max_body,
        public_paths=frozenset({"/healthz"}),
        known_paths=frozenset({"/echo", "/healthz", "/boom", "/hold"}),
        observe=observed.append,
        max_in_flight=max_in_flight,
        retry_after_s=2,
    )
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/boom", boom),
                            Route("/healthz", health), Route("/hold", hold)])
    app.add_middleware(EdgeMiddleware, resolve_policy=lambda: policy)
    return app


async def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.anyio
async def test_edge_authenticates_limits_bodies_and_tags_request_ids():
    observed: list[AccessRecord] = []
    async with await _client(edge_app(observed)) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        ok = await client.post("/echo", json={"documents": ["secret text"]},
                               headers={**auth, "X-Request-ID": "abc-1"})
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
        "abc-1", 200, "alice", "m", 1)
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
        await client.post("/echo", json={"query": "private query", "documents": ["secret"]},
                          headers={"Authorization": f"Bearer {KEY}", "X-Client-Name": "app"})
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


@pytest.mark.anyio
@pytest.mark.parametrize("body", [
    b'{"query": "q", "documents": ["\xff\xfe"]}',  # not UTF-8
    b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}",  # past int's digits
    b'{"query": "q", "documents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # too deep
])
async def test_bodies_json_cannot_parse_are_400_invalid_json(body):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from serve_app import ingress  # imports Ray's modules; starts nothing

    app = FastAPI()  # the ingress's error handlers in front of a route with its body type
    app.add_exception_handler(APIError, ingress._api_error)
    app.add_exception_handler(RequestValidationError, ingress._validation_error)
    app.add_exception_handler(HTTPException, ingress._http_error)

    @app.post("/v1/rerank")
    async def rerank(body: RerankRequest) -> dict:
        return {}

    async with await _client(app) as client:
        response = await client.post(
            "/v1/rerank", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"


def test_every_ingress_route_is_logged_by_its_path_not_as_other():
    from serve_app import ingress  # imports Ray's modules; starts nothing

    served = set(ingress.app.openapi()["paths"])
    assert served <= ingress.ROUTES | ingress.PUBLIC_PATHS


# -- model call failures -----------------------------------------------------------------

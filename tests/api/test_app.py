"""The whole HTTP API in process, without Ray: the real app, edge, service, router and
tokenizers, with in-process model scores (`FakeModels`) and the ledger's own state
(`LocalLedger`). Checks the one error table from every layer's failures to the wire."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import numpy as np
import pytest

from serve_app import errors
from serve_app.api.app import PUBLIC_PATHS, ROUTES, create_app
from serve_app.api.assembly import assemble
from serve_app.api.edge import EdgePolicy
from serve_app.api.errors import ERROR_TABLE
from serve_app.config import AppConfig, UsageConfig
from serve_app.model.tokenization import EncodedPairs
from serve_app.observer import AccessRecord
from serve_app.service.auth import Authenticator, hash_key
from serve_app.service.usage import LocalLedger, UsageRecord
from tests.conftest import checkpoint_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
L12 = "cross-encoder/ms-marco-MiniLM-L12-v2"
KEY = "rr-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"query": "q", "documents": ["a", "bb bb", "ccc ccc ccc"]}


class FakeModels:
    """Scores by document length; `failure` is raised instead when set."""

    def __init__(self, models: list[str]):
        self.models = models
        self.failure: Exception | None = None

    async def score(self, model: str, pairs: EncodedPairs) -> np.ndarray:
        if self.failure is not None:
            raise self.failure
        return pairs.doc_lengths.astype(np.float32)

    async def describe(self, model: str) -> dict:
        return {
            "weights": "random",
            "device": "cpu",
            "dtype": "int8",
            "backend": "onnx",
            "quantization": "int8",
        }

    async def replica_states(self) -> dict[str, dict[str, int]]:
        return {m: {"RUNNING": 1} for m in self.models}


class Recorder:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def request_done(self, record: AccessRecord) -> None:
        self.records.append(record)

    def __getattr__(self, name: str):  # every other observation: ignored
        return lambda *args, **kwargs: None


@pytest.fixture
def service_parts(checkpoint_root, tmp_path):
    return build_parts(checkpoint_root, tmp_path / "usage.db")


def build_parts(
    checkpoint_root, usage_db, ledger: LocalLedger | None = None, chunking: dict | None = None
):
    """The app over the demo's kind of store, a SQLite file (or `ledger`, when given)."""
    config = AppConfig.model_validate(
        {
            "models": [
                {"name": m, "source": checkpoint_path(checkpoint_root, m)} for m in (TINY, L12)
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
            "limits": {"max_documents_per_request": 5},
            "usage": {"sqlite_path": str(usage_db)},
            "chunking": chunking or {},
        }
    )
    models, observer = FakeModels(config.enabled_models), Recorder()
    ledger = ledger if ledger is not None else LocalLedger(config.usage)
    parts = assemble(config, models, ledger, observer, environ={})
    return create_app(parts.service, parts.edge), models, observer


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def assert_error(response: httpx.Response, status: int, kind: str, param: str | None = None):
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"type": kind, "message": response.json()["error"]["message"], "param": param}
    }


@pytest.mark.anyio
async def test_every_route_answers_and_bills_through_one_service(service_parts):
    app, _, observer = service_parts
    async with client(app) as c:
        v1 = await c.post("/v1/rerank", json={**BODY, "top_n": 2}, headers=AUTH)
        v2 = await c.post("/v2/rerank", json=BODY, headers=AUTH)
        tei = await c.post("/rerank", json={"query": "q", "texts": BODY["documents"]}, headers=AUTH)
        usage = await c.get("/v1/usage", headers=AUTH)
        models = await c.get("/v1/models", headers=AUTH)
        ready = await c.get("/readyz")
    assert [r["index"] for r in v1.json()["results"]] == [2, 1]
    assert v1.json()["results"][0]["document"] == {"text": "ccc ccc ccc"}
    assert "document" not in v2.json()["results"][0]  # Cohere v2: none unless asked
    assert [r["index"] for r in tei.json()] == [2, 1, 0]
    assert v1.headers["x-rerank-model"] == TINY
    assert usage.json()["requests"] == 3 and usage.json()["documents"] == 9
    assert [m["id"] for m in models.json()["data"]] == [TINY, L12]
    assert models.json()["data"][0]["replicas"] == 1
    assert {k: models.json()["data"][0][k] for k in ("backend", "quantization", "dtype")} == {
        "backend": "onnx",
        "quantization": "int8",
        "dtype": "int8",
    }
    assert ready.json() == {"status": "ready", "models": [TINY, L12]}
    assert {(r.path, r.status, r.failure) for r in observer.records} >= {("/v1/rerank", 200, None)}


@pytest.mark.anyio
async def test_budget_met_is_present_only_when_a_latency_budget_applied(service_parts):
    app, _, _ = service_parts
    async with client(app) as c:
        floor_only = await c.post("/v1/rerank", json={**BODY, "min_ndcg": 0.7}, headers=AUTH)
        budget = await c.post("/v1/rerank", json={**BODY, "max_latency_ms": 1e9}, headers=AUTH)
        named = await c.post("/v1/rerank", json={**BODY, "model": L12}, headers=AUTH)
        cascade = await c.post("/v1/rerank", json={**BODY, "model": "cascade"}, headers=AUTH)
    assert floor_only.json()["routing"]["policy"] == "budget"
    assert "budget_met" not in floor_only.json()["routing"]
    assert budget.json()["routing"]["budget_met"] is True
    assert "budget_met" not in named.json()["routing"]
    assert "budget_met" not in cascade.json()["routing"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure, status, kind, retry_after",
    [
        (
            errors.ModelUnavailable("m could not score; retry", retry_after_s=2),
            503,
            "model_unavailable",
            "2",
        ),
        (errors.Overloaded("full", retry_after_s=0.2), 503, "overloaded", "1"),
        (errors.Overloaded("full", retry_after_s=3, throttle=True), 429, "overloaded", "3"),
        (errors.ModelTimeout("m did not answer"), 504, "model_timeout", None),
        (errors.LedgerUnavailable("down", retry_after_s=1), 503, "ledger_unavailable", "1"),
    ],
)
async def test_failures_below_the_api_map_to_one_status_each(
    service_parts, failure, status, kind, retry_after
):
    app, models, observer = service_parts
    models.failure = failure
    async with client(app) as c:
        got = await c.post("/v1/rerank", json=BODY, headers=AUTH)
        models.failure = None
        after = await c.post("/v1/rerank", json=BODY, headers=AUTH)
    assert_error(got, status, kind)
    assert got.headers.get("retry-after") == retry_after
    assert after.status_code == 200  # nothing lost: the service keeps serving
    assert observer.records[-2].failure == kind and observer.records[-1].failure is None


@pytest.mark.anyio
async def test_request_errors_name_the_field_as_each_shape_spells_it(service_parts):
    app, _, _ = service_parts
    six = ["a"] * 6
    async with client(app) as c:
        v1 = await c.post("/v1/rerank", json={"query": "q", "documents": six}, headers=AUTH)
        tei = await c.post("/rerank", json={"query": "q", "texts": six}, headers=AUTH)
        surrogate = await c.post(  # JSON may escape a lone surrogate; httpx cannot encode one
            "/rerank",
            content=b'{"query": "q", "texts": ["a", "\\ud800"]}',
            headers={**AUTH, "content-type": "application/json"},
        )
        unknown = await c.post("/v1/rerank", json={**BODY, "model": "nope"}, headers=AUTH)
        floor = await c.post("/v1/rerank", json={**BODY, "min_ndcg": 99}, headers=AUTH)
        missing = await c.post("/v1/rerank", json={"documents": ["a"]}, headers=AUTH)
        no_key = await c.post("/v1/rerank", json=BODY)
    assert_error(v1, 422, "invalid_request", "documents")
    assert v1.json()["error"]["message"].startswith("documents: 6 documents exceed the limit of 5")
    assert_error(tei, 422, "invalid_request", "texts")
    assert tei.json()["error"]["message"].startswith("texts: 6 documents")
    assert_error(surrogate, 422, "invalid_request", "texts.1")
    assert surrogate.json()["error"]["message"] == "texts.1: text contains an unpaired surrogate"
    assert_error(unknown, 404, "model_not_found", "model")
    assert_error(floor, 400, "budget_unsatisfiable", "min_ndcg")
    assert_error(missing, 422, "invalid_request", "query")
    assert_error(no_key, 401, "unauthorized")
    assert no_key.headers["www-authenticate"] == "Bearer"


@pytest.mark.anyio
async def test_a_spent_quota_is_429_with_a_whole_second_to_wait(service_parts):
    app, _, _ = service_parts
    slow = {"Authorization": "Bearer slow-key"}
    async with client(app) as c:
        first = await c.post("/v1/rerank", json=BODY, headers=slow)
        second = await c.post("/v1/rerank", json=BODY, headers=slow)
    assert first.status_code == 200
    assert_error(second, 429, "rate_limited")
    assert int(second.headers["retry-after"]) >= 1


@pytest.mark.anyio
async def test_not_ready_models_make_readyz_a_503(service_parts):
    app, models, observer = service_parts

    async def silent(model: str) -> dict:
        return {} if model == L12 else {"weights": "random"}

    models.describe = silent
    async with client(app) as c:
        got = await c.get("/readyz")
    assert_error(got, 503, "not_ready")
    assert L12 in got.json()["error"]["message"] and got.headers["retry-after"] == "1"
    assert observer.records[-1].failure == "not_ready"  # counted under its type


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "q", "documents": ["\xff\xfe"]}',  # not UTF-8
        b'{"query": "q", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}",  # past int's digits
        b'{"query": "q", "documents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # too deep
        b"{bad",
        b"[1, 2]",
    ],
)
async def test_bodies_that_are_not_a_json_object_are_400_invalid_json(service_parts, body):
    app, _, _ = service_parts
    async with client(app) as c:
        response = await c.post(
            "/v1/rerank", content=body, headers={**AUTH, "content-type": "application/json"}
        )
    assert_error(response, 400, "invalid_json")


def test_every_route_is_logged_by_its_path_not_as_other(service_parts):
    app, _, _ = service_parts
    assert set(app.openapi()["paths"]) <= ROUTES | PUBLIC_PATHS


def test_every_domain_error_has_a_row_in_the_table():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    assert set(subclasses(errors.RerankError)) == set(ERROR_TABLE)


@pytest.mark.anyio
async def test_the_stats_task_starts_with_the_app_and_stops_with_it(service_parts):
    _, _, _ = service_parts
    started, stopped = asyncio.Event(), asyncio.Event()

    async def background() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    app = create_app(
        None,
        EdgePolicy(  # type: ignore[arg-type]
            authenticator=Authenticator(
                AppConfig.model_validate(
                    {"models": [{"name": TINY}], "auth": {"enabled": False}}
                ).auth
            ),
            max_body_bytes=1024,
            public_paths=PUBLIC_PATHS,
            known_paths=ROUTES | PUBLIC_PATHS,
        ),
        background=background,
    )
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(stopped.wait(), 10)


# -- usage in the database ---------------------------------------------------------------


@pytest.mark.anyio
async def test_usage_is_unchanged_across_a_service_restart(checkpoint_root, tmp_path):
    app, _, _ = build_parts(checkpoint_root, tmp_path / "usage.db")
    async with client(app) as c:
        for _ in range(3):
            assert (await c.post("/v1/rerank", json=BODY, headers=AUTH)).status_code == 200
        before = (await c.get("/v1/usage", headers=AUTH)).json()
    assert before["requests"] == 3 and before["documents"] == 9
    restarted, _, _ = build_parts(checkpoint_root, tmp_path / "usage.db")  # a new process
    async with client(restarted) as c:
        assert (await c.get("/v1/usage", headers=AUTH)).json() == before
        assert (await c.post("/v1/rerank", json=BODY, headers=AUTH)).status_code == 200
        assert (await c.get("/v1/usage", headers=AUTH)).json()["requests"] == 4


@pytest.mark.anyio
async def test_a_duplicate_request_id_is_counted_once(checkpoint_root, tmp_path):
    ledger = LocalLedger(UsageConfig(sqlite_path=str(tmp_path / "usage.db")))
    app, _, _ = build_parts(checkpoint_root, tmp_path / "usage.db", ledger)
    async with client(app) as c:
        answer = (await c.post("/v1/rerank", json=BODY, headers=AUTH)).json()
        # The ingress's record for that response, sent again (a retry after a lost reply):
        retried = UsageRecord(answer["id"], "alice", TINY, 3, 1, ((3, 0.008),))
        assert await ledger.record([retried]) == [False]
        usage = (await c.get("/v1/usage", headers=AUTH)).json()
    assert usage["requests"] == 1 and usage["documents"] == 3


@pytest.mark.anyio
async def test_usage_by_day_month_and_model_within_dates(service_parts):
    app, _, _ = service_parts
    today = datetime.now(timezone.utc).date().isoformat()
    async with client(app) as c:
        await c.post("/v1/rerank", json=BODY, headers=AUTH)
        await c.post("/v1/rerank", json={**BODY, "model": L12}, headers=AUTH)
        by_day = await c.get(f"/v1/usage?from={today}&to={today}&group_by=day", headers=AUTH)
        by_model = (await c.get("/v1/usage?group_by=model", headers=AUTH)).json()
        by_month = (await c.get("/v1/usage?group_by=month", headers=AUTH)).json()
        before = (await c.get("/v1/usage?to=2000-01-01", headers=AUTH)).json()
        plain = (await c.get("/v1/usage", headers=AUTH)).json()
    assert by_day.status_code == 200, by_day.text
    by_day = by_day.json()
    assert by_day["from"] == by_day["to"] == today and by_day["group_by"] == "day"
    assert by_day["groups"] == [
        {
            "group": today,
            "requests": 2,
            "documents": 6,
            "tokens": by_day["tokens"],
            "windows": 6,
            "cost_usd": 0.000048,
        }
    ]
    assert [g["group"] for g in by_model["groups"]] == [L12, TINY]
    assert [g["group"] for g in by_month["groups"]] == [today[:7]]
    assert before["requests"] == 0 and before["models"] == {}
    assert set(plain) == {
        "key_id",
        "requests",
        "documents",
        "tokens",
        "windows",
        "cost_usd",
        "models",
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query, param",
    [
        ("from=2026-12-05&to=2026-12-01", "from"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("to=20261201", "to"),
        ("group_by=week", "group_by"),
        ("group_by=", "group_by"),
    ],
)
async def test_bad_usage_parameters_are_422_naming_the_parameter(service_parts, query, param):
    app, _, _ = service_parts
    async with client(app) as c:
        response = await c.get(f"/v1/usage?{query}", headers=AUTH)
    assert_error(response, 422, "invalid_request", param)

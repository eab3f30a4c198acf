"""Shared fixtures: random-initialised checkpoints of the five v2 architectures (written
once per session), and a Ray Serve harness that tests start once per module on loopback.
Checkpoints of the other architectures (ELECTRA, DistilBERT, XLM-RoBERTa, two labels) are
in `tests/model/architectures.py`."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.catalog import load_catalog
from serve_app.model.checkpoints import write_random_checkpoint

# The ms-marco v2 family: the five models the demo configs and most tests serve.
ALL_MODELS = [card.name for card in load_catalog() if card.name.endswith("-v2")]


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("random-checkpoints")
    for model in ALL_MODELS:
        card = load_catalog().resolve(model)
        write_random_checkpoint(card, root / card.short_name)
    return root


def checkpoint_path(root: Path, model: str) -> str:
    return str(root / load_catalog().resolve(model).short_name)


def usage_db_path(root: Path) -> str:
    """A fresh SQLite usage file in the session's temporary folder: tests never write to
    the default ~/.cache/rerank-serve/usage.db."""
    return str(root.parent / f"usage-{uuid.uuid4().hex[:12]}.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(root: Path, models: list[str], **overrides: Any) -> dict:
    """App config for tests: CPU replicas asking for a fraction of a logical GPU, so the
    fractional-GPU options are exercised on a machine without one."""
    args: dict[str, Any] = {
        "model_defaults": {
            "num_gpus": 0.1,
            "allow_cpu_fallback": True,  # logical GPUs: no CUDA behind them
            "num_cpus": 0.1,
            "cpu_threads": 1,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        },
        "ingress": {"num_cpus": 0.1},
        "auth": {"enabled": False},
        "usage": {"sqlite_path": usage_db_path(root)},
        "models": [{"name": m, "source": checkpoint_path(root, m)} for m in models],
    }
    args.update(overrides)
    return args


def rerank_scope(headers: list[tuple[bytes, bytes]]) -> dict:
    """An ASGI HTTP scope for `POST /v1/rerank` on loopback, for driving the app in process
    with hand-made `receive`/`send`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/rerank",
        "raw_path": b"/v1/rerank",
        "root_path": "",
        "query_string": b"",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": headers,
    }


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def start_serve_app(
    args: dict, *, num_gpus: int = 1, num_cpus: int = 8, **ray_init_options: Any
) -> Iterator[str]:
    """Start Ray (a new local instance, never an existing cluster) and Serve on a free
    loopback port, deploy the app, wait for /readyz; yield the base URL; shut down.
    `ray_init_options` go to `ray.init` (e.g. `_metrics_export_port`)."""
    import ray
    from ray import serve

    from serve_app.runtime.builder import build_app
    from serve_app.runtime.ray_env import with_service_env

    with_service_env()  # what the cluster configs start Ray with
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        **ray_init_options,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="rerank", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 300, "readyz")
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def uvicorn_on_loopback(app: Any) -> Iterator[str]:
    """Serve an ASGI app (the in-process API) on a free loopback port in a thread; its
    base URL until the block ends, then the server stops."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn to start")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

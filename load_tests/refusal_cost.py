"""CPU one overload refusal costs in the ingress's own code (not a test): the real app,
edge, service and router in process, no Ray, the one model's queue full on the load board,
each request handed straight to the ASGI app. What it leaves out: the HTTP server's own
parsing (uvicorn) and whatever is in front (Serve's proxy or HAProxy), and Ray's metrics
(a null observer here); the access-log line is written, to a temporary file.

    flock /tmp/cpu.lock .venv/bin/python load_tests/refusal_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load_tests.overload import documents  # noqa: E402
from load_tests.soak import QUERY  # noqa: E402
from tests.conftest import rerank_scope  # noqa: E402


def build(root: Path, model: str):
    from serve_app.api.app import create_app
    from serve_app.api.assembly import assemble
    from serve_app.catalog import load_catalog
    from serve_app.config import AppConfig
    from serve_app.model.checkpoints import write_random_checkpoint
    from serve_app.service.usage import LocalLedger

    card = load_catalog().resolve(model)
    write_random_checkpoint(card, root / card.short_name)
    config = AppConfig.model_validate(
        {
            "auth": {"enabled": False},
            "models": [
                {
                    "name": card.name,
                    "source": str(root / card.short_name),
                    "max_ongoing_requests": 4,
                    "max_queued_requests": 8,
                }
            ],
            "ingress": {"max_in_flight": 32},
            "usage": {"sqlite_path": str(root / "usage.db")},
        }
    )

    class NeverCalled:
        async def score(self, model, pairs):
            raise AssertionError("a refused request reached the model")

    parts = assemble(config, NeverCalled(), LocalLedger(config.usage), environ={})
    return create_app(parts.service, parts.edge), parts.board, card.name


async def refuse(app, body: bytes, n: int) -> tuple[float, float, list[int]]:
    statuses: list[int] = []
    scope = rerank_scope(
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    )

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await app({**scope, "headers": list(scope["headers"])}, receive, send)
    return time.process_time() - cpu, time.perf_counter() - wall, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cross-encoder/ms-marco-TinyBERT-L2-v2")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)
    access = logging.getLogger("ray.serve.rerank_access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.FileHandler(log.name))
    access.propagate = False
    app, board, model = build(Path(tempfile.mkdtemp(prefix="refusal-cost-")), args.model)
    report = {"model": model, "requests": args.requests, "bodies": {}}
    with ExitStack() as held:
        for _ in range(12):  # 4 ongoing + 8 queued: full
            held.enter_context(board.dispatched(model, 1000))
        for kind in ("small", "100"):
            body = json.dumps(
                {"model": model, "query": QUERY, "documents": documents(kind)}
            ).encode()
            asyncio.run(refuse(app, body, 200))  # warm up
            cpu, wall, statuses = asyncio.run(refuse(app, body, args.requests))
            assert set(statuses) == {503}, set(statuses)
            report["bodies"][kind] = {
                "body_bytes": len(body),
                "cpu_ms_per_refusal": round(1000 * cpu / args.requests, 4),
                "wall_ms_per_refusal": round(1000 * wall / args.requests, 4),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

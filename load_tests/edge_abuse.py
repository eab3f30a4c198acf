"""Slow clients and oversized bodies against one ingress's HTTP stack, measured: the real
app, edge, service, router and tokenizers under uvicorn on 127.0.0.1 in a child process,
with in-process stand-in model scores (document lengths; no weights are loaded) and the
ledger's own state. What it shows is the edge's and the tokenizer's cost, not a model's.

    python load_tests/edge_abuse.py > report.json

- `oversized`: a 16 MiB body of 8 million integers as `documents`, under the default body
  limit and under the old 16 MiB one: status, seconds to the answer, and how far the
  server's peak RSS (VmHWM) rose; then whether a normal request is still served.
- `huge_document`: a 10 MB document (body limit raised to 16 MiB so it reaches the
  document limit), with a normal request sent beside it.
- `slow_senders`: 100 connections announcing a 16 MB body on /healthz and 100 announcing a
  100 kB body on /v1/rerank with one key, each sending one byte and then nothing; a normal
  rerank from another key meanwhile; when and how each slow one is answered (defaults:
  `limits.body_timeout_s` 10 s, per-key cap half the admission limit).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
KEYS = {"alice": "rr-alice-bench-key", "mallory": "rr-mallory-bench-key"}
BODY = {"query": "q", "documents": ["a", "bb bb", "ccc ccc ccc"]}


class LengthScores:
    """Stand-in model: scores each pair by its length. No weights."""

    async def score(self, model, pairs):
        return pairs.doc_lengths.astype(np.float32)

    async def describe(self, model):
        return {"weights": "none (stand-in)"}

    async def replica_states(self):
        return {}


def serve(port: int, limits: dict, root: str) -> None:
    import uvicorn

    from serve_app.api.app import create_app
    from serve_app.api.assembly import assemble
    from serve_app.config import AppConfig
    from serve_app.service.auth import hash_key
    from serve_app.service.usage import LocalLedger

    config = AppConfig.model_validate(
        {
            "models": [{"name": TINY, "source": root}],
            "auth": {"keys": [{"id": k, "sha256": hash_key(v)} for k, v in KEYS.items()]},
            "limits": limits,
            "usage": {"sqlite_path": str(Path(root).parent / "usage.db")},
        }
    )
    parts = assemble(config, LengthScores(), LocalLedger(config.usage), environ={})
    app = create_app(parts.service, parts.edge)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, limits: dict, root: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=serve, args=(self.port, limits, root), daemon=True)

    def __enter__(self) -> Server:
        self.process.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    httpx.post(f"{self.url}/v1/rerank", json=BODY, headers=auth("alice"))
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.join(10)


def auth(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key_id]}"}


def oversized(root: str) -> list[dict]:
    body = b'{"query": "q", "documents": [' + b"1," * (8_000_000 - 1) + b"1]}"
    out = []
    for limit in (None, 16 * 1024 * 1024):
        with Server({} if limit is None else {"max_body_bytes": limit}, root) as server:
            before = peak_rss_mib(server.process.pid)
            started = time.perf_counter()
            got = httpx.post(
                f"{server.url}/v1/rerank",
                content=body,
                headers={**auth("alice"), "content-type": "application/json"},
                timeout=600,
            )
            seconds = time.perf_counter() - started
            after = httpx.post(f"{server.url}/v1/rerank", json=BODY, headers=auth("alice"))
            out.append(
                {
                    "max_body_bytes": limit or "default",
                    "body_bytes": len(body),
                    "status": got.status_code,
                    "error": got.json()["error"]["type"],
                    "seconds": round(seconds, 3),
                    "peak_rss_mib_before": round(before, 1),
                    "peak_rss_growth_mib": round(peak_rss_mib(server.process.pid) - before, 1),
                    "next_request_status": after.status_code,
                }
            )
    return out


async def huge_document(root: str) -> dict:
    with Server({"max_body_bytes": 16 * 1024 * 1024}, root) as server:
        huge = {"query": "q", "documents": ["ok", "word " * 2_000_000]}
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as c:

            async def timed(body):
                started = time.perf_counter()
                r = await c.post("/v1/rerank", json=body, headers=auth("alice"))
                return r, time.perf_counter() - started

            before = peak_rss_mib(server.process.pid)
            (big, big_s), (normal, normal_s) = await asyncio.gather(timed(huge), timed(BODY))
        return {
            "document_chars": len(huge["documents"][1]),
            "status": big.status_code,
            "error": big.json()["error"]["type"],
            "seconds": round(big_s, 3),
            "normal_request_beside_it": {
                "status": normal.status_code,
                "seconds": round(normal_s, 3),
            },
            "peak_rss_growth_mib": round(peak_rss_mib(server.process.pid) - before, 1),
        }


async def slow_senders(root: str) -> dict:
    with Server({}, root) as server:
        started = time.perf_counter()

        async def slow(head: str, body: bytes) -> tuple[int, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(head.encode() + b"\r\n\r\n" + body)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 120)  # to EOF: the server closed it
            writer.close()
            return int(raw.split()[1]), time.perf_counter() - started

        probe = "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 16000000"
        rerank = (
            f"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEYS['mallory']}"
            "\r\nContent-Type: application/json\r\nContent-Length: 100000"
            "\r\nx-request-timeout-seconds: 0"
        )
        tasks = [asyncio.create_task(slow(probe, b"x")) for _ in range(100)]
        tasks += [asyncio.create_task(slow(rerank, b"{")) for _ in range(100)]
        await asyncio.sleep(1)  # let every slow connection be accepted and start its body
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            t = time.perf_counter()
            normal = await c.post("/v1/rerank", json=BODY, headers=auth("alice"))
            normal_s = time.perf_counter() - t
        held_then = sum(not task.done() for task in tasks)
        answers = await asyncio.gather(*tasks)

    def summary(part):
        by_status: dict[int, list[float]] = {}
        for status, at in part:
            by_status.setdefault(status, []).append(at)
        return {
            str(s): {"count": len(v), "closed_after_s": [round(min(v), 2), round(max(v), 2)]}
            for s, v in sorted(by_status.items())
        }

    return {
        "normal_request": {"status": normal.status_code, "seconds": round(normal_s, 3)},
        "slow_connections_still_held_when_it_was_served": held_then,
        "healthz": summary(answers[:100]),
        "v1_rerank": summary(answers[100:]),
    }


def main() -> None:
    from serve_app.catalog import load_catalog
    from serve_app.model.checkpoints import write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        # Random-initialised TinyBERT-L2: only its tokenizer and config are used here.
        root = str(write_random_checkpoint(load_catalog().resolve(TINY), Path(tmp) / "tiny"))
        report = {
            "oversized": oversized(root),
            "huge_document": asyncio.run(huge_document(root)),
            "slow_senders": asyncio.run(slow_senders(root)),
        }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

"""Interactive load with locust against a running service (loopback by default).

    pip install locust
    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000
    # headless: add  --headless -u 32 -r 8 -t 60s

Environment: RERANK_MODEL (default MiniLM-L6), RERANK_DOCS (documents per request, 100),
RERANK_SHAPE (`standard` or `long`), RERANK_API_KEY (Bearer key, if auth is on).
"""

from __future__ import annotations

import itertools
import json
import os

from locust import HttpUser, between, task

from load_tests.workload import make_requests

MODEL = os.environ.get("RERANK_MODEL", "cross-encoder/ms-marco-MiniLM-L6-v2")
DOCS = int(os.environ.get("RERANK_DOCS", "100"))
SHAPE = os.environ.get("RERANK_SHAPE", "standard")
BODIES = [
    json.dumps(
        {"model": MODEL, "query": r.query, "documents": r.documents, "return_documents": False}
    )
    for r in make_requests(200, DOCS, SHAPE, seed=4)
]
HEADERS = {"content-type": "application/json"}
if os.environ.get("RERANK_API_KEY"):
    HEADERS["authorization"] = f"Bearer {os.environ['RERANK_API_KEY']}"


class RerankUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self._bodies = itertools.cycle(BODIES)

    @task
    def rerank(self) -> None:
        with self.client.post(
            "/v1/rerank",
            data=next(self._bodies),
            headers=HEADERS,
            name=f"rerank {MODEL.split('/')[-1]} x{DOCS}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["results"]) != DOCS:
                response.failure("wrong number of results")

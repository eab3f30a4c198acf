"""The rerank requests, exactly as a user's client sends them: `POST /v1/rerank` with the
first-stage candidates in their first-stage order, bounded concurrency, the latency of each
request as the client sees it, and every failure kept with its reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from serve_app.eval.systems import System

RETRY_STATUSES = {429, 503}  # overload and quota: the service says when to come back
MAX_RETRY_WAIT_S = 30.0


@dataclass(frozen=True)
class Job:
    qid: str
    query: str
    docids: list[str]
    texts: list[str]


@dataclass(frozen=True)
class Reranked:
    qid: str
    ranking: list[tuple[str, float]]  # (docid, the service's score), best first
    latency_ms: float  # of the request that succeeded
    documents: int


@dataclass(frozen=True)
class Failed:
    qid: str
    reason: str


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def rank_by_scores(docids: Sequence[str], scores: Sequence[float]) -> list[tuple[str, float]]:
    """Best first; equal scores keep the first-stage order (a stable sort on the score)."""
    order = sorted(range(len(docids)), key=lambda i: -scores[i])
    return [(docids[i], scores[i]) for i in order]


def _scores_of(body: object, n: int) -> list[float]:
    """Each document's score, by index, from a `/v1/rerank` response; ValueError if the
    response does not score every document exactly once."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ValueError("response has no `results` list")
    scores: list[float | None] = [None] * n
    for result in body["results"]:
        index, score = result.get("index"), result.get("relevance_score")
        if not isinstance(index, int) or not 0 <= index < n or scores[index] is not None:
            raise ValueError(f"response has a bad or repeated index {index!r}")
        if not isinstance(score, int | float):
            raise ValueError(f"response has a non-numeric score {score!r}")
        scores[index] = float(score)
    if any(s is None for s in scores):
        raise ValueError(f"response scores {len(body['results'])} of {n} documents")
    return scores  # type: ignore[return-value]


def error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error['type']}: {error['message']}"
    except Exception:  # not our error shape (e.g. a proxy's plain-text page)
        return f"HTTP {response.status_code}: {response.text[:200]!r}"


async def rerank_one(
    client: httpx.AsyncClient, system: System, job: Job, retries: int
) -> Reranked | Failed:
    body = {
        "query": job.query,
        "documents": job.texts,
        "return_documents": False,
        # Logits, not their sigmoid: fp32 sigmoids of confident models saturate to 1.0, and
        # the ties that makes would reorder documents by the first stage instead.
        "raw_scores": True,
        **system.fields,
    }
    reason = ""
    for attempt in range(retries + 1):
        started = time.perf_counter()
        try:
            response = await client.post("/v1/rerank", json=body)
        except httpx.HTTPError as e:
            reason = f"{type(e).__name__}: {e}"
            continue  # connection trouble: worth another attempt
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 200:
            try:
                scores = _scores_of(response.json(), len(job.texts))
            except ValueError as e:
                return Failed(job.qid, f"malformed response: {e}")
            ranking = rank_by_scores(job.docids, scores)
            return Reranked(job.qid, ranking, latency_ms, len(job.texts))
        reason = error_text(response)
        if response.status_code not in RETRY_STATUSES or attempt == retries:
            break
        try:
            wait_s = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait_s = 1.0
        await asyncio.sleep(min(max(wait_s, 0.0), MAX_RETRY_WAIT_S))
    return Failed(job.qid, reason)


async def rerank_all(
    client: httpx.AsyncClient,
    system: System,
    jobs: Sequence[Job],
    concurrency: int,
    retries: int,
    on_result: Callable[[Reranked | Failed], None],
) -> None:
    """Every job through `concurrency` workers; `on_result` is called as each finishes."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            on_result(await rerank_one(client, system, job, retries))

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(jobs))))))


async def cost_usd(client: httpx.AsyncClient) -> float | None:
    """The calling key's total cost from `GET /v1/usage`; None if the service gives none."""
    try:
        response = await client.get("/v1/usage")
        return float(response.json()["cost_usd"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None

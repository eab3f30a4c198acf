"""The rerank service: the pipeline every request goes through, whatever route it came in
on. Limits, capacity admission (the router's, from the load board), quota admission,
routing, tokenizing and scoring (the router), then billing, which
happens before the answer: a request the ledger has not counted is not served.
Also the read-only views: usage, models, readiness, routing.

No HTTP and no Ray: failures are `serve_app.errors` types, the model deployments and the
ledger are reached through the interfaces in `ports.py`.
"""

from __future__ import annotations

import asyncio

from serve_app.catalog import Catalog
from serve_app.config import AppConfig
from serve_app.errors import InvalidRequest, NotReady, RateLimited
from serve_app.observer import NullObserver, Observer
from serve_app.routing.router import Router
from serve_app.service.auth import Principal
from serve_app.service.limits import check_limits
from serve_app.service.ports import Ledger, ModelBackend
from serve_app.service.quotas import never_admitted
from serve_app.service.readiness import ReadinessCache
from serve_app.service.usage import RecordBatcher, UsageQuery, UsageRecord
from serve_app.types import ModelStatus, RerankRequest, RerankResult

READY_TIMEOUT_S = 5.0


class RerankService:
    def __init__(
        self,
        config: AppConfig,
        catalog: Catalog,
        router: Router,
        models: ModelBackend,
        ledger: Ledger,
        observer: Observer = NullObserver(),
    ):
        self.config = config
        self.catalog = catalog
        self.router = router
        self.models = models
        self.ledger = ledger
        self.observer = observer
        self.recorder = RecordBatcher(ledger.record)
        self.deployments = {m.name: m.short_name for m in config.models}
        self.readiness = ReadinessCache(self._not_ready_now)

    async def rerank(
        self, request: RerankRequest, caller: Principal, arrived: float | None = None
    ) -> RerankResult:
        """`arrived`: `time.perf_counter()` when the request reached the edge; a latency
        budget counts from then."""
        check_limits(self.config.limits, request)
        # Capacity first (synchronous, from the load board), then the key's quota (a ledger
        # call) for what will be scored (a cascade scores its kept documents twice);
        # tokenization and truncation only for a request that will be scored.
        with self.router.admit(request):
            await self._admit(caller, self.router.documents_to_score(request))
            result = await self.router.rerank(request, arrived)
        await self.recorder.record(
            UsageRecord(
                request_id=result.id,
                key_id=caller.key_id,
                model=result.model,
                documents=result.documents,
                tokens=result.total_tokens,
                windows=result.windows,
                charges=tuple((n, self.config.pricing.price(m)) for m, n in result.scored),
            )
        )
        self.observer.scored(result.model, result.documents, result.total_tokens)
        return result

    async def _admit(self, caller: Principal, documents: int) -> None:
        quota = caller.quota
        if quota.requests_per_second is None and quota.documents_per_minute is None:
            return
        # Not RateLimited: no wait would ever let it through.
        why_never = never_admitted(quota, documents)
        if why_never is not None:
            raise InvalidRequest(why_never, "documents")
        admission = await self.ledger.admit(caller.key_id, quota, documents)
        if not admission.allowed:
            raise RateLimited(admission.reason, retry_after_s=admission.retry_after_s)

    async def usage(self, caller: Principal, query: UsageQuery = UsageQuery()) -> dict:
        """The caller's stored totals, within `query`'s dates and grouped as it asks."""
        return await self.ledger.usage(caller.key_id, query)

    async def models_status(self) -> list[ModelStatus]:
        names = self.config.enabled_models
        infos, states = await asyncio.gather(
            asyncio.gather(*(self._describe(n) for n in names)), self.models.replica_states()
        )
        out = []
        for name, info in zip(names, infos):
            state = states.get(name)
            out.append(
                ModelStatus(
                    name=name,
                    deployment=self.deployments[name],
                    weights=info.get("weights"),
                    device=info.get("device"),
                    dtype=info.get("dtype"),
                    backend=info.get("backend"),
                    quantization=info.get("quantization"),
                    engine={k: v for k, v in info.items() if k not in ("model", "source")},
                    replicas=state.get("RUNNING", 0) if state is not None else None,
                    replicas_starting=state.get("STARTING", 0) if state is not None else None,
                    metadata=self.catalog.cards[name].public_metadata(),
                )
            )
        return out

    async def check_ready(self) -> list[str]:
        """The served models, once every one answers; raises `NotReady` naming the rest.
        From the background-refreshed value (`readiness`): a probe makes no model call."""
        not_ready = await self.readiness.not_ready()
        if not_ready:
            raise NotReady(f"models not ready: {', '.join(not_ready)}", retry_after_s=1)
        return self.config.enabled_models

    async def _not_ready_now(self) -> list[str]:
        names = self.config.enabled_models
        infos = await asyncio.gather(*(self._describe(n) for n in names))
        return [n for n, info in zip(names, infos) if not info]

    def routing_state(self) -> dict:
        """What budget routing sees now: per-model measured rate, queue and stats age;
        default budget, cascade, splits and shadow agreement so far."""
        return self.router.describe()

    async def _describe(self, name: str) -> dict:
        try:
            return await asyncio.wait_for(self.models.describe(name), timeout=READY_TIMEOUT_S)
        except Exception:
            return {}

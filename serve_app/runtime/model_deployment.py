"""One Ray Serve deployment class, bound once per enabled model. A thin layer: the engine
does the work; this wires it to `@serve.batch`, runtime `user_config`, Serve's lifecycle,
and the replica's own measurements (stats for routing, queue and inference metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from ray import serve

from serve_app.config import BatchingSettings, ModelDeploymentConfig
from serve_app.model.checkpoints import ensure_checkpoint
from serve_app.model.engine import CrossEncoderEngine
from serve_app.model.packing import PackingLimits
from serve_app.model.stats import ModelStatsSnapshot, ReplicaStats
from serve_app.model.tokenization import EncodedPairs
from serve_app.runtime.metrics import ReplicaMetrics

logger = logging.getLogger("ray.serve")


@serve.deployment
class RerankModel:
    def __init__(self, config: ModelDeploymentConfig):
        self.config = config
        source = ensure_checkpoint(config)
        self.engine = CrossEncoderEngine.from_config(config, source, torch.cuda.is_available())
        self.packing = PackingLimits.from_settings(config.batching)
        # One thread runs the model, so the event loop keeps gathering the next batch
        # while the current one computes.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="forward", initializer=self.engine.use_this_thread
        )
        self.stats_recorder = ReplicaStats()
        self.metrics = ReplicaMetrics(config.name)
        # On the forward thread: per-thread runtime state (cuBLAS, OpenMP) is what the
        # warm-up is for.
        self._executor.submit(self.engine.warmup, self.packing).result()
        if self.engine.random_weights:
            logger.warning(
                "%s: RANDOM WEIGHTS loaded from %s. This is a demo checkpoint of the real "
                "architecture; its scores are meaningless.",
                config.name,
                source,
            )
        logger.info("%s ready: %s", config.name, self.engine.describe())

    def reconfigure(self, user_config: dict) -> None:
        batching = BatchingSettings.model_validate(user_config)
        self.packing = PackingLimits.from_settings(batching)
        self._score_batch.set_max_batch_size(batching.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def score(self, pairs: EncodedPairs) -> np.ndarray:
        """Logits of one request's pairs (already tokenized by the ingress)."""
        tokens = pairs.total_tokens
        self.stats_recorder.request_started(tokens)
        try:
            return await self._score_batch((pairs, time.perf_counter()))
        finally:
            self.stats_recorder.request_finished(tokens)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[tuple[EncodedPairs, float]]) -> list[np.ndarray]:
        """`requests`: (pairs, when `score` received them)."""
        pairs = [p for p, _ in requests]
        run = partial(self.engine.score, pairs, self.packing)
        started = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        seconds = time.perf_counter() - started
        self.stats_recorder.record_batch(seconds, sum(p.total_tokens for p in pairs))
        for _, received in requests:
            self.metrics.observe(started - received, seconds)
        return logits

    async def stats(self) -> ModelStatsSnapshot:
        """Recent service rate and held load, for the ingress's budget router (cheap)."""
        return self.stats_recorder.snapshot()

    def describe(self) -> dict:
        return {"model": self.config.name, **self.engine.describe()}

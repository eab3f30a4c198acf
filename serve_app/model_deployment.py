"""One Ray Serve deployment class, bound once per enabled model. A thin layer: the engine
does the work; this wires it to `@serve.batch`, runtime `user_config` and Serve's lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from ray import serve

from serve_app.config import BatchingSettings, ModelDeploymentConfig
from serve_app.engine import CrossEncoderEngine
from serve_app.model_stats import ModelStatsSnapshot, ReplicaStats
from serve_app.tokenization import EncodedPairs

logger = logging.getLogger("ray.serve")


@serve.deployment
class RerankModel:
    def __init__(self, config: ModelDeploymentConfig):
        self.config = config
        source = config.ensure_source()
        self.engine = CrossEncoderEngine(
            source,
            dtype=config.dtype,
            cpu_threads=config.cpu_threads or max(1, int(config.num_cpus)),
            gpu_memory_fraction=config.num_gpus or None,
        )
        self.batching = config.batching
        # One thread runs the model, so the event loop keeps gathering the next batch
        # while the current one computes.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="forward", initializer=self.engine.use_this_thread
        )
        self.stats_recorder = ReplicaStats()
        self.engine.warmup()
        if self.engine.random_weights:
            logger.warning(
                "%s: RANDOM WEIGHTS loaded from %s. This is a demo checkpoint of the real "
                "architecture; its scores are meaningless.",
                config.name,
                source,
            )
        logger.info("%s ready: %s", config.name, self.engine.describe())

    def reconfigure(self, user_config: dict) -> None:
        self.batching = BatchingSettings.model_validate(user_config)
        self._score_batch.set_max_batch_size(self.batching.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    async def score(self, pairs: EncodedPairs) -> np.ndarray:
        """Logits of one request's pairs (already tokenized by the ingress)."""
        tokens = pairs.total_tokens
        self.stats_recorder.request_started(tokens)
        try:
            return await self._score_batch(pairs)
        finally:
            self.stats_recorder.request_finished(tokens)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[EncodedPairs]) -> list[np.ndarray]:
        run = partial(self.engine.score, requests, self.batching.packing)
        started = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        self.stats_recorder.record_batch(
            time.perf_counter() - started, sum(r.total_tokens for r in requests)
        )
        return logits

    async def stats(self) -> ModelStatsSnapshot:
        """Recent service rate and held load, for the ingress's budget router (cheap)."""
        return self.stats_recorder.snapshot()

    def describe(self) -> dict:
        return {"model": self.config.name, **self.engine.describe()}

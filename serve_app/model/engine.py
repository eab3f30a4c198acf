"""The cross-encoder engine: one interface whatever runs the forward pass.

Pairs arrive already tokenized (see `tokenization.py`). The engine packs them into
length-sorted batches under a token budget and pads them (`packing.py`), hands each batch
to its backend (`backends/`: torch, ONNX Runtime or OpenVINO), and returns one float32
logit per pair in the requests' document order. Knows nothing of Ray, HTTP or text.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
from transformers import AutoConfig

from serve_app.config import BackendChoice, ModelDeploymentConfig, Quantization
from serve_app.model.backends import (
    Backend,
    Device,
    EngineStartError,
    has_segments,
    load_backend,
    resolve_backend,
    select_device,
)
from serve_app.model.checkpoints import RANDOM_INIT_MARKER
from serve_app.model.packing import PackingLimits, padded_batches
from serve_app.model.tokenization import EncodedPairs

logger = logging.getLogger(__name__)


class CrossEncoderEngine:
    def __init__(
        self,
        source: str,
        *,
        name: str | None = None,
        backend: BackendChoice = "auto",
        quantization: Quantization = "none",
        device: Device = "cpu",
        dtype: str = "auto",
        cpu_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
        export_cache: str | None = None,
        calibration_pairs: str | None = None,
    ):
        self.source = source
        self.name = name or source
        config = AutoConfig.from_pretrained(source)
        if getattr(config, "num_labels", None) != 1:
            raise EngineStartError(self.name, backend, "expected a cross-encoder with one logit")
        self.random_weights = bool(getattr(config, RANDOM_INIT_MARKER, False))
        self.max_length = config.max_position_embeddings
        self.segments = has_segments(config)
        self.vocab_size = config.vocab_size
        chosen = resolve_backend(self.name, backend, quantization, device)
        self.backend: Backend = load_backend(
            chosen,
            source,
            model=self.name,
            quantization=quantization,
            device=device,
            dtype=dtype,
            cpu_threads=cpu_threads,
            gpu_memory_fraction=gpu_memory_fraction,
            export_cache=export_cache,
            calibration_pairs=calibration_pairs,
            segments=self.segments,
        )
        self.device: Device = device

    @classmethod
    def from_config(
        cls, config: ModelDeploymentConfig, source: str, cuda_available: bool
    ) -> CrossEncoderEngine:
        device = select_device(
            config.name, config.num_gpus, cuda_available, config.allow_cpu_fallback
        )
        if device == "cpu" and config.num_gpus > 0:
            logger.warning(
                "%s: num_gpus=%s but no CUDA here; running on CPU (allow_cpu_fallback)",
                config.name,
                config.num_gpus,
            )
        return cls(
            source,
            name=config.name,
            backend=config.backend,
            quantization=config.quantization,
            device=device,
            dtype=config.dtype,
            cpu_threads=config.cpu_threads or max(1, int(config.num_cpus)),
            gpu_memory_fraction=(config.num_gpus or None) if device == "cuda" else None,
            calibration_pairs=config.calibration_pairs,
        )

    def use_this_thread(self) -> None:
        """Per-thread runtime settings, for the thread that runs forward passes."""
        self.backend.use_this_thread()

    def score(
        self, requests: list[EncodedPairs], limits: PackingLimits = PackingLimits.from_settings()
    ) -> list[np.ndarray]:
        """One float32 logit per pair, per request, in the requests' document order."""
        sizes = [len(r) for r in requests]
        logits = np.empty(sum(sizes), dtype=np.float32)
        # Launch every batch before reading any result back: on a GPU the host pads the
        # next batch while the device computes this one; one copy back at the end.
        order, launched = [], []
        for batch in padded_batches(requests, limits, self.backend.pad_multiple):
            order.append(batch.pairs)
            launched.append(self.backend.launch(batch.ids, batch.lengths, batch.heads))
        if launched:
            logits[np.concatenate(order)] = self.backend.collect(launched)
        offsets = np.cumsum([0] + sizes)
        return [logits[a:b] for a, b in zip(offsets, offsets[1:])]

    def warmup(self, limits: PackingLimits = PackingLimits.from_settings()) -> None:
        """Run the paths production takes before the first user does: padded, masked,
        multi-row batches. On CUDA, up to the full token budget at short, middle and full
        length, so allocator growth and kernel selection happen now. Call it on the
        thread that will run forward passes: cuBLAS and cuDNN state is per thread."""
        # Any id the embedding has: what the tokens are doesn't change what runs.
        token = min(1996, self.vocab_size - 1)
        head = np.full(10, token, dtype=np.int32)
        widths = [32, 128, self.max_length] if self.device == "cuda" else [32, self.max_length]
        # Priced so that the packer keeps each width's rows in one batch.
        one_pass = replace(limits, batch_overhead_tokens=10**9)
        for width in widths:
            rows = 4 if self.device == "cpu" else limits.max_batch_tokens // width
            rows = max(2, min(rows, limits.max_batch_docs))
            # All rows but the first one token short: the batch has padding, hence a mask.
            pair_lengths = np.full(rows, width - 1, dtype=np.int32)
            pair_lengths[0] = width
            doc_lengths = pair_lengths - len(head)
            docs = np.full(int(doc_lengths.sum()), token, dtype=np.int32)
            self.score([EncodedPairs(head, docs, doc_lengths)], one_pass)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            **self.backend.describe(),
            "weights": "random" if self.random_weights else "pretrained",
        }

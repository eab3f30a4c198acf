"""The cross-encoder engine: one interface whatever runs the forward pass.

Pairs arrive already tokenized (see `tokenization.py`). The engine packs them into
length-sorted batches under a token budget and pads them (`packing.py`), hands each batch
to its backend (`backends/`: torch, ONNX Runtime or OpenVINO), and returns one float32
logit per pair in the requests' document order. Knows nothing of Ray, HTTP or text.

Before anything loads, `check_checkpoint` decides whether the checkpoint can be served
at all: transformers must load it as a sequence classifier, head included (a checkpoint
published with its own model code cannot be), and a checkpoint with several labels needs
a `score_label` naming the logit that is the score. It fails with an `EngineStartError`
naming the model; the builder runs it before deploying (see `runtime/builder.py`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
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
from serve_app.model.tokenization import EncodedPairs, position_limit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointFacts:
    """What the engine needs to know of a checkpoint that `check_checkpoint` accepted."""

    model_type: str
    num_labels: int
    score_column: int  # which logit is the score
    segments: bool  # BERT-style token types (see `has_segments`)
    max_length: int  # tokens one pair may have, special tokens included
    vocab_size: int
    random_weights: bool


def check_checkpoint(
    name: str,
    source: str,
    score_label: str | int | None = None,
    backend: str = "auto",
    default_score_label: str | int | None = None,
) -> CheckpointFacts:
    """Whether transformers can run `source` as a sequence classifier, and which logit
    is the score; raises `EngineStartError` naming `name` and the reason when not.
    `default_score_label` (the catalog card's) applies to checkpoints with several labels
    when `score_label` is not given.

    Reads the config, and the weight names where the weights are on this machine (a
    local directory, or a hub id already in the cache): a checkpoint without weights for
    the classifier's head would load with a random head, silently; it is refused."""
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - unknown model type, custom code, missing files
        own_code = _own_code(source)
        cause = (
            f"it needs its own model code ({own_code}), which is not run here; " if own_code else ""
        )
        raise EngineStartError(
            name,
            backend,
            f"transformers cannot load {source!r} as a sequence classifier: {cause}"
            f"{type(e).__name__}: {str(e).splitlines()[0]}",
        ) from e
    classifier = _sequence_classifier(config.model_type)
    if classifier is None:
        raise EngineStartError(
            name,
            backend,
            f"{source!r} is a {config.model_type!r} model, which transformers has no "
            "sequence classifier for",
        )
    published = list(getattr(config, "architectures", None) or [])
    if published and classifier not in published:
        raise EngineStartError(
            name,
            backend,
            f"{source!r} is published as {', '.join(published)}, not {classifier}: "
            "transformers cannot load it as a sequence classifier (a model with its own "
            "code is not run here; its head would start at random)",
        )
    check_head_weights(name, source, backend, config)
    return CheckpointFacts(
        model_type=config.model_type,
        num_labels=config.num_labels,
        score_column=score_column(
            name,
            config,
            default_score_label if score_label is None and config.num_labels > 1 else score_label,
            backend,
        ),
        segments=has_segments(config),
        max_length=position_limit(config),
        vocab_size=config.vocab_size,
        random_weights=bool(getattr(config, RANDOM_INIT_MARKER, False)),
    )


def _own_code(source: str) -> str | None:
    """The classes a checkpoint's config maps to its own code (`auto_map`), if any."""
    path = _local_file(source, "config.json")
    try:
        auto_map = json.loads(path.read_text()).get("auto_map") if path else None
    except (OSError, ValueError):
        return None
    return ", ".join(f"{k}: {v}" for k, v in auto_map.items()) if auto_map else None


def check_head_weights(name: str, source: str, backend: str, config: Any = None) -> None:
    """Raise `EngineStartError` if the checkpoint's weights, where they are on this machine,
    lack any of a sequence classifier's (the head, say): transformers would start those at
    random and only warn. Run again once a replica has loaded the model, when a hub
    checkpoint's weights are in the cache."""
    config = config if config is not None else AutoConfig.from_pretrained(source)
    missing = missing_weights(source, config)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise EngineStartError(
            name,
            backend,
            f"{source!r} has no weights for {shown}: as a "
            f"{_sequence_classifier(config.model_type)} they would start at random (a "
            "checkpoint with its own head code is not run here)",
        )


def _sequence_classifier(model_type: str) -> str | None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type)


def score_column(name: str, config: Any, score_label: str | int | None, backend: str) -> int:
    """The logit that is the score: the only one, or the label `score_label` names (by
    its name in `id2label`, any case, or by index)."""
    labels = {int(i): str(label) for i, label in (config.id2label or {}).items()}
    n = config.num_labels
    listed = ", ".join(f"{i}: {labels.get(i, '?')!r}" for i in range(n))
    if score_label is None:
        if n == 1:
            return 0
        raise EngineStartError(
            name,
            backend,
            f"the checkpoint has {n} labels ({listed}); set `score_label` to the one whose "
            "logit is the score (its name or index)",
        )
    if isinstance(score_label, int) and not isinstance(score_label, bool):
        if 0 <= score_label < n:
            return score_label
    else:
        wanted = str(score_label).strip().lower()
        matches = [i for i in range(n) if labels.get(i, "").lower() == wanted]
        if len(matches) == 1:
            return matches[0]
    raise EngineStartError(
        name, backend, f"score_label {score_label!r} is none of the checkpoint's labels ({listed})"
    )


def on_this_machine(source: str) -> bool:
    """Whether the checkpoint's config can be read here without a download."""
    return _local_file(source, "config.json") is not None


def _local_file(source: str, filename: str) -> Path | None:
    """`filename` of the checkpoint if it is on this machine (a directory, or the hub
    cache); None otherwise: nothing is downloaded to check it."""
    local = Path(os.path.expanduser(source))
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, filename)
    except Exception:  # noqa: BLE001 - not a hub id either
        return None
    return Path(found) if isinstance(found, str) else None


def _saved_weight_names(source: str) -> set[str] | None:
    """The tensor names the checkpoint's weights hold, read without loading the tensors;
    None when its weights are not on this machine."""
    index = _local_file(source, "model.safetensors.index.json")
    if index is not None:
        return set(json.loads(index.read_text())["weight_map"])
    single = _local_file(source, "model.safetensors")
    if single is not None:
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return set(f.keys())
    legacy = _local_file(source, "pytorch_model.bin")
    if legacy is not None:
        import torch

        return set(torch.load(legacy, map_location="cpu", weights_only=True, mmap=True))
    return None


def missing_weights(source: str, config: Any) -> list[str]:
    """Weights a sequence classifier of `config` has and the checkpoint lacks (the head,
    for a checkpoint saved from a bare encoder or another model class); empty when the
    checkpoint's weights are not on this machine to look at."""
    saved = _saved_weight_names(source)
    if saved is None:
        return []
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    expected = set(model.state_dict())
    # Old checkpoints name LayerNorm parameters gamma/beta; transformers renames them.
    saved = {k.replace("LayerNorm.gamma", "LayerNorm.weight") for k in saved}
    saved = {k.replace("LayerNorm.beta", "LayerNorm.bias") for k in saved}
    prefix = f"{model.base_model_prefix}."
    if not any(k.startswith(prefix) for k in saved):  # saved from the bare encoder
        saved = {prefix + k for k in saved}
    return sorted(expected - saved)


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
        score_label: str | int | None = None,
        default_score_label: str | int | None = None,
    ):
        self.source = source
        self.name = name or source
        facts = check_checkpoint(self.name, source, score_label, backend, default_score_label)
        self.facts = facts
        self.random_weights = facts.random_weights
        self.max_length = facts.max_length
        self.segments = facts.segments
        self.vocab_size = facts.vocab_size
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
            score_column=facts.score_column,
        )
        # A hub checkpoint's weights are in the cache only now: look at them again.
        check_head_weights(self.name, source, chosen)
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
            score_label=config.score_label,
            default_score_label=config.card().score_label,
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
            "model_type": self.facts.model_type,
            "num_labels": self.facts.num_labels,
            "score_column": self.facts.score_column,
        }

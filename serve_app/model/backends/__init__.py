"""Inference backends: one file per runtime, one interface for the engine.

The engine (`serve_app/model/engine.py`) owns what is common: packing pairs into
length-sorted batches, padding them, and putting the logits back in request order. A
backend only runs one padded batch. `launch` may return before the result is ready (torch
on CUDA queues work on the device); `collect` reads every launched batch back at once.

Choosing a backend (`resolve_backend`) is plain Python, tested without any runtime.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Protocol

import numpy as np

from serve_app.config import BackendChoice, Quantization

BackendName = Literal["torch", "onnx", "openvino"]
Device = Literal["cpu", "cuda"]

# On CPU, `auto` takes the first of these that is installed. Both ONNX Runtime and
# OpenVINO equal torch fp32 within 1e-6 and beat it on CPU (docs/PERFORMANCE.md).
CPU_PREFERENCE: tuple[BackendName, ...] = ("onnx", "openvino", "torch")
_PACKAGE = {"onnx": "onnxruntime", "openvino": "openvino", "torch": "torch"}


class EngineStartError(RuntimeError):
    """A replica cannot run its model as configured. Raised at start, never later: a
    replica does not silently fall back to another backend or device."""

    def __init__(self, model: str, backend: str, cause: str):
        super().__init__(f"model {model!r}, backend {backend!r}: {cause}")


class Backend(Protocol):
    name: BackendName
    quantization: Quantization
    pad_multiple: int  # padded batch width is rounded up to a multiple of this

    def use_this_thread(self) -> None:
        """Per-thread runtime settings (thread counts), applied by the thread that will
        run `launch`."""

    def launch(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> Any:
        """Start one padded batch: `ids` (rows, width) int64, zero-padded; `lengths` each
        row's real tokens; `heads` each row's query part with its special tokens (segment
        0; the document part is segment 1 for models that have segments)."""

    def collect(self, launched: list[Any]) -> np.ndarray:
        """float32 logits of the launched batches, concatenated in launch order."""

    def describe(self) -> dict[str, Any]: ...


class GraphBackend:
    """What ONNX Runtime and OpenVINO share: an exported graph on CPU fed ids, mask and
    (where the model has them) segment ids in numpy, run synchronously on the forward
    thread, with its own thread pool. A subclass sets `path`, `quantization`,
    `cpu_threads`, `segments`, `score_column`, `_inputs` (the graph's input names) and
    `runtime` (its package and version), and implements `_run`."""

    pad_multiple = 1
    name: BackendName
    quantization: Quantization
    cpu_threads: int | None
    segments: bool
    score_column: int
    path: Any
    runtime: dict[str, str]
    _inputs: set[str]

    def use_this_thread(self) -> None:
        """The runtime owns its thread pool: nothing per calling thread."""

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's first output, (rows, 1) logits."""
        raise NotImplementedError

    def launch(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> np.ndarray:
        inputs = cpu_inputs(ids, lengths, heads, self.segments)
        return self._run({k: v for k, v in inputs.items() if k in self._inputs})[
            :, self.score_column
        ]

    def collect(self, launched: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(launched).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "quantization": self.quantization,
            "device": "cpu",
            "dtype": "int8" if self.quantization == "int8" else "float32",
            "cpu_threads": self.cpu_threads,
            "file": self.path.name,
            **self.runtime,
        }


def installed(backend: BackendName) -> bool:
    return importlib.util.find_spec(_PACKAGE[backend]) is not None


def resolve_backend(
    model: str,
    requested: BackendChoice,
    quantization: Quantization,
    device: Device,
    available: frozenset[BackendName] | None = None,
) -> BackendName:
    """The backend a replica runs, or an `EngineStartError` saying why none fits.

    CUDA runs torch (fp16 by default). On CPU `auto` takes the fastest exact backend
    installed; int8 changes scores, so it is only ever used when asked for, and needs a
    backend with a quantized path (ONNX Runtime or OpenVINO)."""
    if available is None:
        available = frozenset(b for b in CPU_PREFERENCE if installed(b))
    if device == "cuda":
        if requested not in ("auto", "torch"):
            raise EngineStartError(model, requested, "runs on CPU only; CUDA replicas run torch")
        if quantization != "none":
            raise EngineStartError(model, "torch", "int8 is a CPU path; CUDA runs torch fp16")
        return "torch"
    if requested == "auto":
        candidates = [b for b in CPU_PREFERENCE if b in available]
        if quantization != "none":
            candidates = [b for b in candidates if b != "torch"]
        if not candidates:
            raise EngineStartError(
                model, "auto", "no backend with an int8 path installed (onnxruntime, openvino)"
            )
        return candidates[0]
    if requested not in available:
        raise EngineStartError(model, requested, f"package {_PACKAGE[requested]!r} not installed")
    if requested == "torch" and quantization != "none":
        raise EngineStartError(model, "torch", "int8 needs backend onnx or openvino")
    return requested


def select_device(
    model: str, num_gpus: float, cuda_available: bool, allow_cpu_fallback: bool
) -> Device:
    """Follow the config, not the machine: Ray no longer hides GPUs from actors that
    asked for none, so a CPU replica on a GPU node would otherwise use the GPU outside
    Ray's accounting. A replica given a GPU share without CUDA is a start-up error unless
    the config explicitly allows CPU (demos and tests on logical GPUs do)."""
    if num_gpus <= 0:
        return "cpu"
    if cuda_available:
        return "cuda"
    if allow_cpu_fallback:
        return "cpu"
    raise EngineStartError(
        model,
        "torch",
        f"num_gpus={num_gpus} but CUDA is not available here "
        "(set allow_cpu_fallback: true to run it on CPU deliberately)",
    )


def has_segments(config: Any) -> bool:
    """Whether the model tells query from document by segment ids (BERT, ELECTRA: two
    token types). XLM-RoBERTa has one token type and DistilBERT none: all zeros or absent."""
    return getattr(config, "type_vocab_size", 0) >= 2


def cpu_inputs(
    ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray, segments: bool = True
) -> dict[str, np.ndarray]:
    """The model inputs as an exported graph takes them (int64, 2-D mask); a graph that
    has no `token_type_ids` input is fed only the others."""
    positions = np.arange(ids.shape[1])[None, :]
    mask = positions < lengths[:, None]
    document = (positions >= heads[:, None]) & mask if segments else np.zeros_like(mask)
    return {
        "input_ids": ids,
        "attention_mask": mask.astype(np.int64),
        "token_type_ids": document.astype(np.int64),
    }


def load_backend(
    name: BackendName,
    source: str,
    *,
    model: str,
    quantization: Quantization,
    device: Device,
    dtype: str,
    cpu_threads: int | None,
    gpu_memory_fraction: float | None,
    export_cache: str | None,
    calibration_pairs: str | None,
    segments: bool = True,
    score_column: int = 0,
) -> Backend:
    """Import only the runtime asked for: a torch replica never loads ONNX Runtime."""
    try:
        if name == "torch":
            from serve_app.model.backends.torch_backend import TorchBackend

            return TorchBackend(
                source,
                device=device,
                dtype=dtype,
                cpu_threads=cpu_threads,
                gpu_memory_fraction=gpu_memory_fraction,
                segments=segments,
                score_column=score_column,
            )
        if dtype not in ("auto", "float32"):
            raise EngineStartError(model, name, f"dtype {dtype} is a CUDA setting; CPU runs fp32")
        if name == "onnx":
            from serve_app.model.backends.onnx_backend import OnnxBackend

            backend = OnnxBackend(
                source, quantization=quantization, cpu_threads=cpu_threads, cache=export_cache
            )
        else:
            from serve_app.model.backends.openvino_backend import OpenVinoBackend

            backend = OpenVinoBackend(
                source,
                quantization=quantization,
                cpu_threads=cpu_threads,
                cache=export_cache,
                calibration_pairs=calibration_pairs,
            )
        backend.segments, backend.score_column = segments, score_column
        return backend
    except EngineStartError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure names model, backend, cause
        raise EngineStartError(model, name, f"{type(e).__name__}: {e}") from e

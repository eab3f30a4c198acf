"""PyTorch eager: the CUDA path (fp16 by default) and the CPU reference.

On CUDA every batch is launched without waiting, so nothing in `launch` may read a
device value on the host: the mask is built from lengths the host already knows, and
handed to the model in the 4-D additive form that transformers passes through as is (a
2-D mask makes it test `mask.all()` on the host every pass, a device sync).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.config import Quantization
from serve_app.model.backends import Device

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def additive_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, 1, width): 0 on real tokens, the dtype's minimum on padding."""
    positions = torch.arange(width, device=lengths.device)[None, :]
    padding = (positions >= lengths[:, None])[:, None, None, :]
    return torch.zeros(padding.shape, dtype=dtype, device=lengths.device).masked_fill_(
        padding, torch.finfo(dtype).min
    )


def sdpa_backends() -> list[Any]:
    """cuDNN attention (torch's first choice on sm90) keeps a compiled plan per shape, and
    packed batches come in arbitrary shapes: each new one pays a plan build. Flash (no
    mask) and memory-efficient (with a mask) need no plans."""
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


class TorchBackend:
    name = "torch"
    quantization: Quantization = "none"

    def __init__(
        self,
        source: str,
        *,
        device: Device,
        dtype: str = "auto",
        cpu_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
        segments: bool = True,
        score_column: int = 0,
    ):
        self.segments = segments
        self.score_column = score_column
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = ("float16" if on_gpu else "float32") if dtype == "auto" else dtype
        self.cpu_threads = cpu_threads
        # Tensor cores want widths in multiples of 8; 16 also bounds the shapes seen.
        self.pad_multiple = 16 if on_gpu else 1
        self.use_this_thread()
        if on_gpu and gpu_memory_fraction:
            # Replicas share a GPU by fraction: hold each to its share of the memory too.
            # torch wants an index here (None: the current device, where "cuda" loads);
            # it rejects an unindexed `torch.device("cuda")`.
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, gpu_memory_fraction), self.device.index
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=_DTYPES[self.dtype], attn_implementation="sdpa"
        )
        self.model.to(self.device).eval()
        self._torch_dtype = _DTYPES[self.dtype]
        self._sdpa = sdpa_backends() if on_gpu else None

    def use_this_thread(self) -> None:
        """OpenMP thread counts are per thread and new threads start from
        OMP_NUM_THREADS (Ray sets it to the actor's CPUs)."""
        if self.device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def launch(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> torch.Tensor:
        """Logits on the device, not waited for."""
        rows, width = ids.shape
        padded = bool(lengths.min() < width)  # known on the host: no device read
        # One host-to-device copy per batch: ids, lengths and heads in one buffer.
        packed = torch.from_numpy(
            np.concatenate([ids.reshape(-1), lengths, heads]).astype(np.int64, copy=False)
        )
        if self.device.type == "cuda":
            packed = packed.pin_memory().to(self.device, non_blocking=True)
        input_ids = packed[: rows * width].view(rows, width)
        lengths_t = packed[rows * width : rows * width + rows]
        heads_t = packed[rows * width + rows :]
        inputs = {"input_ids": input_ids}
        if padded:
            inputs["attention_mask"] = additive_mask(lengths_t, width, self._torch_dtype)
        if self.segments:
            positions = torch.arange(width, device=self.device)[None, :]
            document = (positions >= heads_t[:, None]) & (positions < lengths_t[:, None])
            inputs["token_type_ids"] = document.long()
        with torch.inference_mode(), self._attention():
            return self.model(**inputs).logits[:, self.score_column]

    def _attention(self):
        if self._sdpa is None:
            from contextlib import nullcontext

            return nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self._sdpa)

    def collect(self, launched: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(launched).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "quantization": self.quantization,
            "device": str(self.device),
            "dtype": self.dtype,
        }
        if self.device.type == "cuda":
            info["attention"] = "sdpa: " + ", ".join(b.name.lower() for b in self._sdpa or [])
            info["cudnn"] = torch.backends.cudnn.version()
            info["torch_cuda"] = torch.version.cuda
        else:
            info["cpu_threads"] = self.cpu_threads or torch.get_num_threads()
        return info

"""ONNX Runtime on CPU: the exported (or shipped) graph with every graph optimisation on,
fp32 by default, dynamic int8 when asked."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from serve_app.config import Quantization
from serve_app.model.backends import cpu_inputs
from serve_app.model.exports import onnx_file


class OnnxBackend:
    name = "onnx"
    pad_multiple = 1

    def __init__(
        self,
        source: str,
        *,
        quantization: Quantization = "none",
        cpu_threads: int | None = None,
        cache: str | None = None,
    ):
        self.quantization = quantization
        self.path = onnx_file(source, quantization, cache)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One batch at a time runs on the replica's forward thread: its cores go to
        # intra-op parallelism, none to a second pool.
        options.intra_op_num_threads = cpu_threads or 0
        options.inter_op_num_threads = 1
        self.cpu_threads = cpu_threads
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def use_this_thread(self) -> None:
        """ONNX Runtime owns its thread pool: nothing per calling thread."""

    def launch(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> np.ndarray:
        feed = {k: v for k, v in cpu_inputs(ids, lengths, heads).items() if k in self._inputs}
        return self.session.run(None, feed)[0][:, 0]

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
            "onnxruntime": ort.__version__,
        }

"""ONNX Runtime on CPU: the exported (or shipped) graph with every graph optimisation on,
fp32 by default, dynamic int8 when asked."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from serve_app.config import Quantization
from serve_app.model.backends import GraphBackend
from serve_app.model.exports import onnx_file


class OnnxBackend(GraphBackend):
    name = "onnx"
    runtime = {"onnxruntime": ort.__version__}

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

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

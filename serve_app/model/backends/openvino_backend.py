"""OpenVINO on CPU: the shipped IR or our ONNX export, compiled for fp32 inference
(never the bf16 a newer CPU would otherwise pick), or static int8 when asked: the shipped
int8 IR, or NNCF post-training quantization calibrated on realistic pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from transformers import AutoConfig

from serve_app.config import Quantization
from serve_app.model.backends import GraphBackend, cpu_inputs, has_segments
from serve_app.model.exports import OPENVINO_FP32, OPENVINO_INT8, cached, onnx_file, shipped_file

logger = logging.getLogger(__name__)

CALIBRATION_BATCHES = 10


class OpenVinoBackend(GraphBackend):
    name = "openvino"
    runtime = {"openvino": ov.__version__}

    def __init__(
        self,
        source: str,
        *,
        quantization: Quantization = "none",
        cpu_threads: int | None = None,
        cache: str | None = None,
        calibration_pairs: str | None = None,
    ):
        self.quantization = quantization
        self.cpu_threads = cpu_threads
        core = ov.Core()
        if quantization == "int8":
            self.path = shipped_file(source, OPENVINO_INT8) or cached(
                source,
                "openvino_model_int8.xml",
                lambda _dir, out: _quantize(core, source, cache, calibration_pairs, out),
                cache,
            )
        else:
            self.path = shipped_file(source, OPENVINO_FP32) or onnx_file(source, "none", cache)
        settings: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if cpu_threads:
            settings["INFERENCE_NUM_THREADS"] = cpu_threads
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", settings)
        self._inputs = {name for i in self.compiled.inputs for name in i.get_names()}
        self._request = self.compiled.create_infer_request()

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        # One request object, reused: batches run one at a time on the forward thread.
        return self._request.infer(feed)[self.compiled.output(0)].copy()


def _quantize(
    core: ov.Core, source: str, cache: str | None, calibration_pairs: str | None, out: Path
) -> None:
    try:
        import nncf
    except ImportError as e:
        raise RuntimeError("int8 on OpenVINO needs NNCF: pip install 'rerank-serve[int8]'") from e
    from serve_app.model.calibration import calibration_batches

    fp32 = core.read_model(str(onnx_file(source, "none", cache)))
    names = {name for i in fp32.inputs for name in i.get_names()}
    segments = has_segments(AutoConfig.from_pretrained(source))
    batches = [
        {k: v for k, v in cpu_inputs(*batch, segments).items() if k in names}
        for batch in calibration_batches(source, calibration_pairs, CALIBRATION_BATCHES)
    ]
    quantized = nncf.quantize(
        fp32,
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)

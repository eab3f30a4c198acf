"""ONNX and OpenVINO files for a checkpoint: the ones it ships, or our own export, cached.

The published ms-marco checkpoints ship `onnx/model.onnx`, quantized ONNX files and
`openvino/openvino_model.xml` beside the torch weights; where a checkpoint has them (a
local directory, or a hub repository reachable from here) they are used as they are.
Otherwise the transformers checkpoint is exported once and cached under
`RERANK_EXPORT_CACHE` (default `~/.cache/rerank-serve/exports`), keyed by the content of
its config and weights, and written to a temporary directory then renamed, so replicas
starting together never see half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_EXPORT_CACHE = "~/.cache/rerank-serve/exports"
ONNX_FP32 = "onnx/model.onnx"
OPENVINO_FP32 = "openvino/openvino_model.xml"
OPENVINO_INT8 = "openvino/openvino_model_qint8_quantized.xml"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def onnx_int8_candidates() -> list[str]:
    """Published dynamic-int8 ONNX files this CPU can run well, best first."""
    flags = _cpu_flags()
    names = []
    if platform.machine() in ("aarch64", "arm64"):
        names.append("onnx/model_qint8_arm64.onnx")
    if "avx512_vnni" in flags:
        names.append("onnx/model_qint8_avx512_vnni.onnx")
    if "avx512f" in flags:
        names.append("onnx/model_qint8_avx512.onnx")
    if "avx2" in flags:
        names.append("onnx/model_quint8_avx2.onnx")
    return names


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def shipped_file(source: str, relative: str) -> Path | None:
    """`relative` inside the checkpoint (with its weights file for an OpenVINO .xml), or
    None. A hub id is asked for through huggingface_hub, which honours HF_HUB_OFFLINE."""
    local = Path(os.path.expanduser(source))
    if local.is_dir():
        found = local / relative
        return found if found.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, relative))
        if relative.endswith(".xml"):
            hf_hub_download(source, relative[: -len(".xml")] + ".bin")
        return path
    except Exception:  # noqa: BLE001 - not shipped, or no hub: export instead
        return None


def checkpoint_dir(source: str) -> Path:
    local = Path(os.path.expanduser(source))
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, allow_patterns=["*.json", *_WEIGHT_FILES]))


def content_key(directory: Path) -> str:
    """Hash of the checkpoint's config and weights: a changed checkpoint gets a new export."""
    digest = hashlib.sha256()
    for name in ("config.json", *_WEIGHT_FILES):
        path = directory / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:24]


def cached(
    source: str, filename: str, make: Callable[[Path, Path], None], cache: str | None = None
) -> Path:
    """`filename` in this checkpoint's cache directory, made by `make(checkpoint, out)` into
    a temporary file first if missing. Concurrent callers each make their own and the
    rename keeps exactly one; none ever reads a partial file."""
    directory = checkpoint_dir(source)
    root = Path(
        os.path.expanduser(
            cache or os.environ.get("RERANK_EXPORT_CACHE", "") or DEFAULT_EXPORT_CACHE
        )
    )
    target = root / content_key(directory) / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        made = scratch / target.name
        make(directory, made)
        for extra in scratch.iterdir():  # e.g. an OpenVINO .bin next to its .xml
            if extra != made:
                os.replace(extra, target.parent / extra.name)
        os.replace(made, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("exported %s to %s", source, target)
    return target


def export_onnx(checkpoint: Path, out: Path) -> None:
    """fp32 ONNX with the published files' inputs (ids, 2-D mask, and segment ids for a
    model that has them) and dynamic batch and length. The example batch has padding so
    the traced graph keeps the mask."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from serve_app.model.backends import has_segments

    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    example = {"input_ids": ids, "attention_mask": mask}
    if has_segments(model.config):
        example["token_type_ids"] = torch.zeros_like(ids)
        example["token_type_ids"][:, 5:] = 1
    names = list(example)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(out),
            kwargs=example,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def quantize_onnx_int8(fp32: Path) -> Callable[[Path, Path], None]:
    """Dynamic int8 (weights int8 per channel, activations quantized per batch at run
    time): no calibration data, and ONNX Runtime's integer kernels on any x86 or ARM CPU."""

    def make(_checkpoint: Path, out: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)

    return make


def onnx_file(source: str, quantization: str, cache: str | None = None) -> Path:
    if quantization == "int8":
        for name in onnx_int8_candidates():
            if found := shipped_file(source, name):
                return found
        fp32 = onnx_file(source, "none", cache)
        return cached(source, "model_qint8_dynamic.onnx", quantize_onnx_int8(fp32), cache)
    return shipped_file(source, ONNX_FP32) or cached(source, "model.onnx", export_onnx, cache)

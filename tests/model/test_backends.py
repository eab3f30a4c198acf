"""Backend choice, device choice, start-up errors and the export cache: plain Python,
with CUDA availability and installed packages faked where the machine can't show them."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from serve_app.config import ModelDeploymentConfig
from serve_app.model import exports
from serve_app.model.backends import EngineStartError, resolve_backend, select_device
from serve_app.model.engine import CrossEncoderEngine
from serve_app.model.tokenization import PairEncoder
from tests.conftest import ALL_MODELS, checkpoint_path

ALL = frozenset({"torch", "onnx", "openvino"})
TINY = ALL_MODELS[0]


@pytest.mark.parametrize(
    ("requested", "quantization", "device", "available", "chosen"),
    [
        ("auto", "none", "cuda", ALL, "torch"),
        ("torch", "none", "cuda", ALL, "torch"),
        ("auto", "none", "cpu", ALL, "onnx"),
        ("auto", "none", "cpu", frozenset({"openvino", "torch"}), "openvino"),
        ("auto", "none", "cpu", frozenset({"torch"}), "torch"),
        ("auto", "int8", "cpu", ALL, "onnx"),
        ("openvino", "int8", "cpu", ALL, "openvino"),
        ("torch", "none", "cpu", ALL, "torch"),
    ],
)
def test_backend_choice(requested, quantization, device, available, chosen):
    assert resolve_backend("m", requested, quantization, device, available) == chosen


@pytest.mark.parametrize(
    ("requested", "quantization", "device", "available", "cause"),
    [
        ("onnx", "none", "cuda", ALL, "CPU only"),
        ("auto", "int8", "cuda", ALL, "int8 is a CPU path"),
        ("torch", "int8", "cpu", ALL, "int8 needs backend onnx or openvino"),
        ("auto", "int8", "cpu", frozenset({"torch"}), "no backend with an int8 path"),
        ("openvino", "none", "cpu", frozenset({"torch"}), "'openvino' not installed"),
    ],
)
def test_impossible_backends_fail_at_start_naming_model_backend_and_cause(
    requested, quantization, device, available, cause
):
    with pytest.raises(EngineStartError) as error:
        resolve_backend("cross-encoder/x", requested, quantization, device, available)
    message = str(error.value)
    assert "cross-encoder/x" in message and cause in message


def test_device_follows_the_config_not_the_machine():
    # A CPU replica on a GPU node stays on CPU: Ray no longer hides the GPU from it.
    assert select_device("m", 0, cuda_available=True, allow_cpu_fallback=False) == "cpu"
    assert select_device("m", 0.3, cuda_available=True, allow_cpu_fallback=False) == "cuda"
    assert select_device("m", 0.3, cuda_available=False, allow_cpu_fallback=True) == "cpu"
    with pytest.raises(EngineStartError, match="num_gpus=0.3 but CUDA is not available"):
        select_device("m", 0.3, cuda_available=False, allow_cpu_fallback=False)


def test_a_gpu_replica_without_cuda_fails_to_start(checkpoint_root):
    config = ModelDeploymentConfig(
        name=TINY, source=checkpoint_path(checkpoint_root, TINY), num_gpus=0.5
    )
    with pytest.raises(EngineStartError, match="TinyBERT-L2-v2"):
        CrossEncoderEngine.from_config(config, config.resolved_source(), cuda_available=False)


def test_a_backend_that_cannot_load_fails_at_start(checkpoint_root, tmp_path):
    """A broken shipped file is an error naming model and backend, not a quiet torch run."""
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_path(checkpoint_root, TINY), broken)
    (broken / "onnx").mkdir()
    (broken / "onnx" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(EngineStartError) as error:
        CrossEncoderEngine(str(broken), name="tiny", backend="onnx")
    assert "'tiny', backend 'onnx'" in str(error.value)


def test_shipped_files_are_used_as_they_are(checkpoint_root, tmp_path):
    """A checkpoint laid out like the published repositories (`onnx/model.onnx`) is
    loaded from there, not re-exported."""
    ship = tmp_path / "shipped"
    shutil.copytree(checkpoint_path(checkpoint_root, TINY), ship)
    (ship / "onnx").mkdir()
    exports.export_onnx(ship, ship / "onnx" / "model.onnx")
    cache = tmp_path / "cache"
    engine = CrossEncoderEngine(str(ship), backend="onnx", export_cache=str(cache))
    assert Path(engine.backend.path) == ship / "onnx" / "model.onnx"
    assert not cache.exists()


def test_export_cache_is_keyed_by_content_and_written_atomically(checkpoint_root, tmp_path):
    source = tmp_path / "ckpt"
    shutil.copytree(checkpoint_path(checkpoint_root, TINY), source)
    made: list[int] = []
    gate = threading.Barrier(4)

    def make(_checkpoint: Path, out: Path) -> None:
        gate.wait(timeout=30)  # all four writers are inside `make` at once
        made.append(1)
        out.write_bytes(b"x" * 100_000)

    with_results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: with_results.append(
                exports.cached(str(source), "f.bin", make, str(tmp_path / "c"))
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 4 and len(set(with_results)) == 1
    (target,) = set(with_results)
    assert target.read_bytes() == b"x" * 100_000
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no scratch left
    # The same content hits the cache; changed weights get a new entry.
    assert exports.cached(str(source), "f.bin", make, str(tmp_path / "c")) == target
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert exports.content_key(source) != target.parent.name


def test_int8_is_only_used_when_asked_and_stays_close(checkpoint_root, tmp_path):
    """int8 changes scores (docs/PERFORMANCE.md has by how much on the benchmark); here:
    it is labelled, and on random weights it still ranks like fp32."""
    from scipy.stats import spearmanr

    source = checkpoint_path(checkpoint_root, "cross-encoder/ms-marco-MiniLM-L6-v2")
    encoder = PairEncoder.from_pretrained(source, 64)
    words = "paris france capital city river museum tower bread wine history".split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, int(rng.integers(5, 60)))) for _ in range(64)]
    pairs = [encoder.encode("capital of france", docs)]
    fp32 = CrossEncoderEngine(source, backend="onnx", export_cache=str(tmp_path))
    int8 = CrossEncoderEngine(
        source, backend="onnx", quantization="int8", export_cache=str(tmp_path)
    )
    assert fp32.describe()["quantization"] == "none"
    assert int8.describe()["quantization"] == "int8" and int8.describe()["dtype"] == "int8"
    a, b = fp32.score(pairs)[0], int8.score(pairs)[0]
    assert not np.array_equal(a, b)
    assert spearmanr(a, b)[0] > 0.9


def test_export_cache_root_comes_from_the_environment(monkeypatch, tmp_path, checkpoint_root):
    monkeypatch.setenv("RERANK_EXPORT_CACHE", str(tmp_path / "env-cache"))
    path = exports.cached(
        checkpoint_path(checkpoint_root, TINY), "g", lambda _c, out: out.write_text("g")
    )
    assert str(path).startswith(str(tmp_path / "env-cache") + os.sep)

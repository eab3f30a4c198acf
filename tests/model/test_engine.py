"""The engine on random-initialised checkpoints of all five real architectures, against
the reference: sentence-transformers' CrossEncoder and the tokenizer's own pair encoding."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from serve_app.catalog import load_catalog
from serve_app.model.checkpoints import RANDOM_INIT_MARKER, write_random_checkpoint
from serve_app.model.engine import CrossEncoderEngine
from serve_app.model.packing import PackingLimits
from serve_app.model.tokenization import PairEncoder, pair_ids
from tests.conftest import ALL_MODELS, checkpoint_path

DEFAULT_LIMITS = PackingLimits.from_settings()

QUERY = "what is the capital of france"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "France's capital city, Paris, has a population of about two million.",
    "Bananas are yellow.",
    "Émile Zola wrote novels; naïve café résumé — UTF-8 text with accents.",
]


BACKENDS = ["torch", "onnx", "openvino"]


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module", params=[(m, b) for m in ALL_MODELS for b in BACKENDS], ids="-".join)
def engine(request, checkpoint_root, export_cache) -> CrossEncoderEngine:
    model, backend = request.param
    return CrossEncoderEngine(
        checkpoint_path(checkpoint_root, model),
        backend=backend,
        cpu_threads=2,
        export_cache=export_cache,
    )


@pytest.fixture(scope="module")
def encoder(checkpoint_root) -> PairEncoder:
    return PairEncoder.from_pretrained(checkpoint_path(checkpoint_root, ALL_MODELS[0]), 64)


def test_pairs_equal_the_tokenizers_own_pair_encoding(encoder):
    pairs = encoder.encode(QUERY, DOCS)
    reference = encoder.tokenizer([QUERY] * len(DOCS), DOCS)
    assert pair_ids(pairs) == reference["input_ids"]
    for types in reference["token_type_ids"]:
        assert types == [0] * len(pairs.head) + [1] * (len(types) - len(pairs.head))
    assert pairs.pair_lengths.tolist() == [len(x) for x in reference["input_ids"]]


def test_plain_text_shortcut_gives_the_tokenizers_own_ids_for_every_character(encoder):
    """Plain-text documents skip most of BERT's normaliser; each ASCII character, and some
    that are not plain, in several positions, must still give the reference's ids."""
    assert encoder._plain_documents is not None  # the family's tokenizer takes the shortcut
    chars = [chr(c) for c in range(128)] + list("\u00a0\u0085\u3000\u2028\ufffd\u00e9\u4e2d\u0301")
    docs = [
        d
        for c in chars
        for d in (c, f"a{c}b", f"Word{c}{c}Word  x{c}", f"{c} Capital-Case, {c}end")
    ]
    docs += DOCS + [
        "Tabs\tand\nnew\r\nlines",
        "\x0bvertical\x0cfeed\x1fsep",
        "x" * 300 + " and more",
    ]
    pairs = encoder.encode(QUERY, docs)
    reference = encoder.tokenizer(
        [QUERY] * len(docs), docs, truncation="only_second", max_length=encoder.max_length
    )
    got = pair_ids(pairs)
    assert [d for d, a, b in zip(docs, got, reference["input_ids"]) if a != b] == []


def test_concurrent_encodes_equal_serial_ones(encoder):
    """The ingress encodes in a thread pool with one encoder per vocabulary. Queries and
    documents are cut at different lengths; no call may see another's length."""
    jobs = [
        (
            f"query {i} " + "why " * 40 * (i % 3),
            ["word " * (50 + 37 * (i % 11)), "short", DOCS[3] * 9],
        )
        for i in range(400)
    ]
    serial = [pair_ids(encoder.encode(q, docs)) for q, docs in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: pair_ids(encoder.encode(*job)), jobs))
    assert [i for i, (a, b) in enumerate(zip(serial, together)) if a != b] == []


def test_one_encoder_serves_the_whole_family(checkpoint_root):
    prints = {PairEncoder.fingerprint(checkpoint_path(checkpoint_root, m), 64) for m in ALL_MODELS}
    assert len(prints) == 1


def test_logits_match_sentence_transformers_within_1e_4(engine, encoder):
    from sentence_transformers import CrossEncoder

    served = engine.score([encoder.encode(QUERY, DOCS)], replace(DEFAULT_LIMITS, max_batch_docs=3))[
        0
    ]
    reference = CrossEncoder(engine.source, device="cpu").predict(
        [(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(served, reference, atol=1e-4, rtol=0)
    assert np.argsort(-np.asarray(served)).tolist() == np.argsort(-reference).tolist()


def test_long_pairs_truncate_the_document_not_error(engine, encoder):
    pairs = encoder.encode("why " * 300, ["word " * 2000, "short"])
    assert pairs.pair_lengths[0] == 512
    (ids, _) = pair_ids(pairs)
    why = encoder.tokenizer.convert_tokens_to_ids("why")
    assert ids[: 2 + encoder.max_query_tokens] == [encoder.tokenizer.cls_token_id] + [why] * 64 + [
        encoder.tokenizer.sep_token_id
    ]
    assert ids[-1] == encoder.tokenizer.sep_token_id
    assert np.isfinite(engine.score([pairs])[0]).all()


def test_batching_does_not_change_scores(engine, encoder):
    requests = [(QUERY, DOCS), ("bananas", DOCS[:3])]
    together = engine.score(
        [encoder.encode(q, docs) for q, docs in requests],
        # A pass's overhead priced above any padding: all pairs go in one padded batch.
        replace(
            DEFAULT_LIMITS,
            max_batch_tokens=100_000,
            max_batch_docs=1000,
            batch_overhead_tokens=10**6,
        ),
    )
    one_by_one = [
        engine.score([encoder.encode(q, [d])], replace(DEFAULT_LIMITS, max_batch_docs=1))[0][0]
        for q, docs in requests
        for d in docs
    ]
    np.testing.assert_allclose(np.concatenate(together), one_by_one, atol=1e-5, rtol=0)


def test_random_checkpoints_are_labelled_and_deterministic(tmp_path, checkpoint_root, encoder):
    card = load_catalog().resolve("cross-encoder/ms-marco-TinyBERT-L2-v2")
    again = write_random_checkpoint(card, tmp_path / card.short_name)
    a = CrossEncoderEngine(str(again), backend="torch")
    b = CrossEncoderEngine(checkpoint_path(checkpoint_root, card.name), backend="torch")
    assert a.random_weights and a.describe()["weights"] == "random"
    assert getattr(a.backend.model.config, RANDOM_INIT_MARKER)
    pairs = [encoder.encode(QUERY, DOCS)]
    assert a.score(pairs)[0].tolist() == b.score(pairs)[0].tolist()


def _openmp_max_threads() -> int:
    """OpenMP's own per-thread setting (torch.get_num_threads() reports a global value)."""
    import ctypes
    from pathlib import Path

    (libgomp,) = (Path(torch.__file__).parent / "lib").glob("libgomp*.so*")
    return ctypes.CDLL(str(libgomp)).omp_get_max_threads()


def test_forward_thread_uses_the_configured_cpu_threads(checkpoint_root):
    """OpenMP thread counts are per thread: the replica's forward thread must set its own,
    or it runs on OMP_NUM_THREADS (1 under Ray) whatever `cpu_threads` says."""
    import threading

    from serve_app.config import ModelDeploymentConfig
    from serve_app.runtime.model_deployment import RerankModel

    fresh: list[int] = []
    probe = threading.Thread(target=lambda: fresh.append(_openmp_max_threads()))
    probe.start()
    probe.join()
    wanted = fresh[0] + 1  # differs from what a new thread gets by default
    before = torch.get_num_threads()
    try:
        tiny = ALL_MODELS[0]
        replica = RerankModel.func_or_class(
            ModelDeploymentConfig(
                name=tiny,
                source=checkpoint_path(checkpoint_root, tiny),
                cpu_threads=wanted,
                backend="torch",
            )
        )
        assert replica._executor.submit(_openmp_max_threads).result() == wanted
    finally:
        torch.set_num_threads(before)


class RecordingBackend:
    """Runs no model: each logit is the sum of its row's ids, so it names its pair."""

    name = "torch"
    quantization = "none"
    pad_multiple = 1

    def __init__(self) -> None:
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.threads: list[str] = []

    def use_this_thread(self) -> None:
        pass

    def launch(self, ids, lengths, heads):
        import threading

        self.batches.append((ids, lengths, heads))
        self.threads.append(threading.current_thread().name)
        return np.array([float(sum(row[:n])) for row, n in zip(ids.tolist(), lengths)])

    def collect(self, launched):
        return np.concatenate(launched).astype(np.float32)

    def describe(self) -> dict:
        return {"backend": self.name}


def engine_on(backend, device: str = "cpu", max_length: int = 512) -> CrossEncoderEngine:
    engine = CrossEncoderEngine.__new__(CrossEncoderEngine)
    engine.backend, engine.device, engine.max_length = backend, device, max_length
    engine.vocab_size = 30522
    return engine


def test_every_row_the_engine_runs_is_exactly_one_pairs_ids(encoder):
    """The padded id matrix, checked without a model: each row, cut at its length, is one
    pair's `[CLS] query [SEP] document [SEP]`, and each logit lands on its own pair."""
    requests = [
        encoder.encode(QUERY, DOCS),
        encoder.encode("bananas", DOCS[::-1] * 3),
        encoder.encode("a much longer query " * 5, DOCS[:2]),
    ]
    expected = sorted(tuple(ids) for r in requests for ids in pair_ids(r))
    for limits in (
        DEFAULT_LIMITS,
        replace(DEFAULT_LIMITS, max_batch_docs=3, batch_overhead_tokens=0),
    ):
        backend = RecordingBackend()
        logits = engine_on(backend).score(requests, limits)
        rows = []
        for ids, lengths, heads in backend.batches:
            assert all((row[n:] == 0).all() for row, n in zip(ids, lengths))
            rows += [tuple(row[:n].tolist()) for row, n in zip(ids, lengths)]
            segment_one = [row[h : n - 1] for row, h, n in zip(ids.tolist(), heads, lengths)]
            assert all(encoder.tokenizer.sep_token_id not in seg for seg in segment_one if seg)
        assert sorted(rows) == expected
        for r, out in zip(requests, logits):
            assert out.tolist() == [float(sum(ids)) for ids in pair_ids(r)]


def test_batches_are_padded_to_the_backends_multiple(encoder):
    backend = RecordingBackend()
    backend.pad_multiple = 16
    engine_on(backend).score([encoder.encode(QUERY, DOCS)], DEFAULT_LIMITS)
    widths = [ids.shape[1] for ids, _, _ in backend.batches]
    assert widths and all(w % 16 == 0 for w in widths)
    assert all(ids.shape[1] - lengths.max() < 16 for ids, lengths, _ in backend.batches)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_warmup_runs_padded_multi_row_batches_up_to_the_token_budget(device):
    """Production batches are padded and masked; the warm-up must take that path, and on
    CUDA fill the token budget so allocator growth happens before the first user."""
    backend = RecordingBackend()
    limits = replace(DEFAULT_LIMITS, max_batch_tokens=8192, max_batch_docs=64)
    engine_on(backend, device).warmup(limits)
    assert backend.batches
    for ids, lengths, _ in backend.batches:
        assert len(lengths) > 1 and lengths.min() < ids.shape[1]  # several rows, padding
    widest = max(ids.shape[1] for ids, _, _ in backend.batches)
    assert widest == 512
    if device == "cuda":
        assert max(ids.size for ids, _, _ in backend.batches) > limits.max_batch_tokens // 2


def test_replica_warms_up_on_its_forward_thread(checkpoint_root, monkeypatch):
    """cuBLAS/cuDNN state is per thread: the warm-up must run where forward passes do."""
    from serve_app.config import ModelDeploymentConfig
    from serve_app.runtime.model_deployment import RerankModel

    backend = RecordingBackend()
    monkeypatch.setattr("serve_app.model.engine.load_backend", lambda *args, **kwargs: backend)
    tiny = ALL_MODELS[0]
    replica = RerankModel.func_or_class(
        ModelDeploymentConfig(name=tiny, source=checkpoint_path(checkpoint_root, tiny))
    )
    assert replica.engine.backend is backend
    assert backend.threads and set(backend.threads) == {"forward_0"}


def test_torch_forward_gets_a_4d_additive_mask_or_none(checkpoint_root, encoder, monkeypatch):
    """A 2-D mask makes transformers test `mask.all()` on the host (a device sync on every
    pass) and expand it per layer. The model must get the (rows, 1, 1, width) additive
    mask when a batch has padding, and no mask when it has none."""
    engine = CrossEncoderEngine(checkpoint_path(checkpoint_root, ALL_MODELS[0]), backend="torch")
    model = engine.backend.model
    seen: list[torch.Tensor | None] = []
    real_forward = model.forward

    def forward(*args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    padded = engine.score([encoder.encode(QUERY, DOCS[:2])])[0]
    same_length = engine.score([encoder.encode(QUERY, ["one two", "three four"])])[0]
    assert len(seen) == 2
    mask, none = seen
    assert none is None
    assert mask.dim() == 4 and mask.shape[1:3] == (1, 1) and mask.dtype == torch.float32
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()
    assert np.isfinite(padded).all() and np.isfinite(same_length).all()


def test_gpu_memory_cap_names_a_device_torch_accepts(monkeypatch):
    """A replica on a GPU fraction caps its CUDA memory at that fraction. torch's cap takes
    a device index (None: the current device); an unindexed `torch.device("cuda")`, what
    the engine runs on by default, makes it raise, so no fractional-GPU replica started."""
    from torch.cuda._utils import _get_device_index

    from serve_app.model.backends.torch_backend import TorchBackend

    class StopBeforeLoading(Exception):
        """Loading the model onto CUDA needs a GPU; the cap comes before it."""

    capped: list[tuple[float, int]] = []

    def set_fraction(fraction: float, device=None) -> None:
        # What the real call does with `device`, minus the CUDA runtime.
        capped.append((fraction, 0 if device is None else _get_device_index(device)))
        raise StopBeforeLoading

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    with pytest.raises(StopBeforeLoading):
        TorchBackend("unused", device="cuda", gpu_memory_fraction=0.3)
    with pytest.raises(StopBeforeLoading):
        TorchBackend("unused", device="cuda:1", gpu_memory_fraction=2.0)
    assert capped == [(0.3, 0), (1.0, 1)]

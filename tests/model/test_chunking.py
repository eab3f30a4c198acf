"""Long documents chunked into windows: each window is an ordinary pair, the document
scores as its best window, and the best window's character span is reported. Against
the engine itself and sentence-transformers' CrossEncoder on the same random checkpoint.
No Ray."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch

from serve_app.config import ChunkingConfig
from serve_app.errors import InvalidRequest
from serve_app.model.engine import CrossEncoderEngine
from serve_app.model.tokenization import (
    DocumentOptions,
    EncodedPairs,
    PairEncoder,
    PairEncoders,
    pair_ids,
    window_bounds,
)
from tests.conftest import checkpoint_path

TINY = "cross-encoder/ms-marco-TinyBERT-L2-v2"
QUERY = "where do river otters build their dens"
CHUNK = DocumentOptions("chunk")
TRUNCATE = DocumentOptions("truncate")


def long_text(words: int, seed: int) -> str:
    """Plain lowercase words (several word pieces each, some): windows of it decode
    back to their own text, so span and window can be compared as text."""
    rng = random.Random(seed)
    vocab = ["river", "otters", "build", "dens", "near", "water", "banks", "underneath"]
    vocab += ["roots", "fishing", "playfully", "winter", "holts", "unmistakably", "the", "a"]
    return " ".join(rng.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def encoder(checkpoint_root) -> PairEncoder:
    return PairEncoder.from_pretrained(
        checkpoint_path(checkpoint_root, TINY), 64, ChunkingConfig(overlap_tokens=32)
    )


@pytest.fixture(scope="module")
def engine(checkpoint_root) -> CrossEncoderEngine:
    return CrossEncoderEngine(checkpoint_path(checkpoint_root, TINY), backend="torch")


def one_pair(head: np.ndarray, window: list[int]) -> EncodedPairs:
    ids = np.array(window, dtype=np.int32)
    return EncodedPairs(head, ids, np.array([len(ids)], dtype=np.int32))


def test_window_bounds_cover_the_document_and_never_open_mid_word():
    rng = random.Random(3)
    for _ in range(200):
        tokens = rng.randint(1, 3000)
        word_ids, word = [], 0
        while len(word_ids) < tokens:
            word_ids += [word] * rng.randint(1, 4)
            word += 1
        word_ids = word_ids[:tokens]
        room, overlap, most = rng.randint(20, 500), rng.randint(0, 19), rng.randint(1, 20)
        bounds = window_bounds(word_ids, tokens, room, overlap, most)
        assert bounds[0] == (0, min(room, tokens))  # exactly what truncation keeps
        assert len(bounds) <= most
        assert all(0 < b - a <= room for a, b in bounds)
        assert all(a2 > a1 and a2 <= b1 for (a1, b1), (a2, _) in zip(bounds, bounds[1:]))
        assert all(a == 0 or word_ids[a] != word_ids[a - 1] for a, _ in bounds)
        if len(bounds) < most:
            assert bounds[-1][1] == tokens  # every token is in some window


def test_a_document_that_fits_is_encoded_and_scored_exactly_as_truncation_does(encoder, engine):
    docs = ["otters build dens", "", long_text(100, 1)]
    chunked, truncated = encoder.encode(QUERY, docs, CHUNK), encoder.encode(QUERY, docs, TRUNCATE)
    assert chunked.owners is None and chunked.spans is None
    assert pair_ids(chunked) == pair_ids(truncated)
    mixed = encoder.encode(QUERY, docs + [long_text(2000, 2)], CHUNK)  # one long neighbour
    assert pair_ids(mixed)[:3] == pair_ids(truncated)
    scores, _ = mixed.best(engine.score([mixed])[0])
    np.testing.assert_allclose(scores[:3], engine.score([truncated])[0], atol=1e-5, rtol=0)


def test_the_first_window_is_the_truncated_pair_and_the_rest_overlap(encoder):
    text = long_text(3000, 4)
    chunked, truncated = encoder.encode(QUERY, [text], CHUNK), encoder.encode(QUERY, [text])
    windows = pair_ids(chunked)
    assert windows[0] == pair_ids(truncated)[0]
    assert len(windows) > 3 and chunked.documents == 1
    assert chunked.owners.tolist() == [0] * len(windows)
    # Consecutive windows share text: the next one starts before the previous ends.
    spans = chunked.spans.tolist()
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == len(text)  # 3,000 words fit in 16 windows: all of it is seen


def test_the_chunked_score_is_the_best_window_scored_alone_and_its_span_is_that_text(
    encoder, engine
):
    from sentence_transformers import CrossEncoder

    text = long_text(2500, 5)
    pairs = encoder.encode(QUERY, ["otters", text], CHUNK)
    scores, best = pairs.best(engine.score([pairs])[0])
    sep = encoder.tokenizer.sep_token_id
    windows = [ids[len(pairs.head) : -1] for ids in pair_ids(pairs)][1:]
    alone = [float(engine.score([one_pair(pairs.head, w + [sep])])[0][0]) for w in windows]
    assert scores[1] == pytest.approx(max(alone), abs=1e-5)
    passage = pairs.passages(best)[1]
    assert passage.chunks == len(windows) and 0 not in pairs.passages(best)
    span_text = text[passage.start : passage.end]
    assert span_text in text
    best_window = windows[int(np.argmax(alone))]
    assert encoder.tokenizer.decode(best_window) == span_text
    # The span, scored on its own by the reference implementation, gives the same score.
    reference = CrossEncoder(engine.source, device="cpu").predict(
        [(QUERY, span_text)], activation_fn=torch.nn.Identity()
    )
    assert scores[1] == pytest.approx(float(reference[0]), abs=1e-4)


def test_chunked_scores_are_the_same_alone_in_a_batch_and_permuted(encoder, engine):
    docs = [long_text(n, seed) for seed, n in enumerate([50, 1200, 700, 4000, 5])]
    together = encoder.encode(QUERY, docs, CHUNK)
    scores, _ = together.best(engine.score([together])[0])
    alone = []
    for doc in docs:
        one = encoder.encode(QUERY, [doc], CHUNK)
        alone.append(float(one.best(engine.score([one])[0])[0][0]))
    np.testing.assert_allclose(scores, alone, atol=1e-5, rtol=0)
    order = [3, 0, 4, 2, 1]
    permuted = encoder.encode(QUERY, [docs[i] for i in order], CHUNK)
    other = encoder.encode("a different query", docs[:2], CHUNK)
    got, _ = permuted.best(engine.score([other, permuted])[1])  # batched with another request
    np.testing.assert_allclose(got, scores[order], atol=1e-5, rtol=0)


def test_max_tokens_per_doc_cuts_first_and_chunking_covers_what_is_left(encoder):
    text = long_text(3000, 6)
    pairs = encoder.encode(QUERY, [text], DocumentOptions("chunk", max_tokens=1000))
    whole = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    room = 512 - len(pairs.head) - 1
    windows = [ids[len(pairs.head) : -1] for ids in pair_ids(pairs)]
    assert len(windows) == 3  # 1,000 tokens: ~500, then two more windows overlapping by 32+
    assert windows[0] == whole[:room]
    assert windows[-1] == whole[1000 - len(windows[-1]) : 1000]  # the cut's last token
    assert max(pairs.spans[:, 1]) < len(text)


def test_windows_per_document_and_per_request_are_bounded(checkpoint_root):
    source = checkpoint_path(checkpoint_root, TINY)
    chunking = ChunkingConfig(max_chunks_per_document=3, max_chunks_per_request=5)
    encoder = PairEncoder.from_pretrained(source, 64, chunking)
    huge = long_text(20_000, 7)
    assert len(encoder.encode(QUERY, [huge], CHUNK)) == 3
    encoders = PairEncoders({TINY: encoder}, threads=2, max_windows=5)
    fits = asyncio.run(encoders.encode(TINY, QUERY, [huge, "short", "short"], CHUNK))
    assert len(fits) == 5 and fits.documents == 3
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(encoders.encode(TINY, QUERY, [huge, huge], CHUNK))
    assert "max_chunks_per_request" in refused.value.message
    assert len(asyncio.run(encoders.encode(TINY, QUERY, [huge, huge], TRUNCATE))) == 2


def test_select_keeps_every_window_of_the_chosen_documents(encoder):
    docs = ["short one", long_text(1500, 8), "short two", long_text(900, 9)]
    pairs = encoder.encode(QUERY, docs, CHUNK)
    picked = pairs.select([3, 0])
    assert pair_ids(picked) == pair_ids(encoder.encode(QUERY, [docs[3], docs[0]], CHUNK))
    assert picked.spans.tolist() == encoder.encode(QUERY, [docs[3], docs[0]], CHUNK).spans.tolist()


@pytest.mark.parametrize("kind", ["electra", "distilbert", "xlm-roberta"])
def test_every_architecture_chunks_by_its_own_template(kind, tmp_path_factory):
    """Windows carry each tokenizer's own special tokens (XLM-R: `<s> q </s></s> d </s>`),
    the first is the truncated pair, and the document scores as its best window alone."""
    from tests.model.architectures import write_architecture

    path = str(write_architecture(kind, tmp_path_factory.mktemp(f"chunk-{kind}")))
    encoder = PairEncoder.from_pretrained(path, 64)
    engine = CrossEncoderEngine(path, backend="torch")
    text = " ".join(["river otters build their dens near the water"] * 200)
    pairs = encoder.encode(QUERY, ["short", text], CHUNK)
    truncated = encoder.encode(QUERY, ["short", text], TRUNCATE)
    assert pair_ids(pairs)[:2] == pair_ids(truncated)
    assert len(pairs) > 4 and pairs.documents == 2
    suffix = list(encoder.template.suffix)
    assert all(ids[-len(suffix) :] == suffix for ids in pair_ids(pairs))
    scores, best = pairs.best(engine.score([pairs])[0])
    alone = [
        float(engine.score([one_pair(pairs.head, ids[len(pairs.head) :])])[0][0])
        for ids in pair_ids(pairs)[1:]
    ]
    assert scores[1] == pytest.approx(max(alone), abs=1e-5)
    passage = pairs.passages(best)[1]
    assert text[passage.start : passage.end] in text and passage.end > passage.start

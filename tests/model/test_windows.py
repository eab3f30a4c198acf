"""Long documents are tokenized from their first window only, with the same ids as
tokenizing them whole. No Ray."""

from __future__ import annotations

import random

from transformers import AutoTokenizer

from serve_app.model.checkpoints import tokenizer_dir
from serve_app.model.tokenization import (
    WINDOW_CHARS_PER_TOKEN,
    DocumentOptions,
    PairEncoder,
    encode_windows,
    fixed_truncation_backend,
    pair_ids,
    plain_text_backend,
)


def texts() -> list[str]:
    rng = random.Random(0)
    words = ["the", "naïve", "café", "回答", "x,y", "don't", "Ünïcödé", "a" * 150, "\n", "  "]
    out = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 2500))) for _ in range(60)]
    # Short on tokens for their length: a cut prefix would come up short, so whole.
    return out + ["a" * 100_000, " " * 50_000 + "word " * 1000, "word" * 5000 + " tail"]


def test_window_encoding_equals_whole_encoding():
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    backend = fixed_truncation_backend(tokenizer, 509)
    sample = texts()
    for b in (backend, plain_text_backend(backend)):
        whole = [e.ids for e in b.encode_batch_fast(sample, add_special_tokens=False)]
        assert [e.ids for e in encode_windows(b, sample, 509)] == whole


def test_max_tokens_per_doc_keeps_each_documents_first_tokens():
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    encoder = PairEncoder(tokenizer, 512, 64)
    sample = texts()[:20] + ["Paris is the capital of France.", "short", ""]
    uncut = fixed_truncation_backend(tokenizer, 10**9)
    whole = [e.ids for e in uncut.encode_batch_fast(sample, add_special_tokens=False)]
    sep = tokenizer.sep_token_id
    for mode in ("truncate", "chunk"):
        for max_tokens in (1, 7, 300, 10**6):
            pairs = encoder.encode("q", sample, DocumentOptions(mode, max_tokens))
            room = 512 - len(pairs.head) - 1
            if max_tokens > room and mode == "chunk":
                continue  # chunked: windows (tests/model/test_chunking.py)
            expected = [w[: min(max_tokens, room)] + [sep] for w in whole]
            assert [p[len(pairs.head) :] for p in pair_ids(pairs)] == expected


class Spy:
    """A tokenizer backend that records the length of every text it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.lengths: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_batch_fast(self, batch, **kw):
        self.lengths += [len(t) for t in batch]
        return self.inner.encode_batch_fast(batch, **kw)


def test_a_long_document_is_tokenized_from_its_first_window_only():
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    encoder = PairEncoder(tokenizer, 512, 64)
    text = "word " * 200_000  # 1 MB
    whole = encoder.encode("q", [text])
    spy = encoder._plain_documents = Spy(encoder._plain_documents)
    cut = encoder.encode("q", [text])
    assert cut.doc_ids.tolist() == whole.doc_ids.tolist()
    assert cut.doc_lengths.tolist() == whole.doc_lengths.tolist() == [509]
    assert max(spy.lengths) <= 510 * WINDOW_CHARS_PER_TOKEN

"""Long documents are tokenized from their first window only, with the same ids as
tokenizing them whole. No Ray."""

from __future__ import annotations

import random

from transformers import AutoTokenizer

from serve_app.model.checkpoints import tokenizer_dir
from serve_app.model.tokenization import (
    WINDOW_CHARS_PER_TOKEN,
    PairEncoder,
    encode_windows,
    fixed_truncation_backend,
    plain_text_backend,
)
from serve_app.service.truncation import DocumentTruncator


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
    # The truncator against the offsets of each whole text (a backend that never cuts).
    uncut = fixed_truncation_backend(tokenizer, 10**9)
    spans = [e.offsets for e in uncut.encode_batch(sample, add_special_tokens=False)]
    truncator = DocumentTruncator()
    for max_tokens in (1, 7, 300):
        expected = [
            text[: s[max_tokens - 1][1]] if len(s) > max_tokens else text
            for text, s in zip(sample, spans)
        ]
        assert truncator.truncate(sample, max_tokens) == expected


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
    assert max(spy.lengths) <= 509 * WINDOW_CHARS_PER_TOKEN

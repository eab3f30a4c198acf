"""Pairs for calibrating static int8: realistic token lengths and ids, in the batches the
engine really runs (length-sorted, padded), so the activation ranges NNCF measures are
the ones production sees.

By default the pairs are made of whole words drawn from the tokenizer's own vocabulary
(seeded: every replica calibrates alike). An operator with real traffic gives a file of
`query<TAB>document` lines instead, which is better: ranges from real text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve_app.model.packing import PackingLimits, padded_batches
from serve_app.model.tokenization import EncodedPairs, PairEncoder

_LIMITS = PackingLimits(max_batch_tokens=8192, max_batch_docs=32, batch_overhead_tokens=64)


def vocabulary_pairs(
    encoder: PairEncoder, queries: int, docs_per_query: int
) -> list[tuple[str, list[str]]]:
    rng = np.random.default_rng(0)
    words = sorted(
        w for w in encoder.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2
    )
    pick = lambda n: " ".join(rng.choice(words, n))  # noqa: E731
    return [
        (
            pick(int(rng.integers(3, 12))),
            [pick(int(rng.integers(20, 220))) for _ in range(docs_per_query)],
        )
        for _ in range(queries)
    ]


def file_pairs(path: str) -> list[tuple[str, list[str]]]:
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        query, sep, document = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{number}: expected 'query<TAB>document'")
        pairs.append((query, [document]))
    return pairs


def calibration_batches(
    source: str, pairs_file: str | None, batches: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Up to `batches` padded batches of (ids, lengths, heads)."""
    encoder = PairEncoder.from_pretrained(source, 64)
    pairs = file_pairs(pairs_file) if pairs_file else vocabulary_pairs(encoder, batches, 32)
    requests: list[EncodedPairs] = [encoder.encode(q, docs) for q, docs in pairs]
    out = []
    for batch in padded_batches(requests, _LIMITS):
        out.append((batch.ids, batch.lengths, batch.heads))
        if len(out) == batches:
            break
    return out

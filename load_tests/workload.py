"""Synthetic rerank workloads with realistic token lengths, built from the real vocabulary.

`standard`: query 3 to 10 words; passages lognormal, about 70 tokens a pair on average and
125 at p95 (measured with the real tokenizer by `describe()`). `long`: about 400 tokens.
`longer`: about 1,500 tokens, past a 512-token window: what chunking is for.
Words are whole-word vocabulary entries, so one word is one token.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from serve_app.model.checkpoints import tokenizer_dir

# Document token counts (before the query and special tokens are added).
SHAPES = {
    "standard": {"median": 55.0, "sigma": 0.46, "max": 500},
    "long": {"median": 395.0, "sigma": 0.10, "max": 500},
    # Capped so that every document stays under the default `max_document_chars`.
    "longer": {"median": 1500.0, "sigma": 0.35, "max": 3500},
}


@dataclass(frozen=True)
class Request:
    query: str
    documents: list[str]


@lru_cache(maxsize=1)
def _words() -> list[str]:
    vocab = (tokenizer_dir() / "vocab.txt").read_text().split("\n")
    return [w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 3]


def make_requests(
    n: int, docs_per_request: int = 100, shape: str = "standard", seed: int = 0
) -> list[Request]:
    words = _words()
    rng = random.Random(seed)
    params = SHAPES[shape]
    mu = math.log(params["median"])
    out = []
    for _ in range(n):
        query = " ".join(rng.choices(words, k=rng.randint(3, 10)))
        docs = []
        for _ in range(docs_per_request):
            length = min(params["max"], max(4, int(rng.lognormvariate(mu, params["sigma"]))))
            docs.append(" ".join(rng.choices(words, k=length)))
        out.append(Request(query, docs))
    return out


def describe(requests: list[Request], encoder) -> dict:
    """Pair token statistics with the real tokenizer."""
    lengths = sorted(
        int(x) for r in requests for x in encoder.encode(r.query, r.documents).pair_lengths
    )
    return {
        "pairs": len(lengths),
        "mean_pair_tokens": round(sum(lengths) / len(lengths), 1),
        "p50_pair_tokens": lengths[len(lengths) // 2],
        "p95_pair_tokens": lengths[int(len(lengths) * 0.95)],
    }

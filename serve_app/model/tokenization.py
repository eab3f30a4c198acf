"""Query/document pair encoding, done in the ingress (CPU) so model replicas only pad,
copy and run the forward pass. No Ray, no HTTP.

Each request's query is tokenized once, not once per document; pairs come out as
`[CLS] query [SEP] document [SEP]`, identical to the tokenizer's own pair encoding.
Documents lose tokens from the end to fit the model's length; the query is capped first
(`max_query_tokens`) so a document always keeps room.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from transformers import AutoConfig, AutoTokenizer

from serve_app.config import ModelDeploymentConfig
from serve_app.model.checkpoints import ensure_checkpoint
from serve_app.observer import NullObserver, Observer

T = TypeVar("T")

MIN_DOCUMENT_TOKENS = 8
ENCODE_SLICE_DOCS = 32  # documents per tokenizer call; more run as parallel slices
# A character outside printable ASCII, tab, newline and carriage return: on text without
# one, BERT's normaliser (control-character removal, CJK spacing, NFD accent stripping)
# changes nothing but case, and the pre-tokenizer splits on tab/newline as on spaces.
_NOT_PLAIN = re.compile(r"[^\t\n\r\x20-\x7e]")


def fixed_truncation_backend(tokenizer, max_length: int) -> Tokenizer:
    """A private copy of a fast tokenizer's backend that truncates at `max_length`, set
    once here and never changed.

    Calling a transformers tokenizer with `truncation`/`max_length` reconfigures its one
    shared backend before encoding, so threads encoding with different lengths race and
    can cut a document at another call's length. Encoding on a backend nobody mutates is
    thread-safe, and `encode_batch` releases the GIL and runs in parallel.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast (Rust) tokenizer is required: the source has no tokenizer.json")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length)
    return backend


# A document is cut to this many characters per token of the window before it is tokenized:
# prose runs 4 to 6 characters a token, so the cut almost never loses a token that would be
# kept, and when it might (long words, runs of spaces) the whole text is tokenized instead.
WINDOW_CHARS_PER_TOKEN = 16


def cuts_exactly(backend: Tokenizer) -> bool:
    """Whether cutting text at a space keeps its tokens a prefix of the whole text's: BERT's
    pre-tokenizer splits words at spaces, and its normaliser (or the plain-text one) works
    character by character, so the words before a space tokenize alike either way."""
    return isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer) and isinstance(
        backend.normalizer, (normalizers.BertNormalizer, normalizers.Lowercase, type(None))
    )


def window_prefix(text: str, tokens: int) -> str:
    """`text` cut at the last space within `tokens * WINDOW_CHARS_PER_TOKEN` characters;
    `text` itself when it is shorter or has no space there. Only a prefix that still holds
    `tokens` tokens may stand for the whole text (see `cuts_exactly`)."""
    limit = tokens * WINDOW_CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return text[:cut] if cut > 0 else text


def encode_windows(backend: Tokenizer, texts: list[str], tokens: int, offsets: bool = False):
    """`backend`'s encodings of `texts` where only the first `tokens` tokens are used:
    each long text is tokenized from its `window_prefix`, and again whole only when that
    prefix came up short. The same tokens as tokenizing every text whole; `offsets`: with
    character offsets (`encode_batch`), else without (`encode_batch_fast`)."""
    encode = backend.encode_batch if offsets else backend.encode_batch_fast
    if not cuts_exactly(backend):
        return encode(texts, add_special_tokens=False)
    cut = [window_prefix(t, tokens) for t in texts]
    encoded = encode(cut, add_special_tokens=False)
    short = [i for i, (c, t) in enumerate(zip(cut, texts)) if c is not t]
    short = [i for i in short if len(encoded[i].ids) < tokens]
    if short:
        for i, e in zip(short, encode([texts[i] for i in short], add_special_tokens=False)):
            encoded[i] = e
    return encoded


def plain_text_backend(backend: Tokenizer) -> Tokenizer | None:
    """A copy of `backend` for plain text (no `_NOT_PLAIN` character) that gives the same
    ids a third faster: its BERT normaliser reduced to what it does to such text, lowercasing
    or nothing. None when the normaliser is not BERT's: no shortcut is known to be exact."""
    normalizer = backend.normalizer
    if not isinstance(normalizer, normalizers.BertNormalizer):
        return None
    plain = Tokenizer.from_str(backend.to_str())
    plain.normalizer = normalizers.Lowercase() if normalizer.lowercase else None
    return plain


@dataclass(frozen=True)
class EncodedPairs:
    """One request's pairs in compact arrays: cheap to ship to a replica."""

    head: np.ndarray  # int32 ids of [CLS] query [SEP]
    doc_ids: np.ndarray  # int32 ids of every `document [SEP]`, concatenated
    doc_lengths: np.ndarray  # int32 length of each `document [SEP]`

    @classmethod
    def concat(cls, parts: list[EncodedPairs]) -> EncodedPairs:
        """Join encodings of consecutive slices of one request's documents (same query)."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            parts[0].head,
            np.concatenate([p.doc_ids for p in parts]),
            np.concatenate([p.doc_lengths for p in parts]),
        )

    @property
    def pair_lengths(self) -> np.ndarray:
        return self.doc_lengths + len(self.head)

    @property
    def total_tokens(self) -> int:
        return int(self.pair_lengths.sum())

    def __len__(self) -> int:
        return len(self.doc_lengths)


class PairEncoder:
    def __init__(self, tokenizer, max_length: int, max_query_tokens: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_query_tokens = min(max_query_tokens, max_length - 3 - MIN_DOCUMENT_TOKENS)
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        if self.cls_id is None or self.sep_id is None:
            raise ValueError("tokenizer has no [CLS]/[SEP]: not a BERT cross-encoder")
        self._queries = fixed_truncation_backend(tokenizer, self.max_query_tokens)
        # The longest a document can be: beside the shortest head, [CLS] [SEP], and its [SEP].
        self._documents = fixed_truncation_backend(tokenizer, max_length - 3)
        self._plain_documents = plain_text_backend(self._documents)

    @classmethod
    def from_pretrained(cls, source: str, max_query_tokens: int) -> PairEncoder:
        tokenizer = AutoTokenizer.from_pretrained(source)
        positions = AutoConfig.from_pretrained(source).max_position_embeddings
        return cls(tokenizer, min(tokenizer.model_max_length, positions), max_query_tokens)

    @staticmethod
    def fingerprint(source: str, max_query_tokens: int) -> str:
        """Same fingerprint means same encoding, so one encoder can serve several models
        (the whole ms-marco family shares one vocabulary)."""
        config = AutoConfig.from_pretrained(source)
        path = Path(source) / "tokenizer.json"
        if path.exists():
            vocab = hashlib.sha256(path.read_bytes()).hexdigest()
        else:  # a hub id: its name stands for its files
            vocab = source
        return f"{vocab}:{config.max_position_embeddings}:{max_query_tokens}"

    def encode(self, query: str, documents: list[str]) -> EncodedPairs:
        return self.encode_documents(self.head(query), documents)

    def head(self, query: str) -> np.ndarray:
        """`[CLS] query [SEP]` ids, the query cut at `max_query_tokens`. Encode it once per
        request: a long query costs milliseconds however few tokens it keeps."""
        q_ids = self._queries.encode(query, add_special_tokens=False).ids
        return np.array([self.cls_id, *q_ids, self.sep_id], dtype=np.int32)

    def encode_documents(self, head: np.ndarray, documents: list[str]) -> EncodedPairs:
        """Pairs of `head` (from `head()`) with each document, cut to the room it leaves."""
        room = self.max_length - len(head) - 1
        docs = [ids[:room] for ids in self._document_ids(documents)]  # fresh: safe to append to
        for d in docs:
            d.append(self.sep_id)
        lengths = np.fromiter(map(len, docs), dtype=np.int32, count=len(docs))
        flat = np.fromiter(chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
        return EncodedPairs(head, flat, lengths)

    def _document_ids(self, documents: list[str]) -> list[list[int]]:
        """Each document's ids (cut at the longest a document can be), plain-text documents
        on the cheaper backend; order kept."""
        groups: dict[Tokenizer, list[int]] = {}
        for i, doc in enumerate(documents):
            plain = self._plain_documents is not None and _NOT_PLAIN.search(doc) is None
            groups.setdefault(self._plain_documents if plain else self._documents, []).append(i)
        ids: list[list[int]] = [[]] * len(documents)
        window = self.max_length - 3  # both backends truncate there
        for backend, indices in groups.items():
            # Without character offsets (`_fast`), which nothing here reads; long documents
            # cut to their first window first (a 1 MB text need not be tokenized whole).
            encoded = encode_windows(backend, [documents[i] for i in indices], window)
            for i, e in zip(indices, encoded):
                ids[i] = e.ids
        return ids


def pair_ids(pairs: EncodedPairs) -> list[list[int]]:
    """The full id list of each pair (for tests and references; the engine never needs it)."""
    out, start = [], 0
    for n in pairs.doc_lengths.tolist():
        out.append(pairs.head.tolist() + pairs.doc_ids[start : start + n].tolist())
        start += n
    return out


class PairEncoders:
    """The pair encoder of every served model (one per distinct tokenizer setup, shared by
    the models that use it) and the threads they encode on.

    The fast tokenizer releases the GIL, so encoding in threads keeps the event loop free
    and uses every core the process has. The tokenizer's own thread pool stays off: each
    busy ingress process would start one spinning thread per core of the host, against the
    other ingress replicas; instead a request's documents are sliced over these threads.
    """

    def __init__(
        self, encoders: Mapping[str, PairEncoder], threads: int, observer: Observer = NullObserver()
    ):
        self.encoders = dict(encoders)
        self.observer = observer
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tok")

    @classmethod
    def load(
        cls, models: list[ModelDeploymentConfig], threads: int, observer: Observer = NullObserver()
    ) -> PairEncoders:
        distinct: dict[str, PairEncoder] = {}
        encoders = {}
        for model in models:
            source = ensure_checkpoint(model)
            key = PairEncoder.fingerprint(source, model.max_query_tokens)
            if key not in distinct:
                distinct[key] = PairEncoder.from_pretrained(source, model.max_query_tokens)
            encoders[model.name] = distinct[key]
        return cls(encoders, threads, observer)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the tokenizer threads: other tokenizer work (Cohere's
        `max_tokens_per_doc` cut) shares their bound rather than a pool of its own."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def same_encoding(self, a: str, b: str) -> bool:
        """Whether pairs encoded for model `a` are exactly what model `b` would get."""
        return self.encoders[a] is self.encoders[b]

    async def encode(
        self,
        model: str,
        query: str,
        texts: list[str],
        reuse: tuple[str, EncodedPairs] | None = None,
    ) -> EncodedPairs:
        """`model`'s pairs; `reuse`: pairs already encoded for another model, returned
        as they are when that model's encoding is the same."""
        if reuse is not None and self.same_encoding(reuse[0], model):
            return reuse[1]
        # The query once, then even slices of the documents in parallel (100 are 4 x 25).
        started = time.perf_counter()
        encoder, loop = self.encoders[model], asyncio.get_running_loop()
        head = await loop.run_in_executor(self.pool, encoder.head, query)
        slices = max(1, -(-len(texts) // ENCODE_SLICE_DOCS))
        size = max(1, -(-len(texts) // slices))
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, encoder.encode_documents, head, texts[i : i + size])
                for i in range(0, len(texts), size) or [0]
            )
        )
        self.observer.tokenized(model, time.perf_counter() - started)
        return EncodedPairs.concat(list(parts))

"""Query/document pair encoding, done in the ingress (CPU) so model replicas only pad,
copy and run the forward pass. No Ray, no HTTP.

Each request's query is tokenized once, not once per document; pairs come out with the
special tokens where the checkpoint's own tokenizer puts them (`PairTemplate`). The query
is capped first (`max_query_tokens`) so a document always keeps room. A document longer
than the room left is truncated, or, chunking, cut into overlapping windows that are each
scored with the query (`DocumentOptions`); the document scores as its best window.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from transformers import AutoConfig, AutoTokenizer

from serve_app.config import ChunkingConfig, LongDocuments, ModelDeploymentConfig
from serve_app.errors import InvalidRequest
from serve_app.model.checkpoints import ensure_checkpoint
from serve_app.observer import NullObserver, Observer
from serve_app.types import Passage

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
class PairTemplate:
    """Where a checkpoint's tokenizer puts its special tokens around a (query, document)
    pair: BERT and ELECTRA `[CLS] q [SEP] d [SEP]`, XLM-RoBERTa `<s> q </s></s> d </s>`.
    Read from the tokenizer's own pair encoding, so nothing assumes one vocabulary."""

    prefix: tuple[int, ...]  # before the query
    middle: tuple[int, ...]  # between query and document
    suffix: tuple[int, ...]  # after the document

    @classmethod
    def of(cls, backend: Tokenizer) -> PairTemplate:
        probe = Tokenizer.from_str(backend.to_str())
        probe.no_truncation()
        probe.no_padding()
        pair = probe.encode("query", "document", add_special_tokens=True)
        sides = pair.sequence_ids
        query = [i for i, side in enumerate(sides) if side == 0]
        document = [i for i, side in enumerate(sides) if side == 1]
        if not query or not document:
            raise ValueError("the tokenizer's pair encoding has no query or no document part")
        ids = pair.ids
        return cls(
            tuple(ids[: query[0]]),
            tuple(ids[query[-1] + 1 : document[0]]),
            tuple(ids[document[-1] + 1 :]),
        )

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


@dataclass(frozen=True)
class DocumentOptions:
    """How a request wants its documents cut. `max_tokens` (Cohere's `max_tokens_per_doc`)
    cuts each document first; `long_documents` says what happens to what is left when it
    is longer than the model's window: its first window only, or every window."""

    long_documents: LongDocuments = "truncate"
    max_tokens: int | None = None


@dataclass(frozen=True)
class EncodedPairs:
    """One request's pairs in compact arrays: cheap to ship to a replica.

    One pair per document, except that a chunked document has one pair per window;
    `owners` then maps each pair to its document (non-decreasing) and `spans` gives each
    window's character span in its document ((-1, -1) for a document that fit whole).
    Replicas score pairs and never look at either."""

    head: np.ndarray  # int32 ids of the query with its special tokens
    doc_ids: np.ndarray  # int32 ids of every document part (document and suffix), concatenated
    doc_lengths: np.ndarray  # int32 length of each document part
    owners: np.ndarray | None = None  # int32 document of each pair; None: pair i is document i
    spans: np.ndarray | None = None  # (pairs, 2) int32 character span of each window

    @classmethod
    def concat(cls, parts: list[EncodedPairs]) -> EncodedPairs:
        """Join encodings of consecutive slices of one request's documents (same query)."""
        if len(parts) == 1:
            return parts[0]
        owners = spans = None
        if any(p.owners is not None for p in parts):
            firsts = np.cumsum([0] + [p.documents for p in parts[:-1]])
            owners = np.concatenate([p.owner_of_pairs() + first for p, first in zip(parts, firsts)])
            spans = np.concatenate([p.window_spans() for p in parts])
        return cls(
            parts[0].head,
            np.concatenate([p.doc_ids for p in parts]),
            np.concatenate([p.doc_lengths for p in parts]),
            owners,
            spans,
        )

    @property
    def pair_lengths(self) -> np.ndarray:
        return self.doc_lengths + len(self.head)

    @property
    def total_tokens(self) -> int:
        return int(self.pair_lengths.sum())

    @property
    def documents(self) -> int:
        if self.owners is None:
            return len(self.doc_lengths)
        return int(self.owners[-1]) + 1 if len(self.owners) else 0

    def __len__(self) -> int:
        """Pairs (windows) to score."""
        return len(self.doc_lengths)

    def owner_of_pairs(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int32) if self.owners is None else self.owners

    def window_spans(self) -> np.ndarray:
        if self.spans is None:
            return np.full((len(self), 2), -1, dtype=np.int32)
        return self.spans

    def best(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each document's score, its best window's logit, and the index of that window
        (the first of equal ones)."""
        if self.owners is None:
            return logits, np.arange(len(logits))
        # Sorted by document, then by logit, best first: each document's first entry wins.
        order = np.lexsort((-logits, self.owners))
        starts = np.flatnonzero(np.r_[True, self.owners[1:] != self.owners[:-1]])
        best = order[starts]
        return logits[best], best

    def passages(self, best: np.ndarray) -> dict[int, Passage]:
        """The chunked documents' passages: windows scored and the best one's span."""
        if self.owners is None:
            return {}
        windows = np.bincount(self.owners, minlength=self.documents)
        spans = self.window_spans()
        return {
            doc: Passage(int(windows[doc]), int(spans[pair, 0]), int(spans[pair, 1]))
            for doc, pair in enumerate(best.tolist())
            if spans[pair, 0] >= 0
        }

    def select(self, documents: Sequence[int]) -> EncodedPairs:
        """The pairs of `documents`, in that order, without tokenizing again."""
        owners = self.owner_of_pairs()
        pairs = [np.flatnonzero(owners == d) for d in documents]
        chosen = np.concatenate(pairs) if pairs else np.empty(0, dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(self.doc_lengths)[:-1]))
        pieces = [self.doc_ids[starts[i] : starts[i] + self.doc_lengths[i]] for i in chosen]
        doc_ids = np.concatenate(pieces) if pieces else np.empty(0, dtype=self.doc_ids.dtype)
        if self.owners is None:
            return EncodedPairs(self.head, doc_ids, self.doc_lengths[chosen])
        new_owners = np.repeat(np.arange(len(pairs), dtype=np.int32), [len(p) for p in pairs])
        return EncodedPairs(
            self.head, doc_ids, self.doc_lengths[chosen], new_owners, self.window_spans()[chosen]
        )


def window_bounds(
    word_ids: Sequence[int | None], tokens: int, room: int, overlap: int, max_windows: int
) -> list[tuple[int, int]]:
    """Token ranges of a document's windows: `room` tokens each, the first exactly what
    truncation keeps, each next one starting `overlap` tokens before the previous end,
    moved back to the first token of its word (a window never opens mid-word)."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + room, tokens)
        bounds.append((start, end))
        if end >= tokens or len(bounds) == max_windows:
            return bounds
        following = max(end - overlap, start + 1)
        while (
            following > start + 1
            and word_ids[following] is not None
            and word_ids[following] == word_ids[following - 1]
        ):
            following -= 1
        start = following


class PairEncoder:
    def __init__(
        self,
        tokenizer,
        max_length: int,
        max_query_tokens: int,
        chunking: ChunkingConfig = ChunkingConfig(),
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chunking = chunking
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "a fast (Rust) tokenizer is required: the source has no tokenizer.json"
            )
        self.template = PairTemplate.of(tokenizer.backend_tokenizer)
        self._prefix = np.array(self.template.prefix, dtype=np.int32)
        self._middle = np.array(self.template.middle, dtype=np.int32)
        self._suffix = list(self.template.suffix)
        # The longest a document can be: beside an empty query.
        self.window = max_length - self.template.specials
        self.max_query_tokens = min(max_query_tokens, self.window - MIN_DOCUMENT_TOKENS)
        self._queries = fixed_truncation_backend(tokenizer, self.max_query_tokens)
        # One token past the longest window tells a document that fits from a longer one.
        self._documents = fixed_truncation_backend(tokenizer, self.window + 1)
        self._plain_documents = plain_text_backend(self._documents)
        self._long_documents = fixed_truncation_backend(
            tokenizer, self.window * chunking.max_chunks_per_document
        )

    @classmethod
    def from_pretrained(
        cls, source: str, max_query_tokens: int, chunking: ChunkingConfig = ChunkingConfig()
    ) -> PairEncoder:
        tokenizer = AutoTokenizer.from_pretrained(source)
        return cls(
            tokenizer,
            min(tokenizer.model_max_length, position_limit(AutoConfig.from_pretrained(source))),
            max_query_tokens,
            chunking,
        )

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
        return f"{vocab}:{position_limit(config)}:{max_query_tokens}"

    def encode(
        self, query: str, documents: list[str], options: DocumentOptions = DocumentOptions()
    ) -> EncodedPairs:
        return self.encode_documents(self.head(query), documents, options)

    def head(self, query: str) -> np.ndarray:
        """The query's ids with its special tokens, cut at `max_query_tokens`. Encode it
        once per request: a long query costs milliseconds however few tokens it keeps."""
        q_ids = self._queries.encode(query, add_special_tokens=False).ids
        return np.concatenate([self._prefix, np.array(q_ids, dtype=np.int32), self._middle])

    def encode_documents(
        self, head: np.ndarray, documents: list[str], options: DocumentOptions = DocumentOptions()
    ) -> EncodedPairs:
        """Pairs of `head` (from `head()`) with each document: cut to the room it leaves,
        or, chunking, one pair per window of a document longer than that."""
        room = self.max_length - len(head) - len(self._suffix)
        cut = room if options.max_tokens is None else min(room, options.max_tokens)
        ids = self._document_ids(documents)
        long = (
            []
            if options.long_documents == "truncate" or cut < room
            else [i for i, d in enumerate(ids) if len(d) > room]
        )
        if not long:
            return self._pairs(head, [d[:cut] for d in ids])
        windows: list[list[int]] = []
        owners: list[int] = []
        spans: list[tuple[int, int]] = []
        chunked = dict(zip(long, self._windows(documents, long, room, options.max_tokens)))
        for doc, doc_ids in enumerate(ids):
            pieces = chunked.get(doc) or [(doc_ids[:cut], (-1, -1))]
            for piece, span in pieces:
                windows.append(piece)
                owners.append(doc)
                spans.append(span)
        pairs = self._pairs(head, windows)
        return replace(
            pairs,
            owners=np.array(owners, dtype=np.int32),
            spans=np.array(spans, dtype=np.int32).reshape(-1, 2),
        )

    def _pairs(self, head: np.ndarray, documents: list[list[int]]) -> EncodedPairs:
        docs = [d + self._suffix for d in documents]
        lengths = np.fromiter(map(len, docs), dtype=np.int32, count=len(docs))
        flat = np.fromiter(chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
        return EncodedPairs(head, flat, lengths)

    def _windows(
        self, documents: list[str], long: list[int], room: int, max_tokens: int | None
    ) -> list[list[tuple[list[int], tuple[int, int]]]]:
        """Each long document's windows with their character spans. Tokenized again with
        offsets and word ids, up to as many tokens as its windows can cover."""
        chunking = self.chunking
        limit = self.window * chunking.max_chunks_per_document
        encoded = encode_windows(
            self._long_documents, [documents[i] for i in long], limit, offsets=True
        )
        out = []
        for e in encoded:
            tokens = len(e.ids) if max_tokens is None else min(len(e.ids), max_tokens)
            bounds = window_bounds(
                e.word_ids, tokens, room, chunking.overlap_tokens, chunking.max_chunks_per_document
            )
            out.append([(e.ids[a:b], (e.offsets[a][0], e.offsets[b - 1][1])) for a, b in bounds])
        return out

    def _document_ids(self, documents: list[str]) -> list[list[int]]:
        """Each document's ids (cut one past the longest a document can be), plain-text
        documents on the cheaper backend; order kept."""
        groups: dict[Tokenizer, list[int]] = {}
        for i, doc in enumerate(documents):
            plain = self._plain_documents is not None and _NOT_PLAIN.search(doc) is None
            groups.setdefault(self._plain_documents if plain else self._documents, []).append(i)
        ids: list[list[int]] = [[]] * len(documents)
        window = self.window + 1  # both backends truncate there
        for backend, indices in groups.items():
            # Without character offsets (`_fast`), which nothing here reads; long documents
            # cut to their first window first (a 1 MB text need not be tokenized whole).
            encoded = encode_windows(backend, [documents[i] for i in indices], window)
            for i, e in zip(indices, encoded):
                ids[i] = e.ids
        return ids


# Models whose position ids count from `pad_token_id + 1` (RoBERTa's scheme).
ROBERTA_STYLE_POSITIONS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet"}
)


def position_limit(config) -> int:
    """Positions the model can take. RoBERTa-family models number positions from
    `pad_token_id + 1`, so two of their 514 position embeddings are never usable."""
    positions = config.max_position_embeddings
    if config.model_type in ROBERTA_STYLE_POSITIONS:
        positions -= (config.pad_token_id or 0) + 1
    return positions


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
        self,
        encoders: Mapping[str, PairEncoder],
        threads: int,
        observer: Observer = NullObserver(),
        max_windows: int | None = None,
    ):
        self.encoders = dict(encoders)
        self.observer = observer
        self.max_windows = max_windows  # per request; None: unbounded
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tok")

    @classmethod
    def load(
        cls,
        models: list[ModelDeploymentConfig],
        threads: int,
        chunking: ChunkingConfig = ChunkingConfig(),
        observer: Observer = NullObserver(),
    ) -> PairEncoders:
        distinct: dict[str, PairEncoder] = {}
        encoders = {}
        for model in models:
            source = ensure_checkpoint(model)
            key = PairEncoder.fingerprint(source, model.max_query_tokens)
            if key not in distinct:
                distinct[key] = PairEncoder.from_pretrained(
                    source, model.max_query_tokens, chunking
                )
            encoders[model.name] = distinct[key]
        return cls(encoders, threads, observer, chunking.max_chunks_per_request)

    def same_encoding(self, a: str, b: str) -> bool:
        """Whether pairs encoded for model `a` are exactly what model `b` would get."""
        return self.encoders[a] is self.encoders[b]

    async def encode(
        self,
        model: str,
        query: str,
        texts: list[str],
        options: DocumentOptions = DocumentOptions(),
        reuse: tuple[str, EncodedPairs] | None = None,
    ) -> EncodedPairs:
        """`model`'s pairs; `reuse`: pairs already encoded (with the same `options`) for
        another model, returned as they are when that model's encoding is the same.
        Raises `InvalidRequest` when chunking makes more windows than a request may have."""
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
                loop.run_in_executor(
                    self.pool, encoder.encode_documents, head, texts[i : i + size], options
                )
                for i in range(0, len(texts), size) or [0]
            )
        )
        self.observer.tokenized(model, time.perf_counter() - started)
        pairs = EncodedPairs.concat(list(parts))
        if self.max_windows is not None and len(pairs) > self.max_windows:
            raise InvalidRequest(
                f"long documents make {len(pairs)} windows, over the limit of "
                f"{self.max_windows} per request (chunking.max_chunks_per_request); send "
                'fewer or shorter documents, or `"long_documents": "truncate"`',
                "documents",
            )
        return pairs

"""The cross-encoder engine: tokenizer and model through transformers, and batched scoring.

Knows nothing of Ray or HTTP. One `score` call takes whole requests (query plus
documents), tokenizes each query once, packs all pairs by length under a token budget
and returns one logit per pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serve_app.batching import pack_by_token_budget
from serve_app.checkpoints import RANDOM_INIT_MARKER

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class ScoreJob:
    query: str
    documents: list[str]


@dataclass
class ScoreResult:
    logits: list[float]
    tokens: list[int]  # length of each scored pair, special tokens included

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


@dataclass
class _Pairs:
    """Token ids of every pair of a batch of jobs, flattened, with where each job starts."""

    ids: list[list[int]] = field(default_factory=list)
    first_segment: list[int] = field(default_factory=list)  # [CLS] query [SEP] length
    job_offsets: list[int] = field(default_factory=lambda: [0])


class CrossEncoderEngine:
    def __init__(
        self,
        source: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_query_tokens: int = 64,
        cpu_threads: int | None = None,
    ):
        self.source = source
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = dtype
        if self.device.type == "cpu" and cpu_threads:
            torch.set_num_threads(cpu_threads)

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=_DTYPES[dtype]
        )
        self.model.to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{source}: expected a cross-encoder with one logit")
        self.random_weights = bool(getattr(self.model.config, RANDOM_INIT_MARKER, False))

        self.max_length = min(
            self.tokenizer.model_max_length, self.model.config.max_position_embeddings
        )
        # Leave room for the document: [CLS] q [SEP] d [SEP] with at least 8 tokens of d.
        self.max_query_tokens = min(max_query_tokens, self.max_length - 3 - 8)
        self.cls_id = self.tokenizer.cls_token_id
        self.sep_id = self.tokenizer.sep_token_id
        self.pad_id = self.tokenizer.pad_token_id or 0
        if self.cls_id is None or self.sep_id is None:
            raise ValueError(f"{source}: tokenizer has no [CLS]/[SEP]; not a BERT cross-encoder")

    # -- tokenization ------------------------------------------------------------------

    def _encode(self, jobs: list[ScoreJob]) -> _Pairs:
        """Build `[CLS] query [SEP] doc [SEP]` ids, as the tokenizer's pair encoding does,
        but tokenizing each query once per request instead of once per document. Long pairs
        lose tokens from the end of the document, never the query (which is capped first).
        """
        pairs = _Pairs()
        queries = self.tokenizer(
            [j.query for j in jobs],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_query_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for job, q_ids in zip(jobs, queries):
            head = [self.cls_id, *q_ids, self.sep_id]
            doc_budget = self.max_length - len(head) - 1
            docs = self.tokenizer(
                job.documents,
                add_special_tokens=False,
                truncation=True,
                max_length=doc_budget,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            for d_ids in docs:
                pairs.ids.append(head + d_ids + [self.sep_id])
                pairs.first_segment.append(len(head))
            pairs.job_offsets.append(len(pairs.ids))
        return pairs

    # -- model -------------------------------------------------------------------------

    def _forward(self, ids: list[list[int]], first_segment: list[int]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        token_types = np.zeros((len(ids), width), dtype=np.int64)
        for row, (x, head) in enumerate(zip(ids, first_segment)):
            input_ids[row, : len(x)] = x
            attention[row, : len(x)] = 1
            token_types[row, head : len(x)] = 1
        tensors = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": token_types,
        }
        on_gpu = self.device.type == "cuda"
        batch = {}
        for name, array in tensors.items():
            t = torch.from_numpy(array)
            batch[name] = t.pin_memory().to(self.device, non_blocking=True) if on_gpu else t
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, 0]
        return logits.float().cpu().numpy()

    def score(
        self, jobs: list[ScoreJob], *, max_batch_tokens: int = 32768, max_batch_docs: int = 512
    ) -> list[ScoreResult]:
        pairs = self._encode(jobs)
        lengths = [len(x) for x in pairs.ids]
        logits = np.empty(len(lengths), dtype=np.float32)
        for batch in pack_by_token_budget(lengths, max_batch_tokens, max_batch_docs):
            logits[batch] = self._forward(
                [pairs.ids[i] for i in batch], [pairs.first_segment[i] for i in batch]
            )
        results = []
        for start, end in zip(pairs.job_offsets, pairs.job_offsets[1:]):
            results.append(ScoreResult(logits[start:end].tolist(), lengths[start:end]))
        return results

    def warmup(self) -> None:
        """One pass at short and at full length, so the first user request pays no
        allocator growth or kernel selection."""
        self.score([ScoreJob("warm up", ["short document", "long " * self.max_length])])

    def describe(self) -> dict:
        return {
            "source": self.source,
            "device": str(self.device),
            "dtype": self.dtype,
            "weights": "random" if self.random_weights else "pretrained",
            "max_length": self.max_length,
            "max_query_tokens": self.max_query_tokens,
        }

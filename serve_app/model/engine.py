"""The cross-encoder model: loading through transformers, padding token-id pairs into
length-sorted batches under a token budget, and the forward pass. Knows nothing of Ray,
HTTP or text: pairs arrive already tokenized (see `tokenization.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.model.checkpoints import RANDOM_INIT_MARKER
from serve_app.model.packing import PackingLimits, pack_by_token_budget
from serve_app.model.tokenization import EncodedPairs

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CrossEncoderEngine:
    def __init__(
        self,
        source: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        cpu_threads: int | None = None,
        gpu_memory_fraction: float | None = None,
    ):
        self.source = source
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = dtype
        self.cpu_threads = cpu_threads
        self.use_this_thread()
        if self.device.type == "cuda" and gpu_memory_fraction:
            # Replicas share a GPU by fraction: hold each to its share of the memory too.
            # torch wants an index here (None: the current device, where "cuda" loads);
            # it rejects an unindexed `torch.device("cuda")`.
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, gpu_memory_fraction), self.device.index
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=_DTYPES[dtype]
        )
        self.model.to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"{source}: expected a cross-encoder with one logit")
        self.random_weights = bool(getattr(self.model.config, RANDOM_INIT_MARKER, False))
        self.max_length = self.model.config.max_position_embeddings

    def use_this_thread(self) -> None:
        """Apply `cpu_threads` to the calling thread. OpenMP thread counts are per thread
        and new threads start from OMP_NUM_THREADS (Ray sets it to the actor's CPUs), so a
        thread that runs forward passes must call this itself."""
        if self.device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def score(
        self, requests: list[EncodedPairs], limits: PackingLimits = PackingLimits.from_settings()
    ) -> list[np.ndarray]:
        """One float32 logit per pair, per request, in the requests' document order."""
        sizes = [len(r) for r in requests]
        owner = np.repeat(np.arange(len(requests)), sizes)
        head_lengths = np.array([len(r.head) for r in requests], dtype=np.int64)
        heads = head_lengths[owner]
        lengths = np.concatenate([r.pair_lengths for r in requests]).astype(np.int64)
        # Each pair's head and document as offsets into the requests' ids laid end to end.
        head_ids = np.concatenate([r.head for r in requests])
        doc_ids = np.concatenate([r.doc_ids for r in requests])
        doc_lengths = lengths - heads
        pair_head_start = (np.cumsum(head_lengths) - head_lengths)[owner]
        pair_doc_start = np.cumsum(doc_lengths) - doc_lengths
        # Launch every batch before reading any result back: on a GPU the host pads the
        # next batch while the device computes this one; one copy back at the end.
        launched = []
        for batch in pack_by_token_budget(lengths, limits):
            batch = np.asarray(batch)
            ids = _padded_ids(
                head_ids,
                pair_head_start[batch],
                heads[batch],
                doc_ids,
                pair_doc_start[batch],
                lengths[batch],
            )
            launched.append((batch, self._forward(ids, lengths[batch], heads[batch])))
        logits = np.empty(len(lengths), dtype=np.float32)
        if launched:
            together = torch.cat([t for _, t in launched]).float().cpu().numpy()
            logits[np.concatenate([b for b, _ in launched])] = together
        offsets = np.cumsum([0] + sizes)
        return [logits[a:b] for a, b in zip(offsets, offsets[1:])]

    def _forward(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> torch.Tensor:
        """Logits on the device, not waited for."""
        on_gpu = self.device.type == "cuda"

        def to_device(array: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(array)
            return t.pin_memory().to(self.device, non_blocking=True) if on_gpu else t

        input_ids, lengths_t, heads_t = to_device(ids), to_device(lengths), to_device(heads)
        # Mask and segment ids derive from lengths on the device: only ids cross the bus.
        positions = torch.arange(ids.shape[1], device=self.device)[None, :]
        attention_mask = positions < lengths_t[:, None]
        token_type_ids = ((positions >= heads_t[:, None]) & attention_mask).long()
        with torch.inference_mode():
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask.long(),
                token_type_ids=token_type_ids,
            ).logits[:, 0]

    def warmup(self, head_tokens: int = 10) -> None:
        """One pass at short and at full length, so the first user request pays no
        allocator growth or kernel selection."""
        doc_lengths = np.array([4, self.max_length - head_tokens], dtype=np.int32)
        head = np.array([101] + [1996] * (head_tokens - 2) + [102], dtype=np.int32)
        docs = np.full(int(doc_lengths.sum()), 1996, dtype=np.int32)
        self.score([EncodedPairs(head, docs, doc_lengths)])

    def describe(self) -> dict:
        return {
            "source": self.source,
            "device": str(self.device),
            "dtype": self.dtype,
            "weights": "random" if self.random_weights else "pretrained",
        }


def _padded_ids(
    head_ids: np.ndarray,
    head_start: np.ndarray,
    head_len: np.ndarray,
    doc_ids: np.ndarray,
    doc_start: np.ndarray,
    pair_len: np.ndarray,
) -> np.ndarray:
    """Rows of `[head][document]` ids, zero-padded to the longest pair (padded positions
    are masked out, so their value is irrelevant). Vectorised: no Python loop per row."""
    positions = np.arange(int(pair_len.max()))[None, :]
    in_head = positions < head_len[:, None]
    in_pair = positions < pair_len[:, None]
    from_head = np.take(head_ids, head_start[:, None] + positions, mode="clip")
    from_doc = np.take(doc_ids, doc_start[:, None] + positions - head_len[:, None], mode="clip")
    return np.where(in_head, from_head, np.where(in_pair, from_doc, 0)).astype(np.int64)

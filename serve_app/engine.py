"""The cross-encoder model: loading through transformers, padding token-id pairs into
length-sorted batches under a token budget, and the forward pass. Knows nothing of Ray,
HTTP or text: pairs arrive already tokenized (see `tokenization.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from serve_app.batching import PackingLimits, pack_by_token_budget
from serve_app.checkpoints import RANDOM_INIT_MARKER
from serve_app.tokenization import EncodedPairs

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
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_fraction), self.device)
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
        self, requests: list[EncodedPairs], limits: PackingLimits = PackingLimits()
    ) -> list[np.ndarray]:
        """One float32 logit per pair, per request, in the requests' document order."""
        heads = np.concatenate(
            [np.full(len(r), len(r.head), dtype=np.int64) for r in requests]
        )
        lengths = np.concatenate([r.pair_lengths for r in requests]).astype(np.int64)
        owner = np.repeat(np.arange(len(requests)), [len(r) for r in requests])
        starts = np.concatenate(
            [np.concatenate(([0], np.cumsum(r.doc_lengths)[:-1])) for r in requests]
        ).astype(np.int64)
        logits = np.empty(len(lengths), dtype=np.float32)
        for batch in pack_by_token_budget(lengths, limits):
            # Padding value is irrelevant: padded positions are masked out.
            ids = np.zeros((len(batch), int(lengths[batch].max())), dtype=np.int64)
            for row, i in enumerate(batch):
                r, h, s = requests[owner[i]], heads[i], starts[i]
                ids[row, :h] = r.head
                ids[row, h : lengths[i]] = r.doc_ids[s : s + lengths[i] - h]
            logits[batch] = self._forward(ids, lengths[batch], heads[batch])
        offsets = np.cumsum([0] + [len(r) for r in requests])
        return [logits[a:b] for a, b in zip(offsets, offsets[1:])]

    def _forward(self, ids: np.ndarray, lengths: np.ndarray, heads: np.ndarray) -> np.ndarray:
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
            logits = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask.long(),
                token_type_ids=token_type_ids,
            ).logits[:, 0]
        return logits.float().cpu().numpy()

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

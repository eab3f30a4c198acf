"""`max_tokens_per_doc` (Cohere): cut each document to its first N word-piece tokens before
scoring. Plain Python over the tokenizer the five models share; no Ray.
"""

from __future__ import annotations

from functools import cached_property

from serve_app.model.checkpoints import tokenizer_dir
from serve_app.model.tokenization import encode_windows, fixed_truncation_backend


class DocumentTruncator:
    def __init__(self, tokenizer_path: str | None = None):
        self.tokenizer_path = tokenizer_path or str(tokenizer_dir())

    @cached_property
    def model_max_length(self) -> int:
        return self._tokenizer.model_max_length

    @cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_path)

    @cached_property
    def _backend(self):
        # One truncation length for every call (see `fixed_truncation_backend`): one token
        # past the longest useful cut tells "longer than N" from "exactly N".
        return fixed_truncation_backend(self._tokenizer, self.model_max_length + 1)

    def truncate(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text cut after its `max_tokens`-th token (at that token's end offset)."""
        if max_tokens >= self.model_max_length:
            return texts  # the engine cuts pairs at the model's length anyway
        out = []
        # A text with more than `max_tokens` tokens is cut; only its start is tokenized.
        encodings = encode_windows(self._backend, texts, max_tokens + 1, offsets=True)
        for text, encoding in zip(texts, encodings):
            offsets = encoding.offsets
            out.append(text[: offsets[max_tokens - 1][1]] if len(offsets) > max_tokens else text)
        return out

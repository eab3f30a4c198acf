"""`max_tokens_per_doc` (Cohere): cut each document to its first N word-piece tokens before
scoring. Plain Python over the tokenizer the five models share; no Ray.
"""

from __future__ import annotations

from functools import cached_property

from serve_app.checkpoints import tokenizer_dir


class DocumentTruncator:
    def __init__(self, tokenizer_path: str | None = None):
        self.tokenizer_path = tokenizer_path or str(tokenizer_dir())

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_path)

    def truncate(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text cut after its `max_tokens`-th token (at that token's end offset)."""
        if max_tokens >= self.tokenizer.model_max_length:
            return texts  # the engine cuts pairs at the model's length anyway
        encoded = self.tokenizer(
            texts,
            add_special_tokens=False,
            truncation=True,
            max_length=max_tokens + 1,  # one extra token tells "longer than" from "exactly"
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out = []
        for text, offsets in zip(texts, encoded["offset_mapping"]):
            out.append(text[: offsets[max_tokens - 1][1]] if len(offsets) > max_tokens else text)
        return out

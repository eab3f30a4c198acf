"""Length-aware packing of (query, document) pairs into forward passes under a token budget.

Plain Python, no Ray or torch: Serve's `@serve.batch` gathers whole requests; this module
decides how their pairs are cut into padded model batches. Sorting by length keeps
padding small; the budget bounds activation memory whatever the mix of lengths.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_token_budget(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_docs: int
) -> list[list[int]]:
    """Group indices of `lengths` into batches, longest first.

    A batch's padded cost is `len(batch) * max(length in batch)`; it never exceeds
    `max_batch_tokens` unless a single pair alone does, and never holds more than
    `max_batch_docs` pairs. Every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    padded_len = 0  # length of the batch's first (longest) pair
    for i in order:
        if current and (
            len(current) >= max_batch_docs or padded_len * (len(current) + 1) > max_batch_tokens
        ):
            batches.append(current)
            current = []
        if not current:
            padded_len = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches

"""The cross-encoder itself: checkpoints (hub id, local directory, or a labelled random
demo), pair tokenization in the ingress (`tokenization`), length-sorted token-budget
packing (`packing`), the forward pass (`engine`), and a replica's own measurements
(`stats`).

May import: the shared modules; torch, transformers, tokenizers. Never HTTP or Ray.
"""

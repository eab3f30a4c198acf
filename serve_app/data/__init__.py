"""Package data, no code: the model catalog (`catalog.json`: fifteen MS MARCO cross-encoders,
their aliases, architectures and published figures) and the real tokenizer files the random
demo checkpoints are written with.
"""

"""Package data, no code: the model catalog (`catalog.json`: the five models, aliases and
published figures) and the real tokenizer files the random demo checkpoints are written with.
"""

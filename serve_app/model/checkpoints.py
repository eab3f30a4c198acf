"""Random-initialised checkpoints of the catalog's real architectures, with the real tokenizer.

No model hub is reachable on the build machines, so demos and tests load these through
the same transformers path as the real checkpoints. Their scores are meaningless, and
they say so: `config.json` carries `RANDOM_INIT_MARKER`, which the engine reports and the
API shows as `"weights": "random"`.

    python -m serve_app.model.checkpoints [--out DIR] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from serve_app.catalog import ModelCard, load_catalog
from serve_app.config import DEFAULT_RANDOM_CHECKPOINT_ROOT, ModelDeploymentConfig

RANDOM_INIT_MARKER = "rerank_serve_random_init"


def tokenizer_dir() -> Path:
    return Path(str(resources.files("serve_app.data").joinpath("tokenizer")))


# Model types whose published checkpoints use the bundled uncased BERT WordPiece vocabulary
# (30522 tokens), and so can be written at random with it.
_BUNDLED_VOCAB = 30522
_BUNDLED_VOCAB_TYPES = ("bert", "electra", "distilbert")
_DISTILBERT_NAMES = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
}


def random_config(architecture: Mapping[str, Any], **overrides: Any):
    """A transformers config of `architecture` (a catalog card's), marked random-init.
    `overrides` are config fields (e.g. `initializer_range`)."""
    from transformers import AutoConfig

    model_type = architecture["model_type"]
    sizes = {k: architecture[k] for k in _DISTILBERT_NAMES}
    if model_type == "distilbert":
        sizes = {_DISTILBERT_NAMES[k]: v for k, v in sizes.items()}
    else:
        sizes["type_vocab_size"] = 2
    config = AutoConfig.for_model(
        model_type,
        vocab_size=architecture["vocab_size"],
        max_position_embeddings=512,
        num_labels=architecture["num_labels"],
        **sizes,
        **overrides,
    )
    setattr(config, RANDOM_INIT_MARKER, True)
    return config


def save_random_checkpoint(config, out_dir: str | os.PathLike, seed: int, tokenizer=None) -> Path:
    """Write a `config`-shaped sequence classifier with weights drawn from `seed`, and
    `tokenizer` (default: the bundled BERT files), to `out_dir` unless one is there.

    Written to a temporary sibling and renamed, so concurrent writers are safe."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        else:
            for f in tokenizer_dir().iterdir():
                if f.is_file() and not f.name.startswith("__"):
                    shutil.copyfile(f, tmp / f.name)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def bundled_tokenizer(tokenizer_class: str):
    """The bundled uncased BERT vocabulary as `tokenizer_class` (a transformers fast
    tokenizer class name, e.g. `DistilBertTokenizerFast`): the same ids, saved with the
    class the architecture's own checkpoints name (DistilBERT's gives no token types)."""
    import transformers

    return getattr(transformers, tokenizer_class).from_pretrained(str(tokenizer_dir()))


def random_init_possible(card: ModelCard) -> bool:
    """Whether a random checkpoint of `card` can be written here: a transformers sequence
    classifier whose published tokenizer is the bundled uncased BERT one."""
    arch = card.architecture or {}
    return (
        str(arch.get("type", "")).endswith("ForSequenceClassification")
        and arch.get("vocab_size") == _BUNDLED_VOCAB
        and arch.get("model_type") in _BUNDLED_VOCAB_TYPES
    )


def write_random_checkpoint(card: ModelCard, out_dir: str | os.PathLike) -> Path:
    """Write a seeded random checkpoint of `card` to `out_dir` unless one is already there.

    The seed derives from the model name, so every replica and every run writes the same
    weights. Only cards `random_init_possible` accepts (BERT, ELECTRA and DistilBERT, one
    or two labels)."""
    if not random_init_possible(card):
        raise ValueError(
            f"{card.name}: no random checkpoint can be written for it (random_init needs a "
            "BERT, ELECTRA or DistilBERT sequence classifier with the bundled uncased vocabulary)"
        )
    # Wider than BERT's 0.02 so random logits spread over a few units instead of
    # clustering near zero: rankings in tests are then well separated.
    config = random_config(card.architecture, initializer_range=0.1)
    distilbert = config.model_type == "distilbert"
    tokenizer = bundled_tokenizer("DistilBertTokenizerFast") if distilbert else None
    return save_random_checkpoint(config, out_dir, zlib.crc32(card.name.encode()), tokenizer)


def ensure_checkpoint(model: ModelDeploymentConfig) -> str:
    """The model's source, after writing the demo checkpoint there if this is a
    random-init model and it is missing (idempotent; safe when replicas race)."""
    source = model.resolved_source()
    if model.random_init:
        write_random_checkpoint(load_catalog().resolve(model.name), source)
    return source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("RERANK_RANDOM_CHECKPOINTS", DEFAULT_RANDOM_CHECKPOINT_ROOT),
    )
    parser.add_argument(
        "--models", nargs="*", help="catalog names or aliases (default: the five v2 models)"
    )
    args = parser.parse_args(argv)
    catalog = load_catalog()
    if args.models:
        cards = [catalog.resolve(m) for m in args.models]
    else:
        cards = [c for c in catalog if c.name.endswith("-v2")]  # the family demos run
    root = Path(os.path.expanduser(args.out))
    for card in cards:
        path = write_random_checkpoint(card, root / card.short_name)
        print(f"{card.name}: RANDOM WEIGHTS (not the published model) -> {path}")


if __name__ == "__main__":
    main()

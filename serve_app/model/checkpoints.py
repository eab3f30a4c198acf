"""Random-initialised checkpoints of the five real architectures, with the real tokenizer.

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
from importlib import resources
from pathlib import Path

from serve_app.catalog import ModelCard, load_catalog
from serve_app.config import DEFAULT_RANDOM_CHECKPOINT_ROOT, ModelDeploymentConfig

RANDOM_INIT_MARKER = "rerank_serve_random_init"


def tokenizer_dir() -> Path:
    return Path(str(resources.files("serve_app.data").joinpath("tokenizer")))


def write_random_checkpoint(card: ModelCard, out_dir: str | os.PathLike) -> Path:
    """Write a seeded random checkpoint of `card` to `out_dir` unless one is already there.

    The seed derives from the model name, so every replica and every run writes the same
    weights. Written to a temporary sibling and renamed, so concurrent writers are safe.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=card.hidden_size,
        num_hidden_layers=card.num_hidden_layers,
        num_attention_heads=card.num_attention_heads,
        intermediate_size=card.intermediate_size,
        max_position_embeddings=512,
        type_vocab_size=2,
        num_labels=1,
        # Wider than BERT's 0.02 so random logits spread over a few units instead of
        # clustering near zero: rankings in tests are then well separated.
        initializer_range=0.1,
    )
    setattr(config, RANDOM_INIT_MARKER, True)
    torch.manual_seed(zlib.crc32(card.name.encode()))
    model = BertForSequenceClassification(config).eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
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
    parser.add_argument("--models", nargs="*", help="catalog names or aliases (default: all)")
    args = parser.parse_args(argv)
    catalog = load_catalog()
    cards = [catalog.resolve(m) for m in args.models] if args.models else list(catalog)
    root = Path(os.path.expanduser(args.out))
    for card in cards:
        path = write_random_checkpoint(card, root / card.short_name)
        print(f"{card.name}: RANDOM WEIGHTS (not the published model) -> {path}")


if __name__ == "__main__":
    main()

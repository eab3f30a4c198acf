"""The model catalog: the cross-encoder/ms-marco v2 family, its aliases and published figures.

Facts come from the model cards (``data/catalog.json``); which models run, and from where,
is configuration (``config.py``), not catalog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

ORGANISATION = "cross-encoder"


@dataclass(frozen=True)
class ModelCard:
    name: str
    aliases: tuple[str, ...]
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    ndcg10_trec_dl19: float
    mrr10_msmarco_dev: float
    v100_docs_per_s: float

    @property
    def short_name(self) -> str:
        """`cross-encoder/ms-marco-MiniLM-L6-v2` -> `ms-marco-MiniLM-L6-v2`; a valid Serve name."""
        return self.name.split("/", 1)[-1]

    def public_metadata(self) -> dict:
        return {
            "aliases": list(self.aliases),
            "architecture": {
                "type": "BertForSequenceClassification",
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size,
                "num_labels": 1,
            },
            "ndcg10_trec_dl19": self.ndcg10_trec_dl19,
            "mrr10_msmarco_dev": self.mrr10_msmarco_dev,
            "v100_docs_per_s": self.v100_docs_per_s,
        }


class UnknownModelError(LookupError):
    def __init__(self, requested: str, available: list[str]):
        super().__init__(requested)
        self.requested = requested
        self.available = available


class Catalog:
    def __init__(self, cards: list[ModelCard]):
        self.cards: dict[str, ModelCard] = {c.name: c for c in cards}
        self._lookup: dict[str, str] = {}
        for card in cards:
            for spelling in (card.name, *card.aliases):
                # Accept any case and the bare name without the organisation prefix.
                key = spelling.lower()
                self._lookup[key] = card.name
                self._lookup[key.split("/", 1)[-1]] = card.name

    def resolve(self, name: str) -> ModelCard:
        canonical = self._lookup.get(name.strip().lower())
        if canonical is None:
            raise UnknownModelError(name, sorted(self.cards))
        return self.cards[canonical]

    def __iter__(self):
        return iter(self.cards.values())


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    raw = json.loads(resources.files("serve_app.data").joinpath("catalog.json").read_text())
    cards = []
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        cards.append(
            ModelCard(
                name=name,
                aliases=tuple(entry.get("aliases", ())),
                hidden_size=entry["hidden_size"],
                num_hidden_layers=entry["num_hidden_layers"],
                num_attention_heads=entry["num_attention_heads"],
                intermediate_size=entry["intermediate_size"],
                ndcg10_trec_dl19=entry["ndcg10_trec_dl19"],
                mrr10_msmarco_dev=entry["mrr10_msmarco_dev"],
                v100_docs_per_s=entry["v100_docs_per_s"],
            )
        )
    return Catalog(cards)

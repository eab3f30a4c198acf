"""The model catalog: cross-encoders with published MS MARCO figures (the ms-marco v2
family, v1, and the other checkpoints the cards compare), their aliases and architectures;
and cards for models outside it, which a config serves from `source` alone.

Facts come from the model cards (``data/catalog.json``); which models run, and from where,
is configuration (``config.py``), not catalog. A card without figures (a model outside the
catalog whose config gives none) is routed by name, and by budget from its measured speed
only; it never meets an accuracy floor (see ``routing/budget.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

ORGANISATION = "cross-encoder"


@dataclass(frozen=True)
class ModelCard:
    name: str
    aliases: tuple[str, ...] = ()
    # The checkpoint's config as published (class, sizes, labels); None: not known before
    # the checkpoint is loaded (a model outside the catalog).
    architecture: Mapping[str, Any] | None = field(default=None, compare=False)
    ndcg10_trec_dl19: float | None = None
    mrr10_msmarco_dev: float | None = None
    v100_docs_per_s: float | None = None
    # Default `score_label` for a checkpoint with more than one label (name or index).
    score_label: str | int | None = None
    in_catalog: bool = True
    note: str | None = None

    @property
    def short_name(self) -> str:
        """`cross-encoder/ms-marco-MiniLM-L6-v2` -> `ms-marco-MiniLM-L6-v2`; a valid Serve name."""
        return self.name.split("/", 1)[-1]

    @property
    def organisation(self) -> str:
        return self.name.split("/", 1)[0] if "/" in self.name else ORGANISATION

    def public_metadata(self) -> dict:
        return {
            "aliases": list(self.aliases),
            "architecture": dict(self.architecture or {}),
            "ndcg10_trec_dl19": self.ndcg10_trec_dl19,
            "mrr10_msmarco_dev": self.mrr10_msmarco_dev,
            "v100_docs_per_s": self.v100_docs_per_s,
            "in_catalog": self.in_catalog,
        }


class UnknownModelError(LookupError):
    def __init__(self, requested: str, available: list[str]):
        super().__init__(requested)
        self.requested = requested
        self.available = available


class Catalog:
    def __init__(self, cards: Iterable[ModelCard]):
        self.cards: dict[str, ModelCard] = {c.name: c for c in cards}
        self._lookup: dict[str, str] = {}
        for card in self.cards.values():
            for spelling in (card.name, *card.aliases):
                # Any case; and the bare name without the organisation prefix. A name that
                # gives an organisation must give the right one: `myorg/ms-marco-MiniLM-L6-v2`
                # (a fine-tune, say) is not the catalog's model.
                key = spelling.lower()
                self._lookup[key] = card.name
                self._lookup.setdefault(key.split("/", 1)[-1], card.name)

    def find(self, name: str) -> ModelCard | None:
        canonical = self._lookup.get(name.strip().lower())
        return None if canonical is None else self.cards[canonical]

    def resolve(self, name: str) -> ModelCard:
        card = self.find(name)
        if card is None:
            raise UnknownModelError(name, sorted(self.cards))
        return card

    def with_cards(self, cards: Iterable[ModelCard]) -> Catalog:
        """This catalog and `cards` (models a config serves from `source` alone)."""
        return Catalog([*self.cards.values(), *cards])

    def __iter__(self) -> Iterator[ModelCard]:
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
                architecture=entry["architecture"],
                ndcg10_trec_dl19=entry["ndcg10_trec_dl19"],
                mrr10_msmarco_dev=entry["mrr10_msmarco_dev"],
                v100_docs_per_s=entry["v100_docs_per_s"],
                score_label=entry.get("score_label"),
                note=entry.get("note"),
            )
        )
    return Catalog(cards)

"""What `--systems` names, and the request fields each one sends.

- a model name or alias (`cross-encoder/ms-marco-MiniLM-L6-v2`, `MiniLM-L6`, ...): that model;
- `auto`, optionally with a budget: `auto:max_latency_ms=50`, `auto:min_ndcg=72,max_latency_ms=80`
  (keys: `max_latency_ms`, `min_ndcg`, `min_mrr`);
- `cascade`, optionally with its stages: `cascade:first=TinyBERT-L2,second=MiniLM-L12,keep=20`;
- `first-stage`: the input run itself, the baseline; sends no request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

FIRST_STAGE = "first-stage"
BUDGET_KEYS = ("max_latency_ms", "min_ndcg", "min_mrr")
CASCADE_KEYS = ("first", "second", "keep")


@dataclass(frozen=True)
class System:
    spec: str  # as given on the command line: the report's `system`
    fields: dict[str, Any] = field(default_factory=dict)  # added to every request body

    @property
    def is_first_stage(self) -> bool:
        return self.spec == FIRST_STAGE

    @property
    def file_stem(self) -> str:
        """A file name (and TREC run tag) for this system: no slashes, colons or spaces."""
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.spec).strip("_") or "system"


def _options(spec: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in allowed or not value:
            raise ValueError(
                f"system {spec!r}: {item.strip()!r} is not `key=value` with a key among "
                f"{', '.join(allowed)}"
            )
        options[key] = value
    return options


def _number(spec: str, key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"system {spec!r}: {key} must be a number, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"system {spec!r}: {key} must be positive, got {value!r}")
    return number


def parse_system(spec: str) -> System:
    spec = spec.strip()
    if not spec:
        raise ValueError("an empty system name")
    head, colon, rest = spec.partition(":")
    if head == FIRST_STAGE:
        if colon:
            raise ValueError(f"system {spec!r}: first-stage takes no options")
        return System(spec)
    if head == "auto":
        fields: dict[str, Any] = {"model": "auto"}
        if colon:
            options = _options(spec, rest, BUDGET_KEYS)
            fields |= {k: _number(spec, k, v) for k, v in options.items()}
        return System(spec, fields)
    if head == "cascade":
        if not colon:
            return System(spec, {"model": "cascade"})
        options = _options(spec, rest, CASCADE_KEYS)
        cascade: dict[str, Any] = {k: v for k, v in options.items() if k != "keep"}
        if "keep" in options:
            if not options["keep"].isdigit() or int(options["keep"]) < 1:
                raise ValueError(f"system {spec!r}: keep must be a positive integer")
            cascade["keep"] = int(options["keep"])
        return System(spec, {"model": "cascade", "cascade": cascade})
    # Anything else is a model name or alias; the service says (404) if it does not know it.
    return System(spec, {"model": spec})


def parse_systems(text: str) -> list[System]:
    """`--systems`: comma- or space-separated, except commas inside a `name:options` item
    (`auto:min_ndcg=72,max_latency_ms=80` is one system)."""
    items: list[str] = []
    for token in text.replace(" ", ",").split(","):
        token = token.strip()
        if not token:
            continue
        if "=" in token and ":" not in token and items:
            items[-1] += "," + token  # the next option of the previous `name:k=v` item
        else:
            items.append(token)
    if not items:
        raise ValueError("--systems names no system")
    systems = [parse_system(item) for item in items]
    specs = [s.spec for s in systems]
    duplicates = sorted({s for s in specs if specs.count(s) > 1})
    if duplicates:
        raise ValueError(f"--systems names {', '.join(duplicates)} twice")
    stems = [s.file_stem for s in systems]
    if len(set(stems)) != len(stems):
        raise ValueError("--systems: two systems map to the same run file name")
    return systems

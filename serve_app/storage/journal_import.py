"""`rerank-import-journal`: load a JSON-lines usage journal (what the ledger wrote before
usage moved into a database) into the usage store, so no history is lost.

    rerank-import-journal ~/.local/state/rerank-serve/usage.jsonl                # SQLite default
    rerank-import-journal usage.jsonl --config deployments/gpu-1.yaml   # that config's store
    rerank-import-journal usage.jsonl --sqlite /srv/usage.db

Safe to run more than once: request ids already stored are skipped by the database. A
torn last line (a crash mid-write; its request was never answered) is skipped. Journal
lines carry no time, so they are dated by the journal file's modification time, the
latest they can be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from serve_app.config import AppConfig, UsageConfig
from serve_app.storage import UsageRecord, open_store

BATCH = 5000


def parse_line(line: str, served_at: float) -> UsageRecord:
    data = json.loads(line)
    if "usd_per_1k_documents" in data:  # written before charges were per stage
        data["charges"] = [[data["documents"], data.pop("usd_per_1k_documents")]]
    charges = tuple((int(n), float(p)) for n, p in data.pop("charges"))
    served_at = float(data.pop("served_at", served_at))
    data.setdefault("windows", data["documents"])  # journals predate chunking: one pair each
    return UsageRecord(**data, charges=charges, served_at=served_at)


def read_journal(path: Path) -> Iterator[UsageRecord | None]:
    """Each line's record, or None for a line that is not one (a torn write)."""
    served_at = path.stat().st_mtime
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield parse_line(line, served_at)
            except (ValueError, TypeError, KeyError):
                yield None


async def import_journal(path: Path, config: UsageConfig) -> dict[str, int]:
    store = open_store(config)
    counts = {"stored": 0, "already_stored": 0, "skipped": 0}
    batch: list[UsageRecord] = []

    async def flush() -> None:
        stored = await store.insert(batch)
        counts["stored"] += sum(stored)
        counts["already_stored"] += len(stored) - sum(stored)
        batch.clear()

    try:
        for record in read_journal(path):
            if record is None:
                counts["skipped"] += 1
                continue
            batch.append(record)
            if len(batch) >= BATCH:
                await flush()
        if batch:
            await flush()
    finally:
        await store.close()
    return counts


def usage_config(serve_config: str | None, sqlite_path: str | None) -> UsageConfig:
    config = UsageConfig()
    if serve_config is not None:
        raw = yaml.safe_load(Path(serve_config).read_text())
        args = raw["applications"][0]["args"] if "applications" in raw else raw
        config = AppConfig.model_validate(args).usage
    if sqlite_path is not None:
        config = config.model_copy(update={"store": "sqlite", "sqlite_path": sqlite_path})
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rerank-import-journal",
        description="Load a JSON-lines usage journal into the usage database, once.",
    )
    parser.add_argument("journal", type=Path)
    parser.add_argument(
        "--config",
        help="a Serve config (deployments/*.yaml): use its `usage` store; PostgreSQL reads "
        "the DSN from the environment variable it names",
    )
    parser.add_argument("--sqlite", help="this SQLite file instead")
    args = parser.parse_args(argv)
    config = usage_config(args.config, args.sqlite)
    where = config.sqlite_path if config.store == "sqlite" else f"${config.postgres_dsn_env}"
    counts = asyncio.run(import_journal(args.journal, config))
    print(
        f"{args.journal} -> {config.store} ({os.path.expanduser(where)}): "
        f"{counts['stored']} stored, {counts['already_stored']} already stored, "
        f"{counts['skipped']} unreadable lines skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rerank-import-journal`: an old JSON-lines journal loaded into the store once, torn
line skipped, a second run storing nothing twice."""

from __future__ import annotations

import json
import os
import sqlite3

import yaml

from serve_app.storage.journal_import import main

L6 = "cross-encoder/ms-marco-MiniLM-L6-v2"


def write_journal(path) -> None:
    lines = [
        # Before charges were per stage: one price per request.
        {"request_id": "old", "key_id": "alice", "model": L6, "documents": 500,
         "tokens": 5000, "usd_per_1k_documents": 0.008},
        {"request_id": "cascade", "key_id": "alice", "model": "cascade", "documents": 120,
         "tokens": 9000, "charges": [[100, 0.004], [20, 0.012]]},
        {"request_id": "bob1", "key_id": "bob", "model": L6, "documents": 7, "tokens": 70,
         "charges": [[7, 0.008]]},
    ]  # fmt: skip
    path.write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"request_id": "torn", "key'
    )
    os.utime(path, (1_764_547_200, 1_764_547_200))  # 2025-12-01 00:00 UTC


def rows(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT request_id, key_id, documents, cost_nano_usd, served_at FROM usage_records"
            " ORDER BY request_id"
        ).fetchall()


def test_a_journal_is_imported_once_with_its_old_lines_and_without_its_torn_one(tmp_path, capsys):
    journal, db = tmp_path / "usage.jsonl", tmp_path / "usage.db"
    write_journal(journal)
    assert main([str(journal), "--sqlite", str(db)]) == 0
    assert "3 stored, 0 already stored, 1 unreadable lines skipped" in capsys.readouterr().out
    assert rows(db) == [
        ("bob1", "bob", 7, 56_000, 1_764_547_200.0),
        ("cascade", "alice", 120, 640_000, 1_764_547_200.0),  # $0.0004 + $0.00024
        ("old", "alice", 500, 4_000_000, 1_764_547_200.0),
    ]
    assert main([str(journal), "--sqlite", str(db)]) == 0  # again: nothing twice
    assert "0 stored, 3 already stored" in capsys.readouterr().out
    assert len(rows(db)) == 3


def test_the_store_comes_from_a_serve_config(tmp_path, capsys):
    journal, db = tmp_path / "usage.jsonl", tmp_path / "from-config.db"
    write_journal(journal)
    config = tmp_path / "serve.yaml"
    args = {"models": [{"name": L6}], "usage": {"store": "sqlite", "sqlite_path": str(db)}}
    config.write_text(yaml.safe_dump({"applications": [{"args": args}]}))
    assert main([str(journal), "--config", str(config)]) == 0
    assert str(db) in capsys.readouterr().out
    assert len(rows(db)) == 3

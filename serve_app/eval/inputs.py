"""Reading the inputs IR people already have: TREC qrels (`qid 0 docid rel`), TREC runs
(`qid Q0 docid rank score tag`), and MS MARCO-style TSV files (`id<TAB>text`) for queries
and the collection. Every malformed line is an `InputError` naming the file and line."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ir_measures import Qrel


class InputError(ValueError):
    """A malformed or inconsistent input file; the message names the file and line."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines without their newline, blank lines skipped; streamed, never slurped."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def read_qrels(path: Path) -> list[Qrel]:
    qrels: list[Qrel] = []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 4:
            raise InputError(
                f"{path}:{number}: a qrels line is `qid iteration docid relevance` "
                f"(4 fields), got {len(fields)}: {line[:80]!r}"
            )
        qid, _iteration, docid, relevance = fields
        try:
            rel = int(relevance)
        except ValueError:
            raise InputError(
                f"{path}:{number}: relevance must be an integer, got {relevance!r}"
            ) from None
        qrels.append(Qrel(qid, docid, rel))
    if not qrels:
        raise InputError(f"{path}: no judgments")
    return qrels


@dataclass(frozen=True)
class Candidate:
    docid: str
    score: float  # the first stage's own score, kept for the `first-stage` baseline


def read_run(path: Path, depth: int) -> dict[str, list[Candidate]]:
    """Each query's top `depth` candidates, best first: by score descending, ties by the
    file's rank column (then by position in the file), so the order is deterministic."""
    rows: dict[str, list[tuple[float, int, int, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 6:
            raise InputError(
                f"{path}:{number}: a run line is `qid Q0 docid rank score tag` "
                f"(6 fields), got {len(fields)}: {line[:80]!r}"
            )
        qid, _q0, docid, rank_text, score_text, _tag = fields
        try:
            rank = int(rank_text)
            score = float(score_text)
        except ValueError:
            raise InputError(
                f"{path}:{number}: rank must be an integer and score a number, "
                f"got {rank_text!r} and {score_text!r}"
            ) from None
        if not math.isfinite(score):
            raise InputError(f"{path}:{number}: score must be finite, got {score_text!r}")
        if (qid, docid) in seen:
            raise InputError(f"{path}:{number}: document {docid!r} twice for query {qid!r}")
        seen.add((qid, docid))
        rows.setdefault(qid, []).append((-score, rank, number, docid))
    if not rows:
        raise InputError(f"{path}: no run lines")
    return {
        qid: [Candidate(docid, -neg_score) for neg_score, _, _, docid in sorted(ranked)[:depth]]
        for qid, ranked in rows.items()
    }


def _tsv_entry(path: Path, number: int, line: str) -> tuple[str, str]:
    key, tab, text = line.partition("\t")
    if not tab or not key.strip():
        raise InputError(
            f"{path}:{number}: expected `id<TAB>text`, got {line[:80]!r}"
            + ("" if tab else " (no tab)")
        )
    return key.strip(), text


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, line in _lines(path):
        qid, text = _tsv_entry(path, number, line)
        if qid in queries:
            raise InputError(f"{path}:{number}: query {qid!r} defined twice")
        queries[qid] = text
    return queries


def read_documents(path: Path, wanted: Iterable[str]) -> dict[str, str]:
    """Only the `wanted` documents' texts, streaming the collection line by line (MS MARCO's
    passage collection is 8.8 million lines), stopping once all of them are found."""
    missing = set(wanted)
    found: dict[str, str] = {}
    for number, line in _lines(path):
        docid, text = _tsv_entry(path, number, line)
        if docid in missing:
            found[docid] = text
            missing.discard(docid)
            if not missing:
                break
    if missing:
        example = ", ".join(sorted(missing)[:5])
        raise InputError(
            f"{path}: {len(missing)} document(s) of the run are not in the collection "
            f"(e.g. {example})"
        )
    return found

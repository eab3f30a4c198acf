"""Each system's reranked TREC run, written query by query as answers arrive, with two
sidecars: the latency of each query's request (`.timings.tsv`) and the cost and wall time of
the sessions so far (`.totals.json`). Running the same command again resumes: queries whose
complete candidate list is already in the run file are not sent again."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ir_measures import ScoredDoc

from serve_app.eval.systems import System


@dataclass
class Timing:
    latency_ms: float
    documents: int


@dataclass
class Totals:
    """Summed over the sessions that worked on this system's run (for resumed runs)."""

    cost_usd: float | None = 0.0  # None once any session could not read /v1/usage
    wall_s: float = 0.0


@dataclass
class RunStore:
    directory: Path
    system: System
    candidates: Mapping[str, Sequence[str]]  # qid -> the docids to be reranked
    rankings: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)

    @property
    def run_path(self) -> Path:
        return self.directory / f"{self.system.file_stem}.run"

    @property
    def timings_path(self) -> Path:
        return self.directory / f"{self.system.file_stem}.timings.tsv"

    @property
    def totals_path(self) -> Path:
        return self.directory / f"{self.system.file_stem}.totals.json"

    def load(self) -> None:
        """What earlier sessions finished. A query counts as done only when the file holds
        exactly its candidates (an interrupted write leaves fewer: it is sent again)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines: dict[str, list[tuple[int, str, float]]] = {}
        if self.run_path.exists():
            for line in self.run_path.read_text(encoding="utf-8").splitlines():
                fields = line.split()
                if len(fields) != 6:
                    continue  # a torn last line
                qid, _, docid, rank, score, _ = fields
                try:
                    lines.setdefault(qid, []).append((int(rank), docid, float(score)))
                except ValueError:
                    continue
        for qid, rows in lines.items():
            expected = self.candidates.get(qid)
            docids = [docid for _, docid, _ in rows]
            if expected is not None and sorted(docids) == sorted(expected):
                self.rankings[qid] = [(docid, score) for _, docid, score in sorted(rows)]
        if self.timings_path.exists():
            for line in self.timings_path.read_text(encoding="utf-8").splitlines():
                fields = line.split("\t")
                if len(fields) == 3 and fields[0] in self.rankings:
                    try:
                        self.timings[fields[0]] = Timing(float(fields[1]), int(fields[2]))
                    except ValueError:
                        continue
        self.rewrite()  # drop what was torn or is not of these inputs

    def totals(self) -> Totals:
        if not self.totals_path.exists():
            return Totals()
        data = json.loads(self.totals_path.read_text(encoding="utf-8"))
        return Totals(data.get("cost_usd"), float(data.get("wall_s", 0.0)))

    def add_session(self, cost_usd: float | None, wall_s: float) -> None:
        totals = self.totals()
        cost = None if cost_usd is None or totals.cost_usd is None else totals.cost_usd + cost_usd
        self._replace(
            self.totals_path, json.dumps({"cost_usd": cost, "wall_s": totals.wall_s + wall_s})
        )

    def _run_lines(self, qid: str, ranking: Sequence[tuple[str, float]]) -> str:
        tag = self.system.file_stem
        return "".join(
            f"{qid} Q0 {docid} {rank} {score!r} {tag}\n"
            for rank, (docid, score) in enumerate(ranking, start=1)
        )

    def add(self, qid: str, ranking: list[tuple[str, float]], timing: Timing | None) -> None:
        # One write per query, flushed: a crash loses at most the query being written.
        with self.run_path.open("a", encoding="utf-8") as f:
            f.write(self._run_lines(qid, ranking))
        if timing is not None:
            with self.timings_path.open("a", encoding="utf-8") as f:
                f.write(f"{qid}\t{timing.latency_ms!r}\t{timing.documents}\n")
            self.timings[qid] = timing
        self.rankings[qid] = ranking

    def rewrite(self) -> None:
        """The files in input query order, holding only complete queries."""
        order = [qid for qid in self.candidates if qid in self.rankings]
        self._replace(self.run_path, "".join(self._run_lines(q, self.rankings[q]) for q in order))
        timed = [qid for qid in order if qid in self.timings]
        if not timed and not self.timings_path.exists():
            return  # the first-stage baseline sends no requests
        self._replace(
            self.timings_path,
            "".join(
                f"{q}\t{self.timings[q].latency_ms!r}\t{self.timings[q].documents}\n" for q in timed
            ),
        )

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)

    def scored_docs(self) -> list[ScoredDoc]:
        return [
            ScoredDoc(qid, docid, score)
            for qid, ranking in self.rankings.items()
            for docid, score in ranking
        ]

"""The documented error types are exactly the types the code can answer with: read from
`serve_app/api/errors.py` (its table and the framework's refusals) and from the Errors
table of docs/api.md, so adding a type without documenting it, or documenting one the
code cannot send, fails here."""

from __future__ import annotations

import re
from pathlib import Path

from serve_app.api.errors import ERROR_TABLE, error_types

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"


def documented_errors() -> list[tuple[str, set[str]]]:
    """(status cell, types) per row of the table under `## Errors` in docs/api.md."""
    text = API_DOC.read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.startswith("|") or set(cells[0]) <= set("-"):
            continue
        if cells[0] == "status":
            continue
        rows.append((cells[0], set(re.findall(r"`([a-z_]+)`", cells[1]))))
    return rows


def test_documented_error_types_are_the_ones_the_code_produces():
    rows = documented_errors()
    documented = set().union(*(types for _, types in rows))
    assert documented == error_types(), (
        f"undocumented: {sorted(error_types() - documented)}, "
        f"documented but never sent: {sorted(documented - error_types())}"
    )


def test_each_table_type_is_documented_with_its_status():
    rows = documented_errors()
    for row in ERROR_TABLE.values():
        statuses = [status for status, types in rows if row.type in types]
        assert any(status.startswith(str(row.status)) for status in statuses), (row, statuses)

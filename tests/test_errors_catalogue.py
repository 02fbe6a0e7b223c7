"""docs/errors.md cannot drift: every row names a test that exists and asserts the quoted text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (?P<fault>[^|]+) \| (?P<exit>\d+) \| (?P<seen>.+) \| `(?P<test>tests/[^`]+)` \|$")


def catalogue_rows() -> list[dict]:
    rows = [m.groupdict() for m in map(ROW.match, (REPO / "docs" / "errors.md").read_text().splitlines()) if m]
    assert len(rows) >= 30, "the catalogue lost rows"
    return rows


def string_parts(function: ast.AST) -> list[str]:
    """Every literal string piece in the function (f-string pieces included, implicit concatenation joined)."""
    return [n.value for n in ast.walk(function) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def fragments(cell: str) -> list[str]:
    """The backticked texts of a cell, split at {placeholders} and "..." (the parts the test must assert)."""
    out = []
    for quoted in re.findall(r"`([^`]+)`", cell):
        for piece in re.split(r"\{[a-z_]+\}| \.\.\. ", quoted.replace('\\"', '"')):
            if piece.strip():
                out.append(piece)
    return out


def test_every_row_is_asserted_by_its_test():
    sources: dict[str, ast.Module] = {}
    problems = []
    for row in catalogue_rows():
        file, name = row["test"].split("::")
        tree = sources.setdefault(file, ast.parse((REPO / file).read_text()))
        function = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)
        if function is None:
            problems.append(f"{row['test']}: no such test")
            continue
        called = {n.func.id for n in ast.walk(function) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        # module constants (READ_ONLY = "...", CASES) and the file's helpers the test calls assert for it too
        shared = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                  or (isinstance(n, ast.FunctionDef) and n.name in called)]
        parts = string_parts(function) + [s for n in shared for s in string_parts(n)]
        for fragment in fragments(row["seen"]):
            if not any(fragment in p for p in parts) and fragment not in "".join(parts):
                problems.append(f"{row['test']}: does not assert {fragment!r}")
    assert not problems, "\n".join(problems)

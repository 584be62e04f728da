"""The claim -> test table (docs/claims.md) names tests that exist: a test renamed or removed must take
its row with it, or the table would vouch for a claim nothing checks any more."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "claims.md"
# `file.py::name`, `::name` (the file of the reference before it in the same row), `file.py::*`
REFERENCE = re.compile(r"`((?:[\w/]+\.py)?)::(\*|\w+)(?:\[[^\]]*\])?`")
FOLDERS = ("tests/integration", "tests", "tests/vllm_engine", "tests/gpu")


def _test_file(name: str) -> Path:
    for folder in FOLDERS:
        path = ROOT / folder / name
        if path.is_file():
            return path
    raise AssertionError(f"docs/claims.md names {name}, which is in none of {', '.join(FOLDERS)}")


def _references() -> list[tuple[str, str, str]]:
    """(row's claim, test file, function name or *) for every reference of the table."""
    found = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        current = None
        for cell in cells[1:]:
            for match in REFERENCE.finditer(cell):
                file, function = match.groups()
                current = file or current
                assert current, f"{function} is named without a file in: {line[:100]}"
                found.append((cells[0][:60], current, function))
    return found


def test_the_table_names_tests_that_exist():
    references = _references()
    assert len(references) > 150  # the whole table was read, not a part of it
    missing = []
    for claim, file, function in references:
        source = _test_file(file).read_text()
        if function != "*" and not re.search(rf"^(?:async )?def {function}\(", source, re.M):
            missing.append(f"{file}::{function} (claim: {claim})")
    assert not missing, "docs/claims.md names tests that do not exist:\n" + "\n".join(missing)

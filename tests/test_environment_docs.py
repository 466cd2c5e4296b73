"""docs/environment.md's table names every MICAFENCE_* variable the code reads, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "middleware" / "micafence", ROOT / "bench", ROOT / "examples"]
NAME = re.compile(r"MICAFENCE_[A-Z0-9_]*")


def names_in_code() -> set[str]:
    return {name for source in SOURCES for path in source.rglob("*.py")
            for name in NAME.findall(path.read_text(encoding="utf-8"))}


def names_in_table() -> set[str]:
    page = (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")
    table = page.split("\n## ")[0]  # the first table; the second lists other variables
    return {match for row in table.splitlines() if row.startswith("| `MICAFENCE_")
            for match in NAME.findall(row.split("|")[1])}


def test_every_variable_in_the_code_is_in_the_table() -> None:
    table = names_in_table()
    # A name ending in "_" is a prefix the code matches (`MICAFENCE_BENCH_*`).
    missing = {name for name in names_in_code()
               if not (name in table or (name.endswith("_") and any(
                   listed.startswith(name) for listed in table)))}
    assert not missing, f"docs/environment.md does not list: {sorted(missing)}"


def test_every_variable_in_the_table_is_in_the_code() -> None:
    code = names_in_code()
    assert code, "no MICAFENCE_ name found in the code: the search is broken"
    unknown = names_in_table() - code
    assert not unknown, f"docs/environment.md lists what the code does not read: {sorted(unknown)}"

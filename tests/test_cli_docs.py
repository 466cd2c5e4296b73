"""docs/cli-reference.md is rendered from the ``micafence`` parsers and cannot drift from them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from micafence.cli import build_parser
from micafence.cli_docs import REGENERATE, render

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli-reference.md"


def test_the_committed_page_is_a_fresh_render() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        f"docs/cli-reference.md differs from the parsers: regenerate it with `{REGENERATE}`")


def test_the_regenerate_command_prints_the_page() -> None:
    done = subprocess.run([sys.executable, "-m", "micafence.cli_docs"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout == render()


def test_a_default_read_from_the_environment_is_rendered_as_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICAFENCE_STORE", "redis://secret-host:6379/0")
    assert "secret-host" not in render()


def _commands(
    parser: argparse.ArgumentParser, path: str = "micafence",
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{path} {name}")
    return found


def _first_cell(row: str) -> str:
    """``--format {text,json,github}`` -> ``--format``; ``[GRANT_ID]`` -> ``GRANT_ID``."""
    return row.split("|")[1].strip(" `").split(",")[0].split(" ")[0].strip("[]").rstrip(".")


@pytest.mark.parametrize(("path", "parser"), _commands(build_parser(None)),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_command_has_a_section_naming_each_of_its_options_and_defaults(
    path: str, parser: argparse.ArgumentParser,
) -> None:
    found = re.search(rf"^#+ {path}\n(.*?)(?=^#|\Z)", render(), re.MULTILINE | re.DOTALL)
    assert found is not None, f"no section for {path}"
    rows = {_first_cell(row): row for row in found.group(1).splitlines() if row.startswith("| `")}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = (action.option_strings or [str(action.metavar or action.dest.upper())])[0]
        assert name in rows, f"{path}: {name} is not listed"
        if action.choices is not None:
            assert all(str(choice) in rows[name] for choice in action.choices), rows[name]
        if action.required:
            assert rows[name].endswith("| required |"), rows[name]
        elif action.default not in (None, False, [], argparse.SUPPRESS):
            assert rows[name].endswith(f"| `{action.default}` |"), rows[name]

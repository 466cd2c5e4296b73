"""The command-line reference, rendered as Markdown from the ``micafence`` parsers themselves.

``python -m micafence.cli_docs > docs/cli-reference.md`` writes the manual's page;
``tests/test_cli_docs.py`` fails when the committed page differs from a fresh render, so the
page cannot drift from the code. Commands other distributions add (``micafence.subcommands``)
come after the core's, named as such.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points

from micafence.cli import SUBCOMMANDS, build_parser

REGENERATE = "python -m micafence.cli_docs > docs/cli-reference.md"

_HEADER = f"""\
# Command reference

<!-- Generated from the parsers by `{REGENERATE}`: edit the parsers, not this page. -->

Every command, subcommand and option of `micafence`, as its parser defines them
(`micafence COMMAND --help` prints the same). Times, exit codes, environment variables and the
use of each command in CI are on [Command line](cli.md).
"""
_VARIABLE = re.compile(r"\$[A-Z][A-Z0-9_]*(?:\[_[A-Z]+\])?")
_ENVIRONMENT_PREFIX = "MICAFENCE_"


def render() -> str:
    """The reference page: the commands at a glance, then one section per command."""
    with _without_micafence_environment():  # a few defaults are read from the environment
        core = build_parser("check")  # a core command: no other distribution's commands
        full = build_parser(None)
    commands = _subcommands(full)
    added = sorted(set(commands) - set(_subcommands(core)))
    names = [name for name in commands if name not in added] + added
    providers = {e.name: e.dist.name for e in entry_points(group=SUBCOMMANDS) if e.dist}
    lines = [_HEADER, "## micafence", "", _text(full.description or ""), "",
             "| option | what | default |", "|---|---|---|", *_options_table(full), "",
             "| command | what |", "|---|---|"]
    sections: list[str] = []
    for name in names:
        parser, summary = commands[name]
        if name in added:
            summary += f" (from {providers.get(name, 'another distribution')})"
        lines.append(f"| [`micafence {name}`](#micafence-{name}) | {_text(summary)} |")
        sections += _command(f"micafence {name}", parser, summary, level=2)
    return "\n".join([*lines, "", *sections]).rstrip("\n") + "\n"


def _command(path: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    subcommands = _subcommands(parser)
    about = _text(parser.description or summary)
    lines = [f"{'#' * level} {path}", "", about[:1].upper() + about[1:], "",
             f"Usage: `{_usage(path, parser, bool(subcommands))}`", ""]
    rows = _options_table(parser)
    if rows:
        lines += ["| argument | what | default |", "|---|---|---|", *rows, ""]
    if subcommands:
        lines += ["| subcommand | what |", "|---|---|"]
        lines += [f"| [`{name}`](#{path.replace(' ', '-')}-{name}) | {_text(help_text)} |"
                  for name, (_, help_text) in subcommands.items()]
        lines.append("")
    for name, (sub, help_text) in subcommands.items():
        lines += _command(f"{path} {name}", sub, help_text, level + 1)
    return lines


def _subcommands(
    parser: argparse.ArgumentParser,
) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and one-line help, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (
        argparse._HelpAction, argparse._SubParsersAction))]


def _usage(path: str, parser: argparse.ArgumentParser, has_subcommands: bool) -> str:
    words = [path]
    optional = False
    for action in _arguments(parser):
        if action.option_strings and not action.required:
            optional = True
        elif action.option_strings:
            words.append(f"{action.option_strings[0]} {_metavar(action)}".rstrip())
        else:
            words.append(_positional(action))
    if optional:
        words.append("[OPTIONS]")
    if has_subcommands:
        words.append("SUBCOMMAND ...")
    return " ".join(words)


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in _arguments(parser):
        if action.option_strings:
            shown = ", ".join(action.option_strings)
            metavar = _metavar(action)
            name = f"{shown} {metavar}".rstrip()
        else:
            name = _positional(action)
        what = _text(action.help or "")
        if isinstance(action, argparse._AppendAction):
            what += " (repeatable)"
        rows.append(f"| `{name}` | {what} | {_default(action)} |")
    return rows


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return str(action.metavar or action.dest.upper())


def _positional(action: argparse.Action) -> str:
    name = str(action.metavar or action.dest.upper())
    if action.nargs == "+":
        return f"{name}..."
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs == "*":
        return f"[{name}...]"
    return name


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse._VersionAction) or action.default in (
            None, False, [], argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def _text(help_text: str) -> str:
    """Help text as a table cell: environment variables as code, pipes escaped."""
    cell = _VARIABLE.sub(lambda match: f"`{match.group()}`", " ".join(help_text.split()))
    return cell.replace("|", "\\|")


@contextmanager
def _without_micafence_environment() -> Iterator[None]:
    """Hide ``MICAFENCE_*`` variables while the parsers are built, so a default read from the
    environment (``--store``'s ``$MICAFENCE_STORE``) is rendered as unset."""
    hidden = {k: v for k, v in os.environ.items() if k.startswith(_ENVIRONMENT_PREFIX)}
    for key in hidden:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(hidden)


if __name__ == "__main__":
    print(render(), end="")

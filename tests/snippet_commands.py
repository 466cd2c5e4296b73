"""The command lines of the docs' shell blocks, and the checks ``tests/test_snippets.py`` makes
of them: a ``micafence`` line is parsed by micafence's own parser, a ``pip install`` line names
only extras that exist. The notation is described in ``tests/test_snippets.py``.

A command is found where another program runs it too: ``python -m micafence`` and
``python -m pip``; after a launcher (``docker run IMAGE micafence …``, ``sudo``, ``env``); and
inside ``$(…)``, which is checked as a command line of its own. What names a module of this
repository is imported: ``python -m micafence.cli_docs``, an import path given to a server
(``gunicorn -k micafence.workers.UvicornWorker``, ``uvicorn micafence_tools.bench.apps:app``)
and the imports of ``python -c CODE``."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micafence.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
#: What a ``pip install`` line may name, and the pyproject that defines its extras.
DISTRIBUTIONS = {".": ROOT, "micafence": ROOT, "./bench": ROOT / "bench",
                 "micafence-tools": ROOT / "bench"}
_SEPARATORS = {"&&", "||", ";", "|"}
_ELISION = {"...", "…"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?|.*(\$|…).*")
_REPEATED = re.compile(r"[A-Z][A-Z0-9_]*(\.\.\.|…)")
_REQUIRED = "the following arguments are required: "


class Unparsable(Exception):
    """argparse's error for one command line."""


@dataclass(frozen=True)
class Command:
    """One command of a block, in one variant of its synopsis notation."""

    words: tuple[str, ...]
    elided: bool  # a bare … stood for arguments left out

    @property
    def text(self) -> str:
        return " ".join(self.words)


def command_lines(text: str, console: bool) -> list[str]:
    """The block's command lines, continuations joined; in a console block only the lines
    after ``$ `` (the rest is output)."""
    lines: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        if current is None:
            if console and not line.startswith("$ "):
                continue
            current = line[2:] if console else line
        else:
            current += " " + line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        lines.append(current)
        current = None
    if current is not None:
        lines.append(current)
    return lines


def commands(line: str) -> list[Command]:
    """Every command of a line (split at ``&&``, ``||``, ``;`` and pipes), in each variant of
    its alternatives, with leading ``NAME=value`` assignments dropped."""
    found = []
    for segment in _segments(shlex.split(line, comments=True)):
        for words in _variants(segment):
            while words and _ASSIGNMENT.match(words[0]):
                words = words[1:]
            kept = tuple(_strip_repeat(w) for w in words if w not in _ELISION)
            if kept:
                found.append(Command(kept, elided=len(kept) < len(words)))
    return found


def _segments(tokens: list[str]) -> Iterator[list[str]]:
    depth, segment = 0, []
    for token in tokens:
        if depth == 0 and token in _SEPARATORS:
            yield segment
            segment = []
            continue
        depth += token.count("[") - token.count("]")
        segment.append(token)
    yield segment


def _strip_repeat(word: str) -> str:
    """``POLICY...`` and ``PATH…`` (repeatable) are one ``POLICY``, ``PATH``."""
    return word.removesuffix("...").removesuffix("…") if _REPEATED.fullmatch(word) else word


def _variants(tokens: list[str]) -> list[list[str]]:
    """The synopsis expanded: ``[...]`` groups kept (brackets dropped), and at every choice
    (``a|b`` in a word, ``[x | y]`` in a group) variant *k* takes alternative *k* (mod its
    count), so each alternative is checked at least once."""
    tree, _ = _group(_brackets(tokens), 0)
    widest = _widest(tree)
    return [_pick(tree, k) for k in range(widest)]


def _brackets(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        core = token.lstrip("[")
        out += ["["] * (len(token) - len(core))
        # a bracket inside the word is its own (micafence[redis]), not the group's
        closing = max(0, len(core) - len(core.rstrip("]")) - core.count("["))
        word = core[:len(core) - closing]
        if word:
            out.append(word)
        out += ["]"] * closing
    return out


Tree = list[Any]  # a word, a list of alternative words, or ("group", [alternative Trees])


def _group(tokens: list[str], at: int) -> tuple[list[Tree], int]:
    """The alternatives (``|``-separated sequences) up to the matching ``]`` or the end."""
    alternatives: list[Tree] = [[]]
    while at < len(tokens):
        token = tokens[at]
        if token == "[":
            inner, at = _group(tokens, at + 1)
            alternatives[-1].append(("group", inner))
        elif token == "]":
            return alternatives, at + 1
        elif token == "|":
            alternatives.append([])
            at += 1
        else:
            alternatives[-1].append(token.split("|") if "|" in token else token)
            at += 1
    return alternatives, at


def _widest(tree: list[Tree]) -> int:
    width = len(tree)
    for sequence in tree:
        for item in sequence:
            if isinstance(item, tuple):
                width = max(width, _widest(item[1]))
            elif isinstance(item, list):
                width = max(width, len(item))
    return width


def _pick(tree: list[Tree], k: int) -> list[str]:
    words: list[str] = []
    for item in tree[k % len(tree)]:
        if isinstance(item, tuple):
            words += _pick(item[1], k)
        elif isinstance(item, list):
            words.append(item[k % len(item)])
        else:
            words.append(item)
    return words


def check_micafence(command: Command) -> None:
    """Parse a ``micafence`` command with the real parser; a bare … may leave out required
    arguments, a placeholder value skips the option's type conversion."""
    argv = list(command.words[1:])
    for _ in range(10):
        parser = build_parser(next((w for w in argv if not w.startswith("-")), None))
        _prepare(parser)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
            return
        except SystemExit as exc:  # --help, --version
            assert exc.code == 0, f"`{command.text}` exits {exc.code}"
            return
        except Unparsable as exc:
            message = str(exc)
            if not (command.elided and message.startswith(_REQUIRED)):
                raise AssertionError(f"`{command.text}`: {message}") from None
            for name in message.removeprefix(_REQUIRED).split(", "):
                name = name.split("/")[0]
                argv += [name, "ELIDED"] if name.startswith("-") else ["ELIDED"]
    raise AssertionError(f"`{command.text}`: required arguments could not be filled in")


def _prepare(parser: argparse.ArgumentParser) -> None:
    """Every parser of the tree raises instead of exiting, and lets placeholders through."""

    def fail(message: str) -> None:
        raise Unparsable(message)

    parser.error = fail  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _prepare(sub)
        elif callable(action.type):
            action.type = _lenient(action.type)


def _lenient(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def converted(value: str) -> Any:
        return value if _PLACEHOLDER.fullmatch(value) else convert(value)

    return converted


def check_pip_install(command: Command) -> None:
    """Each requirement of ``pip install`` that is one of ours names extras it defines."""
    words = [w for w in command.words[command.words.index("install") + 1:]
             if not w.startswith("-")]
    for word in words:
        found = re.fullmatch(r"([^\[]+)(?:\[([^\]]*)\])?", word)
        assert found is not None, f"`{command.text}`: cannot read {word!r}"
        name, extras = found.groups()
        if name not in DISTRIBUTIONS:
            assert not name.startswith("."), f"`{command.text}`: {name} is not a distribution"
            continue
        project = tomllib.loads((DISTRIBUTIONS[name] / "pyproject.toml").read_text("utf-8"))
        defined = project["project"].get("optional-dependencies", {})
        for extra in (extras or "").split(","):
            assert not extra or extra in defined, (
                f"`{command.text}`: {name} has no extra {extra!r} (it has {sorted(defined)})")


def check_shell(text: str, console: bool) -> int:
    """Check every command of a block; returns how many were checked."""
    checked = 0
    for line in command_lines(text, console):
        line, inner = _substitutions(line)
        checked += sum(check_shell(code, console=False) for code in inner)
        for command in commands(line):
            checked += _check_command(command)
    return checked


def _substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(…)`` a placeholder (``$…``), and the command lines they held."""
    inner: list[str] = []
    while (start := line.find("$(")) >= 0:
        depth, end = 0, start + 1
        for end in range(start + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                break
        inner.append(line[start + 2:end])
        line = f"{line[:start]}$…{line[end + 1:]}"
    return line, inner


_IMPORT_PATH = re.compile(r"(micafence|micafence_tools)(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")


def _check_command(command: Command) -> int:
    words = list(command.words)
    if Path(words[0]).name.startswith("python") and len(words) > 2:
        if words[1] == "-c":
            _check_imports(words[2], command)
            return 1
        if words[1] == "-m":
            words = words[2:]
    for word in words[1:]:
        if _IMPORT_PATH.fullmatch(word):
            _check_import_path(word, command)
    if Path(words[0]).name in {"pip", "pip3"} and "install" in words:
        check_pip_install(Command(tuple(words), command.elided))
        return 1
    start = _micafence_at(words)
    if start is not None:
        check_micafence(Command(tuple(words[start:]), command.elided))
        return 1
    if _IMPORT_PATH.fullmatch(words[0]):  # python -m micafence.cli_docs
        _check_import_path(words[0], command)
        return 1
    return 0


_LAUNCHERS = {"docker", "podman", "kubectl", "sudo", "env", "exec", "nohup", "time", "nice",
              "timeout", "uv", "pipx"}


def _micafence_at(words: list[str]) -> int | None:
    """Where the ``micafence`` command starts: first, or after a launcher's own arguments
    (``docker run IMAGE micafence …``), where a word named micafence that is an option's
    value (``sudo -u micafence``, ``docker build -t micafence``) is not it."""
    if Path(words[0]).name == "micafence":
        return 0
    if words[0] not in _LAUNCHERS:
        return None
    return next((at for at in range(1, len(words)) if Path(words[at]).name == "micafence"
                 and not words[at - 1].startswith("-")), None)


def _check_import_path(path: str, command: Command) -> None:
    """``package.module``, ``package.module:attribute`` or ``package.module.Attribute``."""
    module, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
    except ModuleNotFoundError:
        parent, _, attribute = module.rpartition(".")
        found = importlib.import_module(parent)
    assert not attribute or hasattr(found, attribute), f"`{command.text}`: no {path}"


def _check_imports(code: str, command: Command) -> None:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                _check_import_path(f"{node.module}:{alias.name}", command)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)

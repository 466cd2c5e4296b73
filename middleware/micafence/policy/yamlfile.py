"""YAML 1.2 files read with their locations, so every validation error names file, key and line.

ruamel.yaml is used because it speaks YAML 1.2 (``NO`` stays Norway, not ``false``), refuses
duplicate keys, and keeps the line of every key and item.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from micafence.errors import PolicyError
from micafence.policy.problems import Problems


@dataclass(frozen=True, slots=True)
class Node:
    """A value from a YAML file with where it came from."""

    value: Any
    file: str
    path: str
    line: int | None

    def fail(self, problem: str) -> NoReturn:
        raise PolicyError(self.file, self.path, self.line, problem)

    def _child(self, value: Any, path: str, line: int | None) -> Node:
        return Node(value, self.file, path, line if line is not None else self.line)

    def mapping(
        self, allowed: Collection[str], required: Collection[str] = (),
        problems: Problems | None = None,
    ) -> dict[str, Node]:
        """The entries of a mapping, refusing unknown keys and reporting missing ones. With a
        collecting ``problems`` every unknown and missing key is reported, the rest returned."""
        if not isinstance(self.value, dict):
            self.fail(f"expected a mapping, got {_kind(self.value)}")
        report = problems.add if problems is not None else _raise
        entries: dict[str, Node] = {}
        for key in self.value:
            line = _key_line(self.value, key)
            path = f"{self.path}.{key}" if self.path else str(key)
            if not isinstance(key, str):
                report(PolicyError(self.file, path, line, "keys must be strings"))
            elif key not in allowed:
                report(PolicyError(
                    self.file, path, line,
                    f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})",
                ))
            else:
                entries[key] = self._child(self.value[key], path, line)
        for key in required:
            if key not in entries:
                missing = f"missing required key {key!r}"
                report(PolicyError(self.file, self.path, self.line, missing))
        return entries

    def dict_items(self) -> Iterator[tuple[str, Node]]:
        """Entries of a mapping whose keys are names chosen by ops (zone names, say)."""
        if not isinstance(self.value, dict):
            self.fail(f"expected a mapping, got {_kind(self.value)}")
        for key in self.value:
            path = f"{self.path}.{key}" if self.path else str(key)
            line = _key_line(self.value, key)
            if not isinstance(key, str):
                raise PolicyError(self.file, path, line, "keys must be strings")
            yield key, self._child(self.value[key], path, line)

    def items(self) -> list[Node]:
        if not isinstance(self.value, list):
            self.fail(f"expected a list, got {_kind(self.value)}")
        out = []
        for index, item in enumerate(self.value):
            line = None
            if isinstance(self.value, CommentedSeq):
                line = self.value.lc.item(index)[0] + 1
            out.append(self._child(item, f"{self.path}[{index}]", line))
        return out

    def text(self, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        if not isinstance(self.value, str) or not self.value.strip():
            self.fail(f"expected a non-empty string, got {_kind(self.value)}")
        if pattern is not None and not pattern.fullmatch(self.value):
            self.fail(f"{self.value!r} is not {what or 'valid here'}")
        return str(self.value)

    def choice(self, options: Collection[str]) -> str:
        value = self.text()
        if value not in options:
            self.fail(f"{value!r} is not one of: {', '.join(options)}")
        return value

    def flag(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"expected true or false, got {_kind(self.value)}")
        return self.value

    def integer(self, minimum: int | None = None) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            self.fail(f"expected an integer, got {_kind(self.value)}")
        if minimum is not None and self.value < minimum:
            self.fail(f"must be at least {minimum}")
        return int(self.value)


def _raise(error: PolicyError) -> None:
    raise error


def _key_line(mapping: Any, key: Any) -> int | None:
    if isinstance(mapping, CommentedMap):
        try:
            return int(mapping.lc.key(key)[0]) + 1
        except KeyError:  # a key brought in by a merge (<<: *anchor) has no line of its own
            return None
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"


def parse_yaml(text: str, file: str) -> Node:
    """Parse YAML text into a located root node; syntax errors become :class:`PolicyError`."""
    yaml = YAML(typ="rt")
    try:
        value = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(file, "", line, f"YAML error: {exc.problem or exc}") from exc
    except YAMLError as exc:
        raise PolicyError(file, "", None, f"YAML error: {exc}") from exc
    except RecursionError:  # ruamel composes nested collections recursively
        raise PolicyError(file, "", None, "YAML error: collections nested too deeply") from None
    if value is None:
        raise PolicyError(file, "", None, "the file is empty")
    _refuse_surrogates(value, file)
    return Node(value, file, "", 1)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(root: Any, file: str) -> None:
    """A key or string holding a surrogate (from a ``\\uD800``-``\\uDFFF`` escape) is half
    a character: no UTF-8 log, record, label or header can carry it. Each collection is looked
    at once, however many aliases name it."""
    seen: set[int] = set()
    stack: list[tuple[Any, str, int | None]] = [(root, "", 1)]
    while stack:
        value, path, line = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise PolicyError(file, path, line, f"{value!r} holds a surrogate (a \\u escape "
                                  "of half a character): write the character, or \\U and its "
                                  "8 hex digits")
            continue
        if not isinstance(value, dict | list) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            for key in value:
                stack.append((key, path, _key_line(value, key) or line))
                if isinstance(key, str) and not _SURROGATE.search(key):
                    stack.append((value[key], f"{path}.{key}" if path else key,
                                  _key_line(value, key) or line))
        else:
            for index, item in enumerate(value):
                item_line = (value.lc.item(index)[0] + 1 if isinstance(value, CommentedSeq)
                             else line)
                stack.append((item, f"{path}[{index}]", item_line))


#: The largest file :func:`read_yaml` reads: a policy of 20,000 route entries is 1 MiB.
LARGEST = 16 * 2**20


def read_yaml(path: str) -> tuple[Node, bytes]:
    """Read and parse a YAML file; returns the root node and the raw bytes (for hashing)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(LARGEST + 1)  # a link to /dev/zero must not take all memory
    except OSError as exc:
        raise PolicyError(path, "", None, f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > LARGEST:
        raise PolicyError(path, "", None, f"larger than {LARGEST // 2**20} MiB: not a file "
                          "micafence reads")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # the line of the first byte that is not
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(path, "", line, f"not UTF-8 text ({exc.reason})") from exc
    return parse_yaml(text, path), raw

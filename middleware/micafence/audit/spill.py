"""Collections too big for memory, kept in temporary files: a spool, and a sort that spills.

An export of years of records lists every exported record in its manifest and writes the
records in time order, while the log is read chain by chain. Both would grow with the log;
here they live in files of a directory the caller owns (a temporary directory, under
``$TMPDIR``), and memory holds one budget of records at a time. JSON in the files is ASCII, so
any string read from a log (lone surrogates included) comes back as it went in.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from micafence.audit.progress import Progress

#: Record bytes held in memory before a sorted run is written out (a few MiB of objects).
SORT_BUDGET = 4 * 1024 * 1024
#: Runs merged at once: open files during a merge, and how deep merges nest (128 runs of
#: 4 MiB make one of 512 MiB, 128 of those one of 64 GiB).
FAN_IN = 128
SortKey = tuple[Any, ...]
#: An item's key, its line in a run file, and the item itself once read back from a run
#: (None while buffered). Keys are unique: lines and items are never compared.
_Sorted = tuple[SortKey, str, dict[str, Any] | None]


class Spool:
    """An append-only list of JSON values in a file: append, ``len``, iterate (any number of
    times). Values come back as they went in, dict keys in their order."""

    def __init__(self, path: Path, *, progress: Progress | None = None) -> None:
        self.path = path
        self._file = open(path, "w", encoding="ascii")  # noqa: SIM115 (closed by close())
        self._count = 0
        self._progress = progress  # advanced by every value read back

    def append(self, value: Any) -> None:
        self._file.write(json.dumps(value) + "\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        if not self._file.closed:
            self._file.flush()
        with open(self.path, encoding="ascii") as handle:
            for line in handle:
                if self._progress is not None:
                    self._progress.advance()
                yield json.loads(line)

    def close(self) -> None:
        self._file.close()


class SpillingSort:
    """Dicts sorted by a key (unique per item: ties are never left to the dicts), held in
    memory up to :data:`SORT_BUDGET` and beyond that written out as sorted runs, merged back
    when read. Read once, after the last :meth:`add`."""

    def __init__(self, directory: Path, name: str, *, budget: int = SORT_BUDGET,
                 fan_in: int = FAN_IN) -> None:
        self._directory = directory
        self._name = name
        self._budget = budget
        self._fan_in = fan_in
        self._buffer: list[_Sorted] = []
        self._buffered = 0
        self._levels: list[list[Path]] = []  # runs by how many merges made them
        self._runs = 0
        self._count = 0

    def add(self, key: SortKey, item: dict[str, Any]) -> None:
        line = json.dumps([key, item]) + "\n"
        self._buffer.append((key, line, None))  # the line is much smaller than the dict
        self._buffered += len(line)
        self._count += 1
        if self._buffered >= self._budget:
            self._push(self._write_run(sorted(self._buffer)), 0)
            self._buffer, self._buffered = [], 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        runs = [_read_run(path) for level in self._levels for path in level]
        merged = heapq.merge(*runs, sorted(self._buffer)) if runs else sorted(self._buffer)
        self._buffer = []
        for _, line, item in merged:
            yield item if item is not None else json.loads(line)[1]
        for level in self._levels:
            for path in level:
                path.unlink()

    def _push(self, run: Path, level: int) -> None:
        # A level that fills up is merged into one run of the next: every item is rewritten
        # once per level, and at most fan_in - 1 runs per level stay open for the final merge.
        while True:
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(run)
            if len(self._levels[level]) < self._fan_in:
                return
            full, self._levels[level] = self._levels[level], []
            run = self._write_run(heapq.merge(*(_read_run(path) for path in full)))
            for path in full:
                path.unlink()
            level += 1

    def _write_run(self, items: Iterable[_Sorted]) -> Path:
        self._runs += 1
        path = self._directory / f"{self._name}.{self._runs:06d}.run"
        with open(path, "w", encoding="ascii") as out:
            for _, line, _ in items:
                out.write(line)
        return path


def _read_run(path: Path) -> Iterator[_Sorted]:
    with open(path, encoding="ascii") as handle:
        for line in handle:
            key, item = json.loads(line)
            yield tuple(key), line, item

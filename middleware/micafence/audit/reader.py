"""Reading a decision log back: every chain of every writer, verified, with its records.

Used by ``micafence audit verify|export|prune`` and ``micafence report``. Targets are
directories or files of the file sink, or ``redis://HOST/DB#STREAM`` URLs of the stream sink.
:class:`LogReader` reads them as a stream, one line at a time, so a log of any size is read in
bounded memory: what it keeps is each chain's running state (:class:`~micafence.audit.chain.
ChainScanner`) and the few records that say where chains start and end. Prune records
(written by ``micafence audit prune``) say where a pruned writer's chain legitimately
continues; recovery records (written by the start after a writer died,
:mod:`micafence.audit.recovery`) say where a dead writer's chain ends. Both are applied once
everything is read. :func:`load_log` keeps every record too, for small logs and tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from micafence.audit.chain import Anchor, ChainReport, ChainScanner, judge_end
from micafence.audit.keys import Verifier
from micafence.audit.progress import Progress
from micafence.audit.sinks import AuditSinkError, file_chains, file_lines, stream_lines
from micafence.instants import parse_instant

PRUNE_WRITER_PREFIX = "prune-"
#: The records a log is kept for (not the chain's own bookkeeping).
ENTRY_KINDS = frozenset({"decision", "event", "aggregate"})
#: Where a record stands in the log: (0 for a prune writer's chain, else 1; writer; its place
#: among the records of that chain). Sorting by it gives :attr:`LoadedLog.records`' order.
Place = tuple[int, str, int]


@dataclass(slots=True)
class LoadedLog:
    """Every chain found in the targets, verified, and every record that parsed."""

    chains: list[ChainReport] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)  # writer → files (file sink)

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains)

    @property
    def problems(self) -> list[str]:
        return [problem for chain in self.chains for problem in chain.problems]

    def entries(self) -> list[dict[str, Any]]:
        """Decision, event and aggregate records (not the chain's own bookkeeping), by time."""
        kept = [r for r in self.records if r.get("kind") in ENTRY_KINDS]
        return sorted(kept, key=entry_time)


def entry_time(record: dict[str, Any]) -> str:
    """What entries are ordered by (records with the same time stay in log order)."""
    return str(record.get("time", ""))


class LogReader:
    """Every record of ``targets`` in one pass, each chain verified as it is read.

    Iterate :meth:`records` once, to the end (files first, each writer's in order, then
    streams); then :meth:`verdict` judges how every chain starts and ends. Raises
    ``AuditSinkError`` if a target is unusable.
    """

    def __init__(self, targets: Sequence[str], key: Verifier, *,
                 progress: Progress | None = None) -> None:
        paths = [Path(t) for t in targets if "://" not in t]
        for path in paths:
            if not path.exists():
                raise AuditSinkError(f"{path}: no such file or directory")
        #: The file sink's files, by writer, in order.
        self.files = file_chains(paths) if paths else {}
        self._streams = [t for t in targets if "://" in t]
        self._key = key
        self._progress = progress or Progress("", enabled=False)
        # A writer whose files are all empty still has a chain (of no records).
        self._scanners = {writer: ChainScanner(writer, key) for writer in self.files}
        self._prunes: dict[str, list[dict[str, Any]]] = {}  # prune writer → its prune records

    def records(self) -> Iterator[tuple[Place, dict[str, Any]]]:
        """Every record that parsed, with its place, as the lines are checked."""
        progress = self._progress
        total = sum(p.stat().st_size for files in self.files.values() for p in files)
        progress.begin("reading", total_bytes=None if self._streams else total)
        for writer, files in self.files.items():
            for location, raw in file_lines(files):
                progress.advance(len(raw))
                found = self._feed(writer, location, raw)
                if found is not None:
                    yield found
        for url in self._streams:
            for writer, location, raw in stream_lines(url):
                progress.advance(len(raw))
                found = self._feed(writer, location, raw)
                if found is not None:
                    yield found
        progress.end()

    def entries(self) -> Iterator[tuple[Place, dict[str, Any]]]:
        """The decision, event and aggregate records of :meth:`records`."""
        return ((place, r) for place, r in self.records() if r.get("kind") in ENTRY_KINDS)

    def _feed(self, writer: str, location: str,
              raw: bytes) -> tuple[Place, dict[str, Any]] | None:
        scanner = self._scanners.get(writer)
        if scanner is None:
            scanner = self._scanners[writer] = ChainScanner(writer, self._key)
        record = scanner.feed(location, raw)
        if record is None:
            return None
        pruning = writer.startswith(PRUNE_WRITER_PREFIX)
        if pruning and record.get("kind") == "prune":
            self._prunes.setdefault(writer, []).append(record)
        return (0 if pruning else 1, writer, scanner.parsed), record

    def verdict(
        self,
        *,
        now: dt.datetime | None = None,
        stale_after: dt.timedelta = dt.timedelta(minutes=5),
        require_closed: bool = False,
    ) -> LoadedLog:
        """Every chain judged, prune writers' first (records and files are not included)."""
        ending: dict[str, Any] = {"now": now, "stale_after": stale_after,
                                  "require_closed": require_closed}
        loaded = LoadedLog(files=self.files)
        anchors: dict[str, Anchor] = {}
        for writer in sorted(w for w in self._scanners if w.startswith(PRUNE_WRITER_PREFIX)):
            report = self._scanners[writer].finish()
            judge_end(report, (), **ending)
            loaded.chains.append(report)
            if report.ok:
                for anchor in prune_anchors(self._prunes.get(writer, ())):
                    if anchor.writer not in anchors or anchor.seq > anchors[anchor.writer].seq:
                        anchors[anchor.writer] = anchor
        # The record naming a dead writer's end is in another writer's chain.
        others = [self._scanners[w].finish(anchors) for w in sorted(self._scanners)
                  if not w.startswith(PRUNE_WRITER_PREFIX)]
        recoveries = [r for report in others for r in report.recoveries]
        for report in others:
            judge_end(report, recoveries, **ending)
            loaded.chains.append(report)
        return loaded


def load_log(
    targets: Sequence[str],
    key: Verifier,
    *,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = dt.timedelta(minutes=5),
    require_closed: bool = False,
) -> LoadedLog:
    """Read and verify every chain in ``targets``, keeping every record in memory (for small
    logs; commands read big ones with :class:`LogReader`). Raises ``AuditSinkError`` if a
    target is unusable."""
    reader = LogReader(targets, key)
    records = sorted(reader.records(), key=lambda found: found[0])
    loaded = reader.verdict(now=now, stale_after=stale_after, require_closed=require_closed)
    loaded.records = [record for _, record in records]
    return loaded


def prune_anchors(records: Iterable[dict[str, Any]]) -> list[Anchor]:
    """Where each pruned writer's chain continues, from verified prune records."""
    anchors = []
    for record in records:
        if record.get("kind") != "prune":
            continue
        for pruned in record.get("writers", ()):
            anchors.append(Anchor(pruned["writer"], pruned["last_seq"], pruned["last_hash"]))
    return anchors


def in_range(record: dict[str, Any], since: dt.datetime | None, until: dt.datetime | None) -> bool:
    """Is the record's time in ``[since, until)``?"""
    text = record.get("time")
    if not isinstance(text, str):
        return False
    moment = parse_instant(text, allow_date=False)
    return (since is None or moment >= since) and (until is None or moment < until)

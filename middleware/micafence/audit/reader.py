"""Reading a decision log back: every chain of every writer, verified, with its records.

Used by ``micafence audit verify|export|prune`` and ``micafence report``. Targets are
directories or files of the file sink, or ``redis://HOST/DB#STREAM`` URLs of the stream sink.
Prune records (written by ``micafence audit prune``) are verified first: they say where a
pruned writer's chain legitimately continues; recovery records (written by the start after a
writer died, :mod:`micafence.audit.recovery`) say where a dead writer's chain ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from micafence.audit.chain import (
    Anchor,
    ChainReport,
    judge_end,
    scan_chain,
    verify_chain,
)
from micafence.audit.keys import Verifier
from micafence.audit.sinks import AuditSinkError, file_chains, file_lines, stream_chains
from micafence.instants import parse_instant

PRUNE_WRITER_PREFIX = "prune-"


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
        kept = [r for r in self.records if r.get("kind") in ("decision", "event", "aggregate")]
        return sorted(kept, key=lambda r: str(r.get("time", "")))


def load_log(
    targets: Sequence[str],
    key: Verifier,
    *,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = dt.timedelta(minutes=5),
    require_closed: bool = False,
) -> LoadedLog:
    """Read and verify every chain in ``targets``; raises ``AuditSinkError`` if one is unusable."""
    chains: dict[str, list[tuple[str, bytes]]] = {}
    loaded = LoadedLog()
    paths = [Path(t) for t in targets if "://" not in t]
    for path in paths:
        if not path.exists():
            raise AuditSinkError(f"{path}: no such file or directory")
    if paths:
        loaded.files = file_chains(paths)
        for writer, files in loaded.files.items():
            chains.setdefault(writer, []).extend(file_lines(files))
    for target in targets:
        if "://" in target:
            for writer, lines in asyncio.run(stream_chains(target)).items():
                chains.setdefault(writer, []).extend(lines)
    ending: dict[str, Any] = {"now": now, "stale_after": stale_after,
                              "require_closed": require_closed}
    anchors: dict[str, Anchor] = {}
    for writer in sorted(w for w in chains if w.startswith(PRUNE_WRITER_PREFIX)):
        report, records = verify_chain(writer, chains.pop(writer), key, **ending)
        loaded.chains.append(report)
        loaded.records.extend(records)
        if report.ok:
            for anchor in prune_anchors(records):
                if anchor.writer not in anchors or anchor.seq > anchors[anchor.writer].seq:
                    anchors[anchor.writer] = anchor
    # Every chain is read before any is judged at its end: the record naming a dead writer's
    # end is in another writer's chain.
    scanned = []
    for writer in sorted(chains):
        report, records = scan_chain(writer, chains[writer], key, anchors=anchors)
        scanned.append(report)
        loaded.records.extend(records)
    recoveries = [r for report in scanned for r in report.recoveries]
    for report in scanned:
        judge_end(report, recoveries, **ending)
        loaded.chains.append(report)
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

"""Tamper evidence for the decision log: one hash chain per writer, signed checkpoints.

Every record carries ``writer``, ``seq`` (0, 1, 2, … per writer), ``prev`` (the previous
record's ``hash``) and its own ``hash``: SHA-256 over its canonical JSON (sorted keys, no
spaces, UTF-8) without ``hash`` and the signature. The chain opens with a signed ``open`` record,
a signed ``checkpoint`` ends every batch written (and is written at least every
``audit.checkpoint_interval`` when idle), and a clean shutdown writes a signed ``close``.
Signed records carry ``sig``: the Ed25519 signature of their ``hash`` (:mod:`micafence.audit.
keys`), so whoever lacks the audit secret cannot rebuild a chain after editing it, and whoever
holds only the public key can check it. Logs written before carry ``mac`` (HMAC-SHA256 under a
key derived from the secret) instead; they still verify, with the secret.

What :func:`verify_chain` catches, and how it says so (each problem names the file and line):

- an edited line: its hash no longer matches (or, if the editor re-hashed the chain, the next
  signature does not verify);
- a deleted line: ``seq`` jumps and ``prev`` does not match;
- a line cut short or lines removed at the end: a tail after the last signed record, or a chain
  that ends without ``close`` and whose last checkpoint is older than ``stale_after``; unless
  a signed ``recovery`` record of another writer names this writer's death and exactly this
  end (its last record, and the count and hash of the torn bytes after it,
  :mod:`micafence.audit.recovery`): then the chain has *ended*, and records found after that
  end, or missing before it, are reported.

Retention removes whole files only, and says so in a signed ``prune`` record that anchors
where each pruned writer's chain continues (:mod:`micafence.audit.cli`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from micafence.audit.keys import AuditKey, Verifier, public_key_of
from micafence.instants import parse_instant

GENESIS = "0" * 64
SIGNED_KINDS = frozenset({"open", "checkpoint", "close", "prune", "recovery"})
_UNHASHED = frozenset({"hash", "sig", "mac"})
#: Canonical JSON (sorted keys, no spaces; ``.encode(value).encode()`` gives its UTF-8), as
#: records and export manifests are hashed: one encoder, built once (it is used per record).
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record is hashed over: sorted keys, no spaces, UTF-8, without its hash and
    signature (``sig``, or the old ``mac``)."""
    body = {k: v for k, v in record.items() if k not in _UNHASHED}
    return CANONICAL_JSON.encode(body).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


class ChainWriter:
    """Seals records into one writer's chain. Not thread-safe: one flusher owns it."""

    def __init__(self, writer: str, key: AuditKey) -> None:
        self.writer = writer
        self.key = key
        self.seq = 0
        self.head = GENESIS

    def seal(self, record: dict[str, Any]) -> bytes:
        """Number, chain and (for signed kinds) sign ``record``; return its JSON line."""
        record["writer"] = self.writer
        record["seq"] = self.seq
        record["prev"] = self.head
        digest = record_hash(record)
        record["hash"] = digest
        if record.get("kind") in SIGNED_KINDS:
            record["sig"] = self.key.sign(digest)
        self.seq += 1
        self.head = digest
        return CANONICAL_JSON.encode(record).encode() + b"\n"

    def state(self) -> tuple[int, str]:
        return self.seq, self.head

    def restore(self, state: tuple[int, str]) -> None:
        """Undo seals whose lines were not written (a failed batch is sealed again later)."""
        self.seq, self.head = state


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a pruned chain continues: the last pruned record of ``writer``."""

    writer: str
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Recovery:
    """Where the chain of a writer that died ends, as another writer's signed ``recovery``
    record says (:mod:`micafence.audit.recovery`): its last good record and the torn bytes."""

    writer: str
    last_seq: int
    last_hash: str
    torn_file: str | None
    torn_bytes: int
    torn_sha256: str
    by: str
    location: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any], location: str) -> Recovery | None:
        try:
            torn = record["torn"]
            facts = cls(str(record["dead_writer"]), int(record["last_seq"]),
                        str(record["last_hash"]), torn["file"], int(torn["bytes"]),
                        str(torn["sha256"]), str(record["writer"]), location)
        except (KeyError, TypeError, ValueError):
            return None
        return facts

    def same_end(self, other: Recovery) -> bool:
        return (self.last_seq, self.last_hash, self.torn_bytes, self.torn_sha256) == (
            other.last_seq, other.last_hash, other.torn_bytes, other.torn_sha256)


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes after a chain's last complete line (a line is complete when it ends in newline)."""

    location: str
    size: int
    sha256: str


@dataclass(slots=True)
class Unsealed:
    """The records after a chain's last signed one: where they start and end, how many."""

    first: str
    last: str
    count: int


@dataclass(slots=True)
class ChainReport:
    """What :func:`verify_chain` found for one writer."""

    writer: str
    records: int = 0
    first_time: str | None = None
    last_time: str | None = None
    head: str = GENESIS
    last_seq: int = -1
    closed: bool = False
    last_signed_time: str | None = None
    problems: list[str] = field(default_factory=list)
    #: The records after the last signed one (None: the last record is signed).
    unsealed: Unsealed | None = None
    torn: TornTail | None = None
    #: The writer whose recovery record accounts for this chain's missing close.
    recovered_by: str | None = None
    #: Sound (hashed and signed) recovery records this chain holds about other writers.
    recoveries: list[Recovery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.problems:
            return "BROKEN"
        if self.closed:
            return "closed"
        if self.recovered_by is not None:
            return f"ended: the writer died, its end recorded by {self.recovered_by}"
        return "open (live)"


def verify_chain(
    writer: str,
    lines: Iterable[tuple[str, bytes]],
    key: Verifier,
    *,
    anchors: Mapping[str, Anchor] | None = None,
    recoveries: Sequence[Recovery] = (),
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = dt.timedelta(minutes=5),
    require_closed: bool = False,
) -> tuple[ChainReport, list[dict[str, Any]]]:
    """Check one writer's lines, in order (``(location, line)``, location like ``file:12``).

    ``key``: the audit secret, or only the public key (then records signed the old way, with
    an HMAC, are reported as unverifiable). ``recoveries``: what recovery records (of any
    writer) say about this one. Returns the report and the records that parsed (for export and
    reports, even when broken). :class:`ChainScanner` does the same a line at a time.
    """
    scanner = ChainScanner(writer, key)
    records = [r for location, raw in lines if (r := scanner.feed(location, raw)) is not None]
    report = scanner.finish(anchors)
    judge_end(report, recoveries, now=now, stale_after=stale_after,
              require_closed=require_closed)
    return report, records


@dataclass(frozen=True, slots=True)
class _Start:
    """A chain's first record, judged once the prune anchors are known (:meth:`ChainScanner.
    finish`): a prune record found later in the reading may say where the chain continues."""

    at: int  # where its problems go in the report's list
    location: str
    seq: int
    prev: str
    opens: bool  # the record is an open record at seq 0
    other_key: str | None  # the open record names another key


class ChainScanner:
    """Checks one writer's chain a line at a time, holding only the chain's running state
    (expected ``seq`` and ``prev``, the last signed record): a log of any size is checked in
    constant memory. :meth:`feed` each line in order, then :meth:`finish`; the end is judged by
    :func:`judge_end` (which may need recovery records found in other chains)."""

    def __init__(self, writer: str, key: Verifier) -> None:
        self.report = ChainReport(writer)
        #: Records that parsed so far (every one :meth:`feed` returned).
        self.parsed = 0
        self._key = key
        self._expected_seq, self._expected_prev = 0, GENESIS
        self._start: _Start | None = None

    def feed(self, location: str, raw: bytes) -> dict[str, Any] | None:
        """Check the next line (``location`` like ``file:12``); the record, if it parsed (even
        when it is not sound: export and reports read broken logs too)."""
        report = self.report
        if report.torn is not None:  # a partial line with more after it: not a crash's tear
            report.problems.append(f"{report.torn.location}: not a complete record (line cut "
                                   "short or edited)")
            report.torn = None
        if not raw.endswith(b"\n"):
            report.torn = TornTail(location, len(raw), hashlib.sha256(raw).hexdigest())
            return None
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError
            seq, prev, digest = record["seq"], record["prev"], record["hash"]
            if not (isinstance(seq, int) and isinstance(prev, str) and isinstance(digest, str)):
                raise ValueError
        except (ValueError, KeyError):
            report.problems.append(f"{location}: not a complete record (line cut short or "
                                   "edited)")
            return None
        self.parsed += 1
        if record.get("writer") != report.writer:
            report.problems.append(f"{location}: record of writer {record.get('writer')!r} in "
                                   f"the chain of {report.writer!r} (moved or inserted)")
            return record
        hashed = record_hash(record) == digest
        if not hashed:
            report.problems.append(f"{location}: hash mismatch: the record was edited")
        if self._start is None:
            opens = seq == 0 and record.get("kind") == "open"
            self._start = _Start(len(report.problems), location, seq, prev, opens,
                                 _other_key(record, self._key) if opens else None)
        else:
            if report.closed:
                report.problems.append(f"{location}: record after the close record (appended)")
            if seq != self._expected_seq:
                what = "deleted or moved" if seq > self._expected_seq else "duplicated or reordered"
                report.problems.append(
                    f"{location}: seq {seq} where {self._expected_seq} was expected: records "
                    f"{what}"
                )
            elif prev != self._expected_prev:
                report.problems.append(_prev_mismatch(location))
        self._expected_seq, self._expected_prev = seq + 1, digest
        report.records += 1
        report.head, report.last_seq = digest, seq
        time = record.get("time")
        if isinstance(time, str):
            report.first_time = report.first_time or time
            report.last_time = time
        if record.get("kind") in SIGNED_KINDS:
            problem = signature_problem(record, digest, self._key)
            if problem:
                report.problems.append(f"{location}: {problem}")
            elif hashed and record.get("kind") == "recovery":
                recovery = Recovery.from_record(record, location)
                if recovery is not None:
                    report.recoveries.append(recovery)
            report.unsealed = None
            report.last_signed_time = time if isinstance(time, str) else None
            if record.get("kind") == "close":
                report.closed = True
        elif report.unsealed is None:
            report.unsealed = Unsealed(location, location, 1)
        else:
            report.unsealed.last = location
            report.unsealed.count += 1
        return record

    def finish(self, anchors: Mapping[str, Anchor] | None = None) -> ChainReport:
        """Judge the chain's start: at seq 0 with its open record, or where a prune record
        (``anchors``: the last pruned record of each writer) says it continues."""
        start, self._start = self._start, None
        if start is not None:
            self.report.problems[start.at:start.at] = _start_problems(
                start, (anchors or {}).get(self.report.writer))
        return self.report


def _start_problems(start: _Start, anchor: Anchor | None) -> list[str]:
    if anchor is not None and start.seq == anchor.seq + 1:
        return [] if start.prev == anchor.hash else [_prev_mismatch(start.location)]
    if not start.opens:
        return [f"{start.location}: the chain starts at seq {start.seq} without its open record "
                "and without a prune record: earlier records were deleted"]
    problems = [f"{start.location}: {start.other_key}"] if start.other_key else []
    if start.prev != GENESIS:
        problems.append(_prev_mismatch(start.location))
    return problems


def _prev_mismatch(location: str) -> str:
    return (f"{location}: prev does not match the previous record's hash: a record before it "
            "was edited, deleted or inserted")


def signature_problem(record: Mapping[str, Any], digest: str, key: Verifier) -> str | None:
    """Why a signed record's signature does not verify under ``key``, or ``None``."""
    signature, mac = record.get("sig"), record.get("mac")
    if isinstance(signature, str):
        if public_key_of(key).verify(digest, signature):
            return None
    elif isinstance(mac, str):  # signed the old way
        if not isinstance(key, AuditKey):
            return ("signed the old way (HMAC): only the audit key can verify it, not the public "
                    "key (pass --key-file)")
        if hmac.compare_digest(mac, key.mac(digest)):
            return None
    return ("checkpoint signature does not verify: records up to here were rewritten, or the "
            "key is wrong")


def _other_key(opening: Mapping[str, Any], key: Verifier) -> str | None:
    fingerprint = opening.get("key_fingerprint")
    if fingerprint is not None:
        given = public_key_of(key).fingerprint
        if fingerprint != given:
            return f"signed with another key (fingerprint {fingerprint}, given key {given})"
    elif isinstance(key, AuditKey) and opening.get("key_id") != key.key_id:
        return f"signed with another key (key id {opening.get('key_id')}, given key {key.key_id})"
    return None


def judge_end(
    report: ChainReport,
    recoveries: Sequence[Recovery],
    *,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = dt.timedelta(minutes=5),
    require_closed: bool = False,
) -> None:
    """How the chain ends: closed, ended where a recovery record says its writer died, or open
    (fine while fresh, unless ``require_closed``); a torn or unsealed tail only with a recovery."""
    mine = [r for r in recoveries if r.writer == report.writer]
    if mine:
        _judge_recovered_end(report, mine)
        return
    if report.torn is not None:
        report.problems.append(f"{report.torn.location}: not a complete record (line cut short "
                               "or edited), and no recovery record names this writer's death")
    if report.unsealed is not None:
        report.problems.append(
            f"{report.unsealed.first}..{report.unsealed.last}: {report.unsealed.count} record(s) "
            "after the last signed checkpoint: the file was cut short or its writer died "
            "mid-batch, and no recovery record names it"
        )
    elif report.records and not report.closed:
        _check_open_tail(report, now or dt.datetime.now(dt.UTC), stale_after, require_closed)


def _check_open_tail(report: ChainReport, now: dt.datetime, stale_after: dt.timedelta,
                     require_closed: bool) -> None:
    last = None
    if report.last_signed_time:
        last = parse_instant(report.last_signed_time, allow_date=False)
    if require_closed:
        report.problems.append(
            f"chain of {report.writer} ends at seq {report.last_seq} without a close record: "
            "lines were removed from the end, or the writer stopped without closing"
        )
    elif last is None or now - last > stale_after:
        report.problems.append(
            f"chain of {report.writer} ends at seq {report.last_seq} without a close record and "
            f"its last checkpoint ({report.last_signed_time}) is older than {stale_after}: "
            "lines were removed from the end, or the writer died"
        )


def _judge_recovered_end(report: ChainReport, recoveries: Sequence[Recovery]) -> None:
    known = len(report.problems)
    first = recoveries[0]
    for other in recoveries[1:]:
        if not other.same_end(first):
            report.problems.append(
                f"{other.location}: recovery record disagrees with {first.location} about where "
                f"the chain of {report.writer} ends"
            )
            return
    if report.last_seq > first.last_seq:
        report.problems.append(
            f"chain of {report.writer} goes on to seq {report.last_seq} after the end "
            f"(seq {first.last_seq}) recorded at {first.location}: records appended later"
        )
    elif (report.last_seq, report.head) != (first.last_seq, first.last_hash):
        report.problems.append(
            f"chain of {report.writer} ends at seq {report.last_seq}, but {first.location} "
            f"recorded its end at seq {first.last_seq}: records removed from the end"
        )
    torn = report.torn
    found = (0, hashlib.sha256(b"").hexdigest()) if torn is None else (torn.size, torn.sha256)
    if found != (first.torn_bytes, first.torn_sha256) or (
        torn is not None and Path(torn.location.rpartition(":")[0]).name != first.torn_file
    ):
        where = torn.location if torn is not None else f"the end of {report.writer}'s chain"
        report.problems.append(
            f"{where}: {found[0]} torn byte(s) where {first.location} recorded "
            f"{first.torn_bytes} (in {first.torn_file}): the tail was changed after the crash"
        )
    if len(report.problems) == known:
        report.recovered_by = first.by


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: sorts as text."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")



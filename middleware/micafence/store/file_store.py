"""``file://PATH``: grants and solicitation evidence in one append-only JSON Lines file.

Meant for one host: ``micafence grant add --store file:///var/lib/micafence/grants.jsonl`` and
a running app with the same URL share grants without a server. Every write takes an exclusive
``flock``, reads what other processes appended since, writes one line and ``fsync``\\ s it
before returning, so a recorded grant or revocation survives a crash. Readers keep the whole
history in memory; before answering they ``stat`` the file at most every 0.5 s and re-read it
(only the new lines, in a worker thread) when it changed. So a revocation made with the CLI
takes effect in a running app within half a second, and requests that need no grant never
touch the file at all.

A line that is not a micafence record makes every read raise :class:`StoreError` naming the
file and line: a record that cannot be read might be a revocation, so the middleware fails
closed rather than guess. With a grant key (:mod:`micafence.grants.signing`) every grant record,
onboarding ticket and piece of solicitation evidence is written signed, and a grant record or
ticket that does not verify (unsigned, altered, another key) is ignored and logged: writing to
the file is then not enough to open a scope. Evidence that does not verify is logged and still
counts (it can only refuse).

Onboarding tickets are lines too (the token only as its SHA-256); taking one appends a
``onboarding_used`` line under the same exclusive lock, after reading what other processes
appended, so a ticket is taken once across every process of the host.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from micafence.errors import StoreError
from micafence.grants.signing import GrantKey, RecordSeal
from micafence.instants import parse_instant
from micafence.policy.grant_store import DEFAULT_STORE_SETTINGS, StoreSettings
from micafence.records import (
    Grant,
    GrantEvent,
    OnboardingTicket,
    SolicitationEvidence,
    event_from_json,
    event_to_json,
    evidence_from_json,
    evidence_to_json,
    filed_under,
    ticket_from_json,
    ticket_to_json,
)
from micafence.store.base import Store

RECHECK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class _TicketUsed:
    token_hash: str
    used_at: dt.datetime


Record = GrantEvent | SolicitationEvidence | OnboardingTicket | _TicketUsed
_FileId = tuple[int, int, int, int]  # device, inode, size, mtime in ns


@dataclass(slots=True)
class _Tail:
    """What a read found after the last offset (or from the start, when ``reset``)."""

    reset: bool
    records: list[Record] = field(default_factory=list)
    offset: int = 0
    lines: int = 0
    file_id: _FileId | None = None


class _AlreadyRecorded(StoreError):
    """A grant id is recorded already: the write is refused, the file is fine."""


class FileStore(Store):
    """The grant history and solicitation evidence in an append-only JSON Lines file."""

    def __init__(
        self, path: str | os.PathLike[str], *, recheck: float = RECHECK_SECONDS,
        key: GrantKey | None = None,
    ) -> None:
        text = unquote(os.fspath(path))
        if not text:
            raise StoreError("file:// needs a path, e.g. file:///var/lib/micafence/grants.jsonl")
        self.path = Path(text)
        self.key = key
        self._seal = RecordSeal(key, str(self.path))
        self._recheck = recheck
        self._lock = asyncio.Lock()
        self._clear()
        self._apply(self._read_tail(0, None, 0))  # start-up: fail now if the file is bad
        self._checked = time.monotonic()

    def _clear(self) -> None:
        self._events: list[GrantEvent] = []
        self._by_client: dict[str, list[GrantEvent]] = {}
        self._grant_ids: set[str] = set()
        self._solicitations: dict[str, list[SolicitationEvidence]] = {}
        self._tickets: dict[str, OnboardingTicket] = {}
        self._used: set[str] = set()
        self._offset = 0
        self._lines = 0
        self._file_id: _FileId | None = None

    # -- the Store interface -------------------------------------------------------------------

    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        await self._append("record_solicitation", evidence)

    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        await self._refresh("solicitations")
        return list(self._solicitations.get(subject, ()))

    async def append_grant_event(self, event: GrantEvent) -> int:
        await self._append("append_grant_event", event)
        return len(self._events)

    async def put_onboarding_ticket(self, ticket: OnboardingTicket) -> None:
        await self._append("put_onboarding_ticket", ticket)

    async def take_onboarding_ticket(
        self, token_hash: str, now: dt.datetime
    ) -> OnboardingTicket | None:
        taken: list[OnboardingTicket] = []

        def mark_used(before: _Tail) -> bytes | None:
            tickets = {} if before.reset else dict(self._tickets)
            used = set() if before.reset else set(self._used)
            for record in before.records:
                if isinstance(record, OnboardingTicket):
                    tickets[record.token_hash] = record
                elif isinstance(record, _TicketUsed):
                    used.add(record.token_hash)
            ticket = tickets.get(token_hash)
            if ticket is None or token_hash in used or now >= ticket.expires_at:
                return None
            taken.append(ticket)
            return self._line(_TicketUsed(token_hash, now))

        async with self._lock:
            try:
                self._apply(await asyncio.to_thread(self._write, mark_used))
            except StoreError:
                self.report_failure("take_onboarding_ticket")
                raise
            self._checked = time.monotonic()
        return taken[0] if taken else None

    async def grant_events(self, client_id: str | None = None) -> list[GrantEvent]:
        await self._refresh("grant_events")
        if client_id is None:
            return list(self._events)
        return list(self._by_client.get(client_id, ()))

    async def grant_version(self) -> int:
        await self._refresh("grant_version")
        return len(self._events)

    async def close(self) -> None:
        return None

    async def check(self) -> bool:
        """The file reads (new lines included) and can be appended to."""
        await self._refresh("check")
        target = self.path if self.path.exists() else self.path.parent
        if not os.access(target, os.W_OK):
            raise StoreError(f"{self.path}: cannot append: permission denied")
        return True

    async def start(self, settings: StoreSettings = DEFAULT_STORE_SETTINGS) -> None:
        if self.key is None:
            logging.getLogger("micafence.store.base").warning(
                "micafence: grant records in %s are not signed: whoever can write the file can "
                "open a scope (give the middleware grant_key= or set $MICAFENCE_GRANT_KEY)",
                self.path)

    # -- reading -------------------------------------------------------------------------------

    async def _refresh(self, operation: str) -> None:
        if time.monotonic() - self._checked < self._recheck:
            return
        async with self._lock:
            if time.monotonic() - self._checked < self._recheck:
                return
            try:
                if self._stat() != self._file_id:
                    self._apply(await asyncio.to_thread(
                        self._read_tail, self._offset, self._file_id, self._lines
                    ))
            except StoreError:
                self.report_failure(operation)
                raise
            # Only a successful read counts as a check: a bad file keeps failing (closed).
            self._checked = time.monotonic()

    def _stat(self) -> _FileId | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot stat: {exc.strerror or exc}") from exc
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_tail(self, offset: int, known: _FileId | None, lines: int) -> _Tail:
        """Records appended after ``offset`` (runs in a worker thread; touches no state)."""
        try:
            with open(self.path, "rb") as handle:
                st = os.fstat(handle.fileno())
                file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                # Another file (replaced) or a shorter one (truncated): read it all again.
                reset = known is None or known[:2] != file_id[:2] or st.st_size < offset
                start = 0 if reset else offset
                handle.seek(start)
                data = handle.read()
        except FileNotFoundError:
            return _Tail(reset=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        tail = _Tail(reset, offset=start + end, lines=0 if reset else lines, file_id=file_id)
        for raw in data[:end].splitlines():
            tail.lines += 1
            if raw.strip():
                record = self._decode(raw, f"{self.path}:{tail.lines}")
                if record is not None:
                    tail.records.append(record)
        if end < len(data):  # a size that never matches the file's: come back for the rest
            tail.file_id = (*file_id[:2], tail.offset, file_id[3])
        return tail

    def _apply(self, tail: _Tail) -> None:
        if tail.reset:
            self._clear()
        for record in tail.records:
            if isinstance(record, SolicitationEvidence):
                self._solicitations.setdefault(record.subject, []).append(record)
                continue
            if isinstance(record, OnboardingTicket):
                self._tickets[record.token_hash] = record
                continue
            if isinstance(record, _TicketUsed):
                self._used.add(record.token_hash)
                continue
            if isinstance(record, Grant):
                self._grant_ids.add(record.id)
            self._events.append(record)
            for client in filed_under(record):
                self._by_client.setdefault(client, []).append(record)
        self._offset, self._lines, self._file_id = tail.offset, tail.lines, tail.file_id

    # -- writing -------------------------------------------------------------------------------

    async def _append(self, operation: str, record: Record) -> None:
        line = self._line(record)

        def unique(before: _Tail) -> bytes:
            # What other processes appended since our last read decides whether the id is new.
            if isinstance(record, Grant):
                ids = set() if before.reset else set(self._grant_ids)
                ids.update(r.id for r in before.records if isinstance(r, Grant))
                if record.id in ids:
                    raise _AlreadyRecorded(f"grant {record.id} is already recorded")
            return line

        async with self._lock:
            try:
                tail = await asyncio.to_thread(self._write, unique)
            except _AlreadyRecorded:
                raise  # a refusal, not a failure of the store
            except StoreError:
                self.report_failure(operation)
                raise
            self._apply(tail)
            self._checked = time.monotonic()

    def _write(self, decide: Callable[[_Tail], bytes | None]) -> _Tail:
        """Under an exclusive lock (worker thread): read what others appended, let ``decide``
        give the line to append (or ``None``, or raise), append it; return the new tail."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open for writing: {exc.strerror or exc}") \
                from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            before = self._read_tail(self._offset, self._file_id, self._lines)
            line = decide(before)
            if line is None:
                return before
            os.write(fd, line)
            os.fsync(fd)
            after = self._read_tail(before.offset, before.file_id, before.lines)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot append: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)  # closing releases the lock
        before.records.extend(after.records)
        before.offset, before.lines, before.file_id = after.offset, after.lines, after.file_id
        return before


    # -- the lines ---------------------------------------------------------------------------

    def _line(self, record: Record) -> bytes:
        data: dict[str, Any]
        if isinstance(record, SolicitationEvidence):
            data = self._seal.sign(evidence_to_json(record))
        elif isinstance(record, _TicketUsed):
            data = {"event": "onboarding_used", "token_hash": record.token_hash,
                    "used_at": record.used_at.isoformat()}
        elif isinstance(record, OnboardingTicket):
            data = self._seal.sign(ticket_to_json(record))
        else:
            data = self._seal.sign(event_to_json(record))
        return (json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n").encode()

    def _decode(self, raw: bytes, where: str) -> Record | None:
        """The record of one line; ``None`` when it fails verification (logged)."""
        try:
            data = json.loads(raw)
            kind = data.get("event") if isinstance(data, dict) else None
            if kind == "solicitation":
                evidence = evidence_from_json(data)
                self._seal.suspect(data, where)  # kept either way: it can only refuse
                return evidence
            if kind == "onboarding_used":
                return _TicketUsed(str(data["token_hash"]),
                                   parse_instant(str(data["used_at"]), allow_date=False))
            record = ticket_from_json(data) if kind == "onboarding_ticket" \
                else event_from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{where}: not a micafence record ({exc})") from None
        # Well-formed but not trusted: ignored (and logged) rather than failing every read.
        return record if self._seal.verified(data, where) is not None else None

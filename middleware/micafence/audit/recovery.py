"""A writer that died without closing its chain (SIGKILL, OOM, power loss), named by the next.

Each file-sink writer holds an exclusive ``flock`` on ``audit.<writer>.lock`` in the audit
directory for as long as it lives, and removes the file once its ``close`` record is on disk.
The kernel drops the lock when the process dies, however it dies; so a lock file that nobody
holds belongs to a writer that died without closing, while a live sibling worker's lock is
held and its chain is left alone. A writer that starts in the directory claims every such
file (taking the lock itself, so two starting writers never claim the same chain), finds the
dead chain's last complete record and the torn bytes after it, and writes a signed
``recovery`` record into its own chain before anything else (:class:`~micafence.audit.log.
AuditLog`); only then does it remove the lock file.

The record names the dead writer, its last good ``seq`` and ``hash``, and the torn bytes:
file, offset, count and SHA-256. Not the bytes themselves: they stay where they are (audit
files are never rewritten, so the evidence of the crash is kept as it was found), a torn
batch can be hundreds of kilobytes, and a copy in another writer's file would outlive the
dead file's retention. ``micafence audit verify`` then accepts that chain without a ``close``
exactly when it ends at the named record and the bytes after it have that count and hash.

Limits: a writer of an older micafence (no lock file) is never claimed (verify reports its
chain as before); a lock file is only as good as ``flock`` on the directory's filesystem
(local filesystems; not NFS without lock support). The Redis stream sink has no torn records
(every batch is one ``MULTI``/``EXEC``), so it claims nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micafence.audit.chain import GENESIS, record_hash
from micafence.logs import log_event

LOCK_SUFFIX = ".lock"
_WRITER = re.compile(r"[A-Za-z0-9_-]+")
_CHUNK = 64 * 1024


class DeadChainError(Exception):
    """A dead writer's files do not end the way a crash leaves them (verify will say why)."""


@dataclass(slots=True)
class DeadChain:
    """A claimed chain of a dead writer: where it ends, and what was torn after that."""

    writer: str
    last_seq: int
    last_hash: str
    last_kind: str | None
    file: str | None  # the chain's last file (holding the torn bytes), None: no file at all
    torn_offset: int
    torn_bytes: int
    torn_sha256: str
    lock_path: Path
    lock_fd: int

    @property
    def closed(self) -> bool:
        """The writer died after its close record was written: nothing to name."""
        return self.last_kind == "close" and self.torn_bytes == 0

    def record(self, time: str) -> dict[str, Any]:
        """The ``recovery`` record naming this chain's end (sealed and signed by the caller)."""
        return {
            "v": 1, "kind": "recovery", "time": time, "dead_writer": self.writer,
            "last_seq": self.last_seq, "last_hash": self.last_hash,
            "torn": {"file": self.file, "offset": self.torn_offset, "bytes": self.torn_bytes,
                     "sha256": self.torn_sha256},
        }


class WriterLock:
    """The lock a live writer holds on ``audit.<writer>.lock`` (see the module docstring)."""

    def __init__(self, directory: Path, writer: str) -> None:
        self.path = directory / f"audit.{writer}{LOCK_SUFFIX}"
        # Locked under a temporary name and then renamed, so a starting writer scanning the
        # directory never finds this lock file unlocked and mistakes its writer for dead.
        temporary = directory / f".audit.{writer}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
            if self.path.exists():
                raise FileExistsError(f"{self.path}: another writer has the id {writer!r}")
            os.rename(temporary, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._fd: int | None = fd

    def release(self, *, remove: bool) -> None:
        """Let go; ``remove``: the chain is closed, so the file goes (still locked meanwhile)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            os.close(fd)


def claim_dead_chains(directory: Path, own_writer: str) -> list[DeadChain]:
    """Claim the chains of writers in ``directory`` that died without closing.

    Each claim holds its lock file's lock until :func:`release_claims`; a chain whose files do
    not end as a crash leaves them is not claimed (logged; ``verify`` reports it).
    """
    claims = []
    for lock_path in sorted(directory.glob(f"audit.*{LOCK_SUFFIX}")):
        writer = lock_path.name[len("audit."):-len(LOCK_SUFFIX)]
        if writer == own_writer or not _WRITER.fullmatch(writer):
            continue
        fd = _take_unheld_lock(lock_path)
        if fd is None:
            continue  # held: a live writer (or another starting writer is claiming it)
        try:
            end = _chain_end(directory, writer)
        except (DeadChainError, OSError) as exc:
            os.close(fd)
            log_event(logging.ERROR, "audit.recovery_refused",
                      f"audit writer {writer} died, but its chain cannot be recovered: {exc}",
                      writer=writer, directory=str(directory))
            continue
        claims.append(DeadChain(writer, *end, lock_path=lock_path, lock_fd=fd))
    return claims


def release_claims(claims: list[DeadChain]) -> None:
    """After the recovery records are durable: remove the claimed lock files."""
    for claim in claims:
        try:
            with contextlib.suppress(FileNotFoundError):
                claim.lock_path.unlink()
        finally:
            os.close(claim.lock_fd)


def _take_unheld_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None  # released by another starting writer meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file may have been claimed and removed between our open and our lock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def _chain_end(directory: Path,
               writer: str) -> tuple[int, str, str | None, str | None, int, int, str]:
    """``(last_seq, last_hash, last_kind, file, torn_offset, torn_bytes, torn_sha256)``."""
    files = sorted(directory.glob(f"audit.{writer}.*.jsonl"))
    empty = hashlib.sha256(b"").hexdigest()
    if not files:
        return -1, GENESIS, None, None, 0, 0, empty
    last_file = files[-1]
    line, torn_offset, torn = _last_line(last_file)
    if line is None:
        # Nothing complete in the newest file (rotation had just opened it): the chain's last
        # record ends the file before, which a crash cannot have torn.
        for earlier in reversed(files[:-1]):
            line, _, earlier_torn = _last_line(earlier)
            if earlier_torn:
                raise DeadChainError(f"{earlier} ends in a partial line but is not the last "
                                     "file of its chain")
            if line is not None:
                break
    if line is None:
        return (-1, GENESIS, None, last_file.name, torn_offset, len(torn),
                hashlib.sha256(torn).hexdigest())
    try:
        record = json.loads(line)
        seq, digest = record["seq"], record["hash"]
        valid = (record.get("writer") == writer and isinstance(seq, int)
                 and isinstance(digest, str) and record_hash(record) == digest)
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise DeadChainError(f"the last complete line of {last_file.name} is not a sound "
                             f"record of {writer}")
    return (seq, digest, record.get("kind"), last_file.name, torn_offset, len(torn),
            hashlib.sha256(torn).hexdigest())


def _last_line(path: Path) -> tuple[bytes | None, int, bytes]:
    """The file's last complete line (or None), where the bytes after it start, and them.

    Read from the end in chunks: the files are up to 64 MiB and only their end matters.
    """
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        tail = b""
        while position > 0 and tail.count(b"\n") < 2:
            step = min(_CHUNK, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
    end = tail.rfind(b"\n")
    if end < 0:
        return None, position, tail
    start = tail.rfind(b"\n", 0, end) + 1  # 0 when the line starts the file (position 0)
    return tail[start:end + 1], position + end + 1, tail[end + 1:]

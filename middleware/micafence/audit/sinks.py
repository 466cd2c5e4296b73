"""Where sealed audit records go: append-only JSON Lines files, or a Redis Stream.

A sink receives whole batches of sealed lines (:class:`~micafence.audit.chain.ChainWriter`)
from one writer and returns only once they are durable: the file sink ``fsync``\\ s every batch;
the Redis sink returns once Redis has the batch (durable as far as Redis' own persistence
goes: run it with ``appendonly yes`` and ``appendfsync always`` or ``everysec``).

Files: one directory, any number of writers (one per worker process), each writing its own
files ``audit.<writer>.<000001>.jsonl``, created with ``O_EXCL`` and only ever appended to.
Rotation closes a full file and opens the next number; nothing is renamed or rewritten, so a
reader (``micafence audit verify``) never sees a half-moved file. While a writer lives it holds
a lock on ``audit.<writer>.lock`` (removed once its chain is closed), which tells the next
writer to start whether a chain without ``close`` belongs to a live sibling or to a writer that
died (:mod:`micafence.audit.recovery`).

Redis: a batch is one ``MULTI``/``EXEC``, so a stream never holds a torn record; a writer that
died leaves a chain ending on its last checkpoint, reported by ``verify`` once that checkpoint
is older than ``--stale-after`` (or at once under ``--require-closed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from micafence.audit.recovery import DeadChain, WriterLock, claim_dead_chains, release_claims
from micafence.errors import MicafenceError
from micafence.extras import require

FILE_PATTERN = re.compile(r"audit\.(?P<writer>[A-Za-z0-9_-]+)\.(?P<index>\d{6})\.jsonl")
DEFAULT_STREAM = "micafence:audit"
_ROTATE_BYTES = 64 * 1024 * 1024


class AuditSinkError(MicafenceError):
    """A sink could not take a batch; the records stay queued and are retried."""


class AuditSink(ABC):
    """Durable, append-only storage for one writer's sealed lines."""

    #: Where the records go, for logs and ``micafence audit verify``.
    location: str

    @abstractmethod
    async def write(self, writer: str, lines: Sequence[bytes]) -> None:
        """Append ``lines`` (each ending in a newline); durable when this returns."""

    @abstractmethod
    async def close(self) -> None:
        """Release files or connections (after the last write)."""

    async def claim_dead_chains(self, writer: str) -> list[DeadChain]:
        """Before ``writer``'s first batch: the chains of writers that died without closing,
        claimed so that no other writer names them too (:mod:`micafence.audit.recovery`).
        A sink whose batches cannot tear claims nothing."""
        return []

    def release_claims(self, claims: list[DeadChain]) -> None:
        """Once the records naming ``claims`` are durable: let go of them for good."""
        return None

    def end_chain(self, writer: str) -> None:
        """Once ``writer``'s close record is durable: it no longer counts as running."""
        return None


class FileSink(AuditSink):
    """Append-only JSON Lines files in ``directory``, fsynced per batch, rotated by size."""

    def __init__(self, directory: str | os.PathLike[str], *,
                 rotate_bytes: int = _ROTATE_BYTES) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.rotate_bytes = rotate_bytes
        self._fd: int | None = None
        self._index = 0
        self._size = 0
        self._lock: WriterLock | None = None

    async def write(self, writer: str, lines: Sequence[bytes]) -> None:
        # Disk I/O and fsync happen off the event loop, so requests never wait on them.
        await asyncio.to_thread(self.write_sync, writer, b"".join(lines))

    def write_sync(self, writer: str, data: bytes) -> None:
        """Append and fsync ``data`` (whole lines) for ``writer``: the blocking part of write."""
        try:
            if self._fd is None or (self._size and self._size + len(data) > self.rotate_bytes):
                self._open_next(writer)
            assert self._fd is not None
            start = self._size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError:
                # Not acknowledged, so not evidence yet: cut the partial batch off, and if
                # even that fails, continue in a fresh file (verify will name the torn line).
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    self._close_file()
                raise
            self._size = start + len(data)
        except OSError as exc:
            raise AuditSinkError(f"audit directory {self.directory}: {exc.strerror or exc}") \
                from exc

    def _open_next(self, writer: str) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self._lock is None:  # before the first file: a file without its lock is a dead chain
            self._lock = WriterLock(self.directory, writer)
        while True:
            self._index += 1
            path = self.directory / f"audit.{writer}.{self._index:06d}.jsonl"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                                   0o640)
            except FileExistsError:
                continue  # never append to a file this process did not create
            break
        self._size = 0
        # The new directory entry must survive a crash as well as the data.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    async def claim_dead_chains(self, writer: str) -> list[DeadChain]:
        if not self.directory.is_dir():
            return []
        return await asyncio.to_thread(claim_dead_chains, self.directory, writer)

    def release_claims(self, claims: list[DeadChain]) -> None:
        release_claims(claims)

    def end_chain(self, writer: str) -> None:
        if self._lock is not None:
            self._lock.release(remove=True)

    async def close(self) -> None:
        self._close_file()
        if self._lock is not None:  # an unclosed chain: the next start names its end
            self._lock.release(remove=False)


class RedisStreamSink(AuditSink):
    """Every record as one entry (field ``record``) of a Redis Stream, never trimmed."""

    def __init__(self, url: str, stream: str = DEFAULT_STREAM) -> None:
        self.location = f"{url}#{stream}"
        require("redis.asyncio", "redis", f"{self.location} (a Redis audit stream)",
                AuditSinkError)
        import redis.asyncio as redis  # imported here: only Redis users pay for it

        self.stream = stream
        self._client: Any = redis.Redis.from_url(url)

    async def write(self, writer: str, lines: Sequence[bytes]) -> None:
        from redis.exceptions import RedisError

        try:
            # One MULTI/EXEC: a batch lands whole or not at all. No MAXLEN: records are evidence.
            async with self._client.pipeline(transaction=True) as pipe:
                for line in lines:
                    pipe.xadd(self.stream, {"writer": writer, "record": line.rstrip(b"\n")})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise AuditSinkError(f"audit stream {self.location}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def open_sink(target: str | os.PathLike[str]) -> AuditSink:
    """A sink for ``redis://HOST[:PORT]/DB[#STREAM]``, ``file://DIR`` or a directory path."""
    text = os.fspath(target)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in ("redis", "rediss", "unix"):
        url, _, stream = text.partition("#")
        return RedisStreamSink(url, stream or DEFAULT_STREAM)
    if scheme == "file":
        return FileSink(text.partition("://")[2])
    if scheme:
        raise AuditSinkError(f"unsupported audit target {text!r} (a directory, file://DIR, "
                             "or redis://HOST/DB#STREAM)")
    return FileSink(text)


# -- reading back (verify, export, report) ------------------------------------------------------


def file_chains(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """Audit files by writer, each writer's files in order. Directories are searched (not
    recursively); files whose names do not follow the pattern are refused."""
    chains: dict[str, list[tuple[int, Path]]] = {}
    for path in paths:
        candidates = sorted(path.glob("audit.*.jsonl")) if path.is_dir() else [path]
        if path.is_dir() and not candidates:
            raise AuditSinkError(f"{path}: no audit files (audit.<writer>.<n>.jsonl)")
        for candidate in candidates:
            match = FILE_PATTERN.fullmatch(candidate.name)
            if match is None or not candidate.is_file():
                raise AuditSinkError(f"{candidate}: not an audit file (audit.<writer>.<n>.jsonl)")
            chains.setdefault(match["writer"], []).append((int(match["index"]), candidate))
    return {writer: [p for _, p in sorted(files)] for writer, files in sorted(chains.items())}


def file_lines(files: Sequence[Path]) -> Iterator[tuple[str, bytes]]:
    """``(file:line, bytes)`` for every line of ``files``, in order."""
    for path in files:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                yield f"{path}:{number}", line


def stream_lines(url: str, *, page: int = 1000) -> Iterator[tuple[str, str, bytes]]:
    """``(writer, url#stream@id, line)`` for every entry of a Redis audit stream, in stream
    order, read ``page`` entries at a time (the writers' chains are interleaved)."""
    require("redis", "redis", f"{url} (a Redis audit stream)", AuditSinkError)
    import redis
    from redis.exceptions import RedisError

    base, _, stream = url.partition("#")
    stream = stream or DEFAULT_STREAM
    client: Any = redis.Redis.from_url(base)
    try:
        start = "-"
        while True:
            entries = client.xrange(stream, min=start, max="+", count=page)
            for entry_id, fields in entries:
                writer = fields.get(b"writer", b"?").decode("utf-8", "replace")
                # A stream entry is always whole: given its newline, it reads as a complete line.
                yield (writer, f"{base}#{stream}@{entry_id.decode()}",
                       fields.get(b"record", b"") + b"\n")
            if len(entries) < page:
                break
            start = "(" + entries[-1][0].decode()
    except (RedisError, OSError) as exc:
        raise AuditSinkError(f"audit stream {base}#{stream}: {exc}") from exc
    finally:
        client.close()


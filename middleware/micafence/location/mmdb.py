"""One MaxMind database file: opened once, memory-mapped, checked, and its look-ups cached.

:class:`MaxMindFile` is the base of every MaxMind file micafence opens (the country database
:class:`~micafence.location.geo.GeoIPDatabase`, the Anonymous-IP database
:class:`~micafence.location.anonymizer.AnonymousIPDatabase`): it opens the file, refuses one
that is missing, unreadable or of the wrong kind with a
:class:`~micafence.errors.GeoIPDatabaseError` naming the path, exposes the public ``reader``
and closes it (also as a context manager).

:class:`NetworkCache` keeps two caches, both owned by one opened file (a reloaded database is a
new instance, so no stale answer survives a swap): by exact address, and by the network the
database answered for, so a neighbour in a known network skips the search tree.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from micafence.caches import BoundedCache
from micafence.errors import GeoIPDatabaseError

T = TypeVar("T")
_CACHE_LIMIT = 65536


class NetworkCache(Generic[T]):
    """``lookup(ip)``: ``convert(record)`` for a canonical address, ``unknown`` on any error."""

    def __init__(
        self, reader: maxminddb.Reader, convert: Callable[[Any], T], unknown: T
    ) -> None:
        self._reader = reader
        self._convert = convert
        self._unknown = unknown
        self._by_address: BoundedCache[str, T] = BoundedCache(_CACHE_LIMIT)
        self._by_network: BoundedCache[tuple[int, int, int], T] = BoundedCache(_CACHE_LIMIT)
        self._known = self._by_address.get  # the hit path: one dict look-up, no hop
        self._prefix_lengths: tuple[tuple[int, int], ...] = ()

    def lookup(self, ip: str) -> T:
        cached = self._known(ip)
        if cached is not None:
            return cached
        # The C parser: ``ipaddress`` costs ~9 µs per IPv6 address, every cache miss.
        version, family, width = (6, socket.AF_INET6, 128) if ":" in ip else (4, socket.AF_INET, 32)
        try:
            value = int.from_bytes(socket.inet_pton(family, ip), "big")
        except (OSError, ValueError):
            return self._unknown
        for known_version, length in self._prefix_lengths:
            if known_version == version:
                hit = self._by_network.get((version, length, value >> (width - length)))
                if hit is not None:
                    self._remember(ip, hit)
                    return hit
        try:
            record, length = self._reader.get_with_prefix_len(ip)
        except (InvalidDatabaseError, ValueError, TypeError, OSError):
            return self._unknown  # not cached: a reader error is not an answer
        answer = self._convert(record)
        self._remember(ip, answer)
        self._by_network.put((version, length, value >> (width - length)), answer)
        if (version, length) not in self._prefix_lengths:
            # Longest prefixes first: networks in the tree are disjoint, so any hit is right,
            # but long prefixes are where most traffic-dense networks sit.
            self._prefix_lengths = tuple(
                sorted({*self._prefix_lengths, (version, length)}, key=lambda p: -p[1])
            )
        return answer

    def _remember(self, ip: str, answer: T) -> None:
        self._by_address.put(ip, answer)


class MaxMindFile(Generic[T]):
    """A MaxMind database file of one kind, opened once (memory-mapped), with cached look-ups.

    A subclass names what it accepts (``kinds``: any of these words in the database type) and
    what to say of another kind (``wrong_kind``), and hands in how a record becomes an answer
    (``convert``) and the answer when the database knows nothing (``unknown``). ``lookup(ip)``
    takes a canonical address string and never raises: a reader error answers ``unknown``.
    """

    kinds: ClassVar[tuple[str, ...]]
    wrong_kind: ClassVar[str]

    def __init__(
        self, path: str | os.PathLike[str], convert: Callable[[Any], T], unknown: T
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise GeoIPDatabaseError(self.path, "no such file")
        try:
            #: The underlying reader, for validation (:mod:`micafence.location.dbcheck`) and tools.
            self.reader = maxminddb.open_database(self.path, maxminddb.MODE_MMAP_EXT)
            meta = self.reader.metadata()
        except (InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoIPDatabaseError(self.path, f"not a valid MaxMind database ({exc})") from exc
        self.database_type: str = meta.database_type
        if not any(kind in self.database_type for kind in self.kinds):
            self.reader.close()
            raise GeoIPDatabaseError(
                self.path, f"database type {self.database_type!r} {self.wrong_kind}"
            )
        self.build_epoch: int = int(meta.build_epoch)
        self.lookup: Callable[[str], T] = NetworkCache(self.reader, convert, unknown).lookup

    @property
    def built_at(self) -> dt.datetime:
        """The database's build time (UTC)."""
        return dt.datetime.fromtimestamp(self.build_epoch, tz=dt.UTC)

    def close(self) -> None:
        """Release the memory map. Only call once no request can still use this instance."""
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

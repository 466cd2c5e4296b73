"""Cached look-ups in a MaxMind database, shared by the country and anonymizer databases.

Two caches, both owned by one opened database (so by one *generation*: a reloaded database is
a new instance and no stale answer survives a swap): by exact address, and by the network the
database answered for, so a neighbour in a known network skips the search tree.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from micafence.caches import BoundedCache

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
        self._prefix_lengths: tuple[tuple[int, int], ...] = ()

    def lookup(self, ip: str) -> T:
        cached = self._by_address.get(ip)
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

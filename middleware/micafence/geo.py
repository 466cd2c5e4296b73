"""Country resolution from a MaxMind database (GeoIP2/GeoLite2 Country or City format)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
from dataclasses import dataclass
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from .errors import GeoIPDatabaseError

_CACHE_LIMIT = 65536
_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Location:
    """What the database says of one address. ``None`` means the database does not know."""

    country: str | None = None
    registered_country: str | None = None


UNKNOWN_LOCATION = Location()


def _iso_code(record: Any, key: str) -> str | None:
    entry = record.get(key) if isinstance(record, dict) else None
    code = entry.get("iso_code") if isinstance(entry, dict) else None
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        return code.upper()
    return None


class GeoIPDatabase:
    """One MaxMind country or city database, opened once (memory-mapped) and cached.

    Lookups are cached twice, both per instance (so per database *generation*: a reloaded
    database is a new instance and no stale answer survives a swap): by exact address, and by
    the network the database answered for, so a neighbour in a known network skips the tree.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise GeoIPDatabaseError(self.path, "no such file")
        try:
            self._reader = maxminddb.open_database(self.path, maxminddb.MODE_MMAP_EXT)
            meta = self._reader.metadata()
        except (InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoIPDatabaseError(self.path, f"not a valid MaxMind database ({exc})") from exc
        self.database_type: str = meta.database_type
        if not any(kind in self.database_type for kind in ("Country", "City", "Enterprise")):
            self._reader.close()
            raise GeoIPDatabaseError(
                self.path,
                f"database type {self.database_type!r} holds no countries "
                "(use a GeoIP2/GeoLite2 Country or City database)",
            )
        self.build_epoch: int = int(meta.build_epoch)
        self.generation = next(_generations)
        self._by_address: dict[str, Location] = {}
        self._by_network: dict[tuple[int, int, int], Location] = {}
        self._prefix_lengths: tuple[tuple[int, int], ...] = ()

    @property
    def built_at(self) -> dt.datetime:
        """The database's build time (UTC)."""
        return dt.datetime.fromtimestamp(self.build_epoch, tz=dt.UTC)

    @property
    def reader(self) -> maxminddb.Reader:
        """The underlying reader, for validation (:mod:`micafence.dbcheck`) and tools."""
        return self._reader

    def lookup(self, ip: str) -> Location:
        """Country facts for a canonical address string; unknown on any reader error."""
        cached = self._by_address.get(ip)
        if cached is not None:
            return cached
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return UNKNOWN_LOCATION
        version, value = address.version, int(address)
        width = 32 if version == 4 else 128
        for known_version, length in self._prefix_lengths:
            if known_version == version:
                hit = self._by_network.get((version, length, value >> (width - length)))
                if hit is not None:
                    self._remember(ip, hit)
                    return hit
        try:
            record, length = self._reader.get_with_prefix_len(address)
        except (InvalidDatabaseError, ValueError, TypeError, OSError):
            return UNKNOWN_LOCATION
        location = Location(_iso_code(record, "country"), _iso_code(record, "registered_country"))
        if location == UNKNOWN_LOCATION:
            location = UNKNOWN_LOCATION
        self._remember(ip, location)
        if len(self._by_network) >= _CACHE_LIMIT:
            self._by_network.clear()
        self._by_network[(version, length, value >> (width - length))] = location
        if (version, length) not in self._prefix_lengths:
            # Longest prefixes first: networks in the tree are disjoint, so any hit is right,
            # but long prefixes are where most traffic-dense networks sit.
            self._prefix_lengths = tuple(
                sorted({*self._prefix_lengths, (version, length)}, key=lambda p: -p[1])
            )
        return location

    def _remember(self, ip: str, location: Location) -> None:
        if len(self._by_address) >= _CACHE_LIMIT:
            self._by_address.clear()
        self._by_address[ip] = location

    def close(self) -> None:
        """Release the memory map. Only call once no request can still use this instance."""
        self._reader.close()

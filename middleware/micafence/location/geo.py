"""Country resolution from a MaxMind database (GeoIP2/GeoLite2 Country or City format)."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from micafence.errors import GeoIPDatabaseError
from micafence.location.mmdb_cache import NetworkCache

_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Location:
    """What the database says of one address. ``None`` means the database does not know."""

    country: str | None = None
    registered_country: str | None = None


UNKNOWN_LOCATION = Location()


def _location(record: Any) -> Location:
    location = Location(_iso_code(record, "country"), _iso_code(record, "registered_country"))
    return UNKNOWN_LOCATION if location == UNKNOWN_LOCATION else location


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
        #: Country facts for a canonical address string; unknown on any reader error.
        self.lookup = NetworkCache(self._reader, _location, UNKNOWN_LOCATION).lookup

    @property
    def built_at(self) -> dt.datetime:
        """The database's build time (UTC)."""
        return dt.datetime.fromtimestamp(self.build_epoch, tz=dt.UTC)

    @property
    def reader(self) -> maxminddb.Reader:
        """The underlying reader, for validation (:mod:`micafence.location.dbcheck`) and tools."""
        return self._reader

    def close(self) -> None:
        """Release the memory map. Only call once no request can still use this instance."""
        self._reader.close()

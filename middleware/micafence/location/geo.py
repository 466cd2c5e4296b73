"""Country resolution from a MaxMind database (GeoIP2/GeoLite2 Country or City format)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from micafence.location.mmdb import MaxMindFile


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


class GeoIPDatabase(MaxMindFile[Location]):
    """One MaxMind country or city database, opened once (memory-mapped) and cached.

    ``lookup(ip)`` gives the :class:`Location` of a canonical address string, unknown on any
    reader error. Lookups are cached per instance (:class:`~micafence.location.mmdb.NetworkCache`).
    """

    kinds = ("Country", "City", "Enterprise")
    wrong_kind = "holds no countries (use a GeoIP2/GeoLite2 Country or City database)"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, _location, UNKNOWN_LOCATION)

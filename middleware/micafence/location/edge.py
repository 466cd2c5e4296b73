"""The country a CDN edge reports in a header (``cache.setup: edge``), as a :class:`Location`."""

from __future__ import annotations

from micafence.location.countries import is_country_code
from micafence.location.geo import UNKNOWN_LOCATION, Location


def edge_location(value: bytes | None) -> Location:
    """The location an edge country header gives (``XX``, ``T1`` or junk: unknown)."""
    if value is None:
        return UNKNOWN_LOCATION
    code = value.decode("latin-1").strip().upper()
    return Location(country=code) if is_country_code(code) else UNKNOWN_LOCATION

"""What a MaxMind database must pass before micafence uses it, and the policy's ``database`` keys.

A database that opens can still be wrong: a data section that fails to decode only fails when
a covered address is looked up, and a file of the wrong kind or from the wrong build answers
"unknown" for everyone. So at start-up and before every swap, off the request path:

- the records of the first networks of the tree and of every probe address are decoded;
- every ``database.probes`` address must resolve to a country (the given one, if any).

``database.max_age`` is how old the build may be before the health endpoint reports
"not ready" and a warning is logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from collections.abc import Iterable

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from micafence.errors import GeoIPDatabaseError
from micafence.location.countries import is_country_code
from micafence.location.geo import GeoIPDatabase
from micafence.policy.durations import duration_setting
from micafence.policy.model import DatabaseChecks
from micafence.policy.yamlfile import Node

#: How many networks from the start of the tree have their records decoded.
SAMPLE_NETWORKS = 256


def parse_database_checks(node: Node) -> DatabaseChecks:
    """The ``database`` section: ``max_age`` (ISO 8601 duration) and ``probes``."""
    fields = node.mapping(("max_age", "probes"))
    max_age = duration_setting(fields["max_age"]) if "max_age" in fields else None
    probes: list[tuple[str, str | None]] = []
    for item in fields["probes"].items() if "probes" in fields else []:
        probe = item.mapping(("ip", "country"), required=("ip",))
        text = probe["ip"].text()
        try:
            address = str(ipaddress.ip_address(text.strip()))
        except ValueError:
            probe["ip"].fail(f"{text!r} is not an IP address")
        country = None
        if "country" in probe:
            country = probe["country"].text()
            if not is_country_code(country):
                probe["country"].fail(f"{country!r} is not an ISO 3166-1 alpha-2 country code")
        probes.append((address, country))
    return DatabaseChecks(max_age, tuple(probes))


def check_records(reader: maxminddb.Reader, path: str, addresses: Iterable[str]) -> None:
    """Decode a sample of records; raise :class:`GeoIPDatabaseError` if any fails to."""
    try:
        for _ in itertools.islice(reader, SAMPLE_NETWORKS):
            pass
        for address in addresses:
            reader.get(address)
    except (InvalidDatabaseError, ValueError, TypeError, OSError, RecursionError) as exc:
        raise GeoIPDatabaseError(path, f"records cannot be read ({exc})") from exc


def check_geoip(database: GeoIPDatabase, checks: DatabaseChecks) -> None:
    """Everything a country database must pass; raises :class:`GeoIPDatabaseError`."""
    check_records(database.reader, database.path, (ip for ip, _ in checks.probes))
    for address, expected in checks.probes:
        found = database.lookup(address).country
        if found is None or (expected is not None and found != expected):
            raise GeoIPDatabaseError(
                database.path,
                f"probe {address}: expected {expected or 'a country'}, "
                f"the database says {found or 'nothing'}",
            )


def too_old(built_at: dt.datetime, checks: DatabaseChecks, now: dt.datetime) -> bool:
    """Is a build older than the policy's ``database.max_age``?"""
    return checks.max_age is not None and now - built_at > checks.max_age

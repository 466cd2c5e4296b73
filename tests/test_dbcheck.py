"""The policy's `database` section, and what a GeoIP database must pass before it is used."""

from __future__ import annotations

import datetime as dt

import pytest

from micafence import GeoIPDatabase, GeoIPDatabaseError, PolicyError, load_policy_text
from micafence.instants import format_duration
from micafence.location.dbcheck import check_geoip
from micafence.policy.model import DatabaseChecks
from tests.conftest import COUNTRY_DB, MAXMIND

POLICY = """\
policy: 1
zones:
  eu: {countries: [SE]}
routes: []
rules: []
database:
  max_age: P14D
  probes:
    - {ip: 89.160.20.112, country: SE}
    - {ip: "2a02:cf40::1"}
"""


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [("P14D", dt.timedelta(days=14)), ("P2W", dt.timedelta(weeks=2)),
     ("PT36H", dt.timedelta(hours=36)), ("p1dt12h30m", dt.timedelta(days=1, hours=12, minutes=30))],
)
def test_max_age_is_an_iso_duration(max_age: str, expected: dt.timedelta) -> None:
    policy = load_policy_text(POLICY.replace("P14D", max_age), "db.yaml")
    assert policy.database == DatabaseChecks(expected, (("89.160.20.112", "SE"),
                                                        ("2a02:cf40::1", None)))


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("P14D", "P1M", 7, "database.max_age: 'P1M' is not an ISO 8601 duration"),
        ("P14D", "14 days", 7, "database.max_age: '14 days' is not an ISO 8601 duration"),
        ("P14D", "PT0S", 7, "database.max_age: 'PT0S': the duration must be longer than zero"),
        ("P14D", "PT", 7, "database.max_age: 'PT' is not an ISO 8601 duration"),
        ("89.160.20.112, country: SE", "89.160.20.999, country: SE", 9,
         "database.probes[0].ip: '89.160.20.999' is not an IP address"),
        ("country: SE", "country: UK", 9,
         "database.probes[0].country: 'UK' is not an ISO 3166-1 alpha-2 country code"),
        ("  max_age: P14D", "  max_age: P14D\n  min_age: P1D", 8, "database.min_age: unknown key"),
    ],
)
def test_bad_database_section(old: str, new: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(POLICY.replace(old, new), "db.yaml")
    assert f"db.yaml:{line}: {message}" in str(caught.value)


@pytest.mark.parametrize(
    ("probes", "problem"),
    [
        ((("89.160.20.112", "SE"), ("2a02:cf40::1", None)), None),
        ((("89.160.20.112", "DE"),), "probe 89.160.20.112: expected DE, the database says SE"),
        ((("1.1.1.1", None),), "probe 1.1.1.1: expected a country, the database says nothing"),
        ((("2a02:d500::1", None),), "expected a country, the database says nothing"),
    ],
)
def test_probes(probes: tuple[tuple[str, str | None], ...], problem: str | None) -> None:
    database = GeoIPDatabase(COUNTRY_DB)
    if problem is None:
        check_geoip(database, DatabaseChecks(None, probes))
        return
    with pytest.raises(GeoIPDatabaseError, match=problem):
        check_geoip(database, DatabaseChecks(None, probes))


def test_a_broken_data_section_is_found_before_any_request() -> None:
    # It opens and its metadata is fine; only decoding its records fails.
    database = GeoIPDatabase(MAXMIND / "GeoIP2-City-Test-Broken-Double-Format.mmdb")
    with pytest.raises(GeoIPDatabaseError, match="records cannot be read"):
        check_geoip(database, DatabaseChecks())


@pytest.mark.parametrize(
    ("duration", "text"),
    [(dt.timedelta(days=14), "P14D"), (dt.timedelta(days=5, hours=10, seconds=31), "P5DT10H31S"),
     (dt.timedelta(hours=2), "PT2H"), (dt.timedelta(0), "PT0S"), (-dt.timedelta(days=1), "-P1D")],
)
def test_durations_are_shown_in_iso_8601(duration: dt.timedelta, text: str) -> None:
    assert format_duration(duration) == text

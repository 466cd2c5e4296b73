"""Country resolution on MaxMind's official test databases and our own fixture database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from micafence import GeoIPDatabase, GeoIPDatabaseError, Location
from tests.conftest import CITY_DB, COUNTRY_DB, MAXMIND, REGIONS_DB

OFFICIAL = [
    ("89.160.20.112", "SE", "DE"),
    ("2.125.160.216", "GB", "FR"),
    ("67.43.156.1", "BT", "RO"),
    ("216.160.83.56", "US", "GB"),
    ("81.2.69.160", "GB", "US"),
    ("2a02:d180::1", "DE", "DE"),
    ("2a02:cf40::1", "NO", "NO"),
    ("2a02:d000::1", "CH", "CH"),
    ("2a02:d500::1", None, None),  # a network with no country at all
    ("127.0.0.1", None, None),  # not in the database
    ("10.1.2.3", None, None),
]


@pytest.mark.parametrize("db", [COUNTRY_DB, CITY_DB], ids=["country-db", "city-db"])
@pytest.mark.parametrize(("ip", "country", "registered"), OFFICIAL)
def test_official_test_databases(db: Path, ip: str, country: str | None,
                                 registered: str | None) -> None:
    database = GeoIPDatabase(db)
    assert database.lookup(ip) == Location(country, registered)
    # The second answer comes from the cache and must be the same.
    assert database.lookup(ip) == Location(country, registered)


@pytest.mark.parametrize(
    ("ip", "country", "registered"),
    [
        ("192.0.2.5", "AX", "FI"),
        ("192.0.2.20", "GF", "FR"),
        ("192.0.2.40", "RE", "FR"),
        ("192.0.2.50", "GP", "FR"),
        ("192.0.2.70", "MQ", "FR"),
        ("192.0.2.85", "YT", "FR"),
        ("192.0.2.100", "MF", "FR"),
        ("192.0.2.120", "IS", "IS"),
        ("192.0.2.130", "LI", "LI"),
        ("192.0.2.150", None, "DE"),
        ("192.0.2.170", "US", "US"),
        ("198.51.100.7", "CH", "CH"),
        ("2001:db8:1::5", "FR", "FR"),
        ("2001:db8:2::5", "JP", "JP"),
        # Teredo is aliased as MaxMind does: the record of the server (198.51.100.7) answers.
        ("2001:0:c633:6407:8000:63bf:3fff:fdfa", "CH", "CH"),
        ("2002:c000:205::1", None, None),  # 6to4 is not aliased in the fixture
    ],
)
def test_regions_fixture_database(ip: str, country: str | None, registered: str | None) -> None:
    assert GeoIPDatabase(REGIONS_DB).lookup(ip) == Location(country, registered)


def test_network_cache_never_changes_an_answer() -> None:
    # Walk across network boundaries: a warm database (answers from its network cache) must
    # say exactly what a cold one says for each address on its own.
    warm = GeoIPDatabase(COUNTRY_DB)
    addresses = [f"89.160.20.{n}" for n in range(96, 160)] + [
        f"2.125.160.{n}" for n in range(200, 232)] + [f"2a02:cf40::{n:x}" for n in range(8)]
    for address in addresses:
        assert warm.lookup(address) == GeoIPDatabase(COUNTRY_DB).lookup(address), address


def test_reader_error_during_lookup_is_unknown_country() -> None:
    database = GeoIPDatabase(MAXMIND / "GeoIP2-City-Test-Broken-Double-Format.mmdb")
    assert database.lookup("2001:220::1") == Location(None, None)


def test_garbage_address_is_unknown() -> None:
    assert GeoIPDatabase(COUNTRY_DB).lookup("not an ip") == Location(None, None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad-data/metadata-marker-only.mmdb", "not a valid MaxMind database"),
        ("bad-data/cyclic-data-structure.mmdb", "not a valid MaxMind database"),
        ("GeoIP2-City-Test-Invalid-Node-Count.mmdb", "not a valid MaxMind database"),
        ("bad-data/corrupt-search-tree.mmdb", "holds no countries"),
        ("GeoIP2-Anonymous-IP-Test.mmdb", "holds no countries"),
        ("no-such-file.mmdb", "no such file"),
        ("LICENSE-MIT", "not a valid MaxMind database"),
    ],
)
def test_unusable_database_is_refused_with_its_name(name: str, message: str) -> None:
    with pytest.raises(GeoIPDatabaseError) as refused:
        GeoIPDatabase(MAXMIND / name)
    assert message in str(refused.value)
    assert str(MAXMIND / name) in str(refused.value)


def test_build_date_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "db.mmdb"
    shutil.copy(COUNTRY_DB, copy)
    database = GeoIPDatabase(copy)
    assert database.database_type == "GeoIP2-Country"
    assert database.built_at.year >= 2020


def test_a_database_is_a_context_manager_that_releases_its_reader() -> None:
    with GeoIPDatabase(COUNTRY_DB) as database:
        assert database.lookup("2a02:cf40::1").country is not None
        assert database.reader.metadata().database_type == database.database_type
    with pytest.raises(ValueError, match="closed"):  # the memory map is released
        database.reader.get("2a02:cf40::1")

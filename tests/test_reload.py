"""Hot reload under load: databases and policies replaced while a real server answers requests.

Every test runs uvicorn (the reloader is started by the lifespan), keeps clients sending
requests back to back, replaces a file the way ops do (write a new file, rename it over), and
checks that no request failed, that each answer is consistent with one generation, and that
answers switch exactly when the reloader says it swapped — or never, for a refused file.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from micafence import MicafenceMiddleware
from micafence.live.reload import ReloadEvent
from tests.conftest import MAXMIND, ServerThread
from tests.live import (
    SE,
    TEST_DB_EPOCH,
    Load,
    Sample,
    build_country_db,
    client_for,
    copy_country_db,
    decision_app,
    replace_file,
    write_file,
)

pytestmark = pytest.mark.server

WEEK = 7 * 86400
POLICY = """\
policy: 1
name: reload-test
client_ip: {trusted_proxies: [127.0.0.0/8]}
zones:
  eu: {countries: [SE, DE]}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
rules:
  - {id: no-new-accounts, zones: [eu, unknown_country], class: account_creation, outcome: block}
database:
  probes:
    - {ip: "2a02:cf40::1", country: "NO"}   # every database must still place Norway
"""
EU_VISITOR = {"X-Forwarded-For": SE}
REQUESTS = [
    ("page", "GET", "/markets", EU_VISITOR),
    ("signup", "POST", "/api/accounts", EU_VISITOR),
]


def start(folder: Path, **options: object) -> tuple[MicafenceMiddleware, Path, Path]:
    policy = folder / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    database = copy_country_db(folder)
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=database,
                                  reload_interval=0.05, **options)  # type: ignore[arg-type]
    return guarded, policy, database


def next_week_db(folder: Path, *, epoch: int = TEST_DB_EPOCH + WEEK,
                 probe: bool = True) -> Path:
    """A newer build in which the Swedish test address has moved to Switzerland."""
    networks = {"89.160.20.112/28": "CH"}
    if probe:
        networks["2a02:cf40::/29"] = "NO"
    return build_country_db(folder / f"incoming-{epoch}-{probe}.mmdb", networks, epoch)


async def wait_for_event(guarded: MicafenceMiddleware, kind: str, since: int) -> ReloadEvent:
    import asyncio

    for _ in range(500):
        events = list(guarded.reloader.events)[since:]
        for event in events:
            if event.kind == kind:
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"the reloader did nothing about {kind}")


def check_no_failures(samples: list[Sample]) -> None:
    failed = [s for s in samples if s.status not in (200, 201, 451)]
    assert not failed, failed[:3]


DB_CASES = [
    pytest.param("newer", "loaded", "GeoIP2-Country built 2026-02-11", id="newer build"),
    pytest.param("same", "unchanged", "same content", id="same file again"),
    pytest.param("older", "refused", "older than the database in use", id="older build"),
    pytest.param("no-probe", "refused", "probe 2a02:cf40::1: expected NO, the database says "
                 "nothing", id="fails a probe"),
    pytest.param(MAXMIND / "bad-data" / "cyclic-data-structure.mmdb", "refused",
                 "not a valid MaxMind database", id="cyclic data structure"),
    pytest.param(MAXMIND / "bad-data" / "metadata-marker-only.mmdb", "refused",
                 "not a valid MaxMind database", id="metadata marker only"),
    pytest.param(MAXMIND / "bad-data" / "corrupt-search-tree.mmdb", "refused",
                 "database type 'Test' holds no countries", id="corrupt search tree"),
    pytest.param(MAXMIND / "GeoIP2-City-Test-Broken-Double-Format.mmdb", "refused",
                 "records cannot be read", id="broken data section"),
    pytest.param(MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb", "refused",
                 "holds no countries", id="wrong database type"),
]


@pytest.mark.parametrize(("replacement", "outcome", "detail"), DB_CASES)
async def test_database_replaced_under_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, replacement: str | Path, outcome: str,
    detail: str,
) -> None:
    guarded, _, database = start(tmp_path)
    old = guarded.enforcer.geoip
    source = {
        "newer": lambda: next_week_db(tmp_path),
        "same": lambda: shutil.copyfile(database, tmp_path / "same.mmdb"),
        "older": lambda: next_week_db(tmp_path, epoch=TEST_DB_EPOCH - WEEK),
        "no-probe": lambda: next_week_db(tmp_path, probe=False),
    }.get(str(replacement), lambda: replacement)()
    with caplog.at_level(logging.INFO, logger="micafence"), ServerThread(guarded) as server:
        async with Load(server.url, REQUESTS) as load:
            await load.run_for(0.2)
            since = len(guarded.reloader.events)
            renamed = dt.datetime.now(dt.UTC).timestamp()
            replace_file(Path(str(source)), database)
            event = await wait_for_event(guarded, "geoip", since)
            swapped = event.at.timestamp()
            await load.run_for(0.3)
    samples = load.samples
    check_no_failures(samples)
    assert (event.outcome, event.path) == (outcome, str(database))
    assert detail in event.detail
    [record] = [r for r in caplog.records if getattr(r, "kind", "") == "geoip"]
    assert (record.event, record.path) == (f"reload.{outcome}", str(database))  # type: ignore[attr-defined]
    new_build = TEST_DB_EPOCH + WEEK
    # Each answer comes from one generation: never the new country with the old build.
    pages = [s for s in samples if s.name == "page"]
    assert {(s.body["country"], s.body["database_build"]) for s in pages} <= {
        ("SE", TEST_DB_EPOCH), ("CH", new_build)}
    before = [s for s in samples if s.ended < renamed]
    after = [s for s in samples if s.started > swapped]
    assert before and len(after) > 10
    assert all(s.status == 451 or s.body["country"] == "SE" for s in before)
    if outcome == "loaded":
        assert guarded.enforcer.geoip.build_epoch == new_build
        assert all(s.status == 201 or s.body["country"] == "CH" for s in after)
    else:  # the database in use is kept, and so are the answers
        assert guarded.enforcer.geoip is old
        assert all(s.status == 451 or s.body["country"] == "SE" for s in samples)


async def test_policy_replaced_by_invalid_then_valid_file_under_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "archive"
    guarded, policy, _ = start(tmp_path, archive_dir=archive)
    first = guarded.enforcer.policy.revision
    invalid = POLICY.replace("zones: [eu, unknown_country]", "zones: [eu, mars]")
    valid = POLICY.replace("zones: [eu, unknown_country]", "zones: [unknown_country]")
    with caplog.at_level(logging.INFO, logger="micafence"), ServerThread(guarded) as server:
        async with Load(server.url, REQUESTS) as load:
            since = len(guarded.reloader.events)
            write_file(policy, invalid)
            refused = await wait_for_event(guarded, "policy", since)
            await load.run_for(0.2)
            since = len(guarded.reloader.events)
            renamed = dt.datetime.now(dt.UTC).timestamp()
            write_file(policy, valid)
            loaded = await wait_for_event(guarded, "policy", since)
            await load.run_for(0.3)
    samples = load.samples
    check_no_failures(samples)
    assert refused.outcome == "refused"
    assert f"{policy}:9: rules[0].zones[1]: unknown zone 'mars'" in refused.detail
    assert loaded.outcome == "loaded"
    second = guarded.enforcer.policy.revision
    assert loaded.detail == f"reload-test {second}" and second != first
    signups = [s for s in samples if s.name == "signup"]
    # The answer and the revision that produced it always agree.
    assert {(s.status, s.body["policy_revision"]) for s in signups} == {(451, first),
                                                                        (201, second)}
    assert all(s.status == 451 for s in signups if s.ended < renamed)
    assert all(s.status == 201 for s in signups if s.started > loaded.at.timestamp())
    # Both revisions loaded are archived; the invalid file never was.
    assert sorted(p.name for p in archive.glob("*.yaml")) == sorted(
        f"{rev.replace(':', '-')}.yaml" for rev in (first, second))
    [refusal] = [r for r in caplog.records if getattr(r, "event", "") == "reload.refused"]
    assert refusal.levelno == logging.ERROR and refusal.kind == "policy"  # type: ignore[attr-defined]


async def test_policy_edited_in_place_is_reloaded(tmp_path: Path) -> None:
    guarded, policy, _ = start(tmp_path, watch=False)
    policy.write_text(POLICY.replace("reload-test", "edited"), encoding="utf-8")
    assert guarded.reloader.check() is True
    assert guarded.enforcer.policy.name == "edited"
    assert guarded.reloader.check() is False  # nothing changed since


async def test_a_vanished_database_keeps_the_one_in_use(tmp_path: Path) -> None:
    guarded, _, database = start(tmp_path, watch=False)
    in_use = guarded.enforcer.geoip
    kept = tmp_path / "kept.mmdb"
    database.rename(kept)
    assert guarded.reloader.check() is False
    assert guarded.reloader.events[-1].outcome == "refused"
    async with client_for(guarded) as client:  # the memory-mapped file still answers
        response = await client.get("/markets", headers=EU_VISITOR)
    assert response.json()["country"] == "SE"
    kept.rename(database)
    assert guarded.reloader.check() is False
    assert guarded.reloader.events[-1].outcome == "unchanged"
    assert guarded.enforcer.geoip is in_use


async def test_an_older_database_is_accepted_when_allowed(tmp_path: Path) -> None:
    guarded, _, database = start(tmp_path, watch=False, allow_older_database=True)
    replace_file(next_week_db(tmp_path, epoch=TEST_DB_EPOCH - WEEK), database)
    assert guarded.reloader.check() is True
    assert guarded.enforcer.geoip.build_epoch == TEST_DB_EPOCH - WEEK


def anonymous_db(path: Path, networks: dict[str, dict[str, bool]], epoch: int) -> Path:
    class Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, object]:
            return {**super()._build_meta(), "build_epoch": epoch}

    writer = Writer(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Anonymous-IP",
                    languages=["en"], description={"en": "test"})
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


async def test_anonymizer_database_replaced(tmp_path: Path) -> None:
    anonymizer = tmp_path / "GeoIP2-Anonymous-IP.mmdb"
    shutil.copyfile(MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb", anonymizer)
    guarded, _, _ = start(tmp_path, watch=False, anonymizer_db=anonymizer)
    vpn, newly_listed = {"X-Forwarded-For": "1.2.3.4"}, {"X-Forwarded-For": "5.5.5.5"}

    async def flags() -> tuple[list[str], list[str]]:
        async with client_for(guarded) as client:
            return ((await client.get("/", headers=vpn)).json()["anonymizer"],
                    (await client.get("/", headers=newly_listed)).json()["anonymizer"])

    assert await flags() == (["vpn"], [])
    replace_file(MAXMIND / "GeoIP2-Country-Test.mmdb", anonymizer)  # wrong kind: refused
    assert guarded.reloader.check() is False
    assert "is not an Anonymous-IP database" in guarded.reloader.events[-1].detail
    newer = anonymous_db(tmp_path / "new.mmdb",
                         {"5.5.5.0/24": {"is_anonymous": True, "is_tor_exit_node": True}},
                         TEST_DB_EPOCH + WEEK)
    replace_file(newer, anonymizer)
    assert guarded.reloader.check() is True
    assert await flags() == ([], ["tor_exit"])

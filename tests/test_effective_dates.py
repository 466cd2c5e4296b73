"""Effective dates: zones and rules in force on [effective_from, effective_until), by the clock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from micafence import MicafenceMiddleware, PolicyError, load_policy_text
from micafence.cli import main
from tests.conftest import COUNTRY_DB
from tests.live import CH, SE, Clock, client_for, decision_app

UTC = dt.UTC
# A zone that joins a regime later, a campaign freeze with both ends, a rule that ends.
CH_JOINS = dt.datetime(2027, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # 2026-12-31T23Z
FREEZE_FROM = dt.datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
FREEZE_UNTIL = dt.datetime(2026, 12, 24, 18, 0, tzinfo=UTC)
US_ENDS = dt.datetime(2026, 12, 10, tzinfo=UTC)
US = "216.160.83.56"  # US, registered GB: only in the uk zone

POLICY = """\
policy: 1
name: dated
client_ip: {trusted_proxies: [127.0.0.0/8]}
zones:
  eu: {countries: [SE, DE]}
  ch_later:
    countries: [CH]
    effective_from: 2027-01-01T00:00:00+01:00
  uk: {countries: [GB], promotions: allowed}
  unknown_country: {promotions: allowed}
routes:
  - {id: accounts.api, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: promotions.campaigns, class: promotion, path: /campaigns/**}
rules:
  - id: no-new-accounts
    zones: [eu, ch_later]
    class: account_creation
    outcome: block
  - id: campaign-freeze
    zones: [uk]
    class: promotion
    outcome: block
    effective_from: 2026-12-01T09:30:00Z
    effective_until: "2026-12-24T18:00:00+00:00"
  - id: uk-accounts-until
    zones: [uk]
    class: account_creation
    outcome: block
    effective_until: 2026-12-10T00:00:00Z
"""

MICRO = dt.timedelta(microseconds=1)


def app(clock: Clock) -> MicafenceMiddleware:
    return MicafenceMiddleware(decision_app(), policy=load_policy_text(POLICY, "dated.yaml"),
                               geoip_db=COUNTRY_DB, clock=clock, watch=False)


@pytest.mark.parametrize(
    ("at", "ip", "method", "path", "status", "reason"),
    [
        # A zone with effective_from: not a zone before, a zone exactly at the instant.
        (CH_JOINS - MICRO, CH, "POST", "/api/accounts", 201, "pass"),
        (CH_JOINS, CH, "POST", "/api/accounts", 451, "ch_later.account_creation"),
        (CH_JOINS + dt.timedelta(days=400), CH, "POST", "/api/accounts", 451,
         "ch_later.account_creation"),
        # A rule with both ends: [from, until).
        (FREEZE_FROM - MICRO, US, "GET", "/campaigns/x", 200, "pass"),
        (FREEZE_FROM, US, "GET", "/campaigns/x", 451, "uk.promotion"),
        (FREEZE_UNTIL - MICRO, US, "GET", "/campaigns/x", 451, "uk.promotion"),
        (FREEZE_UNTIL, US, "GET", "/campaigns/x", 200, "pass"),
        # A rule with only effective_until: in force until, not at, the instant.
        (US_ENDS - MICRO, US, "POST", "/api/accounts", 451, "uk.account_creation"),
        (US_ENDS, US, "POST", "/api/accounts", 201, "pass"),
        # Rules without dates are always in force.
        (dt.datetime(2000, 1, 1, tzinfo=UTC), SE, "POST", "/api/accounts", 451,
         "eu.account_creation"),
    ],
)
async def test_boundaries(
    at: dt.datetime, ip: str, method: str, path: str, status: int, reason: str
) -> None:
    async with client_for(app(Clock(at))) as client:
        response = await client.request(method, path, headers={"X-Forwarded-For": ip,
                                                               "Accept": "application/json"})
    assert response.status_code == status
    assert response.json()["reason"] == reason


async def test_cached_decisions_change_when_the_clock_crosses_a_boundary() -> None:
    clock = Clock(FREEZE_FROM - dt.timedelta(seconds=1))
    guarded = app(clock)
    seen = []
    async with client_for(guarded) as client:
        for step in (dt.timedelta(0), dt.timedelta(seconds=1), FREEZE_UNTIL - FREEZE_FROM,
                     dt.timedelta(0)):
            clock.now += step
            for _ in range(3):  # the second and third are answered from the decision cache
                response = await client.get("/campaigns/x", headers={"X-Forwarded-For": US})
                seen.append((clock.now, response.status_code))
    assert [status for _, status in seen] == [200] * 3 + [451] * 3 + [200] * 6
    assert guarded.enforcer.next_change == CH_JOINS  # the next boundary after the freeze


async def test_the_app_sees_the_zones_in_force() -> None:
    clock = Clock(CH_JOINS - MICRO)
    async with client_for(app(clock)) as client:
        before = (await client.get("/", headers={"X-Forwarded-For": CH})).json()
        clock.now = CH_JOINS
        after = (await client.get("/", headers={"X-Forwarded-For": CH})).json()
    assert (before["zones"], before["restricted"]) == ([], False)
    assert (after["zones"], after["restricted"]) == (["ch_later"], True)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("effective_from: 2027-01-01T00:00:00+01:00", "effective_from: 2027-01-01T00:00:00",
         8, "zones.ch_later.effective_from: 2027-01-01T00:00:00 has no timezone"),
        ("effective_from: 2027-01-01T00:00:00+01:00", "effective_from: 2027-01-01",
         8, "is a date: give a time and timezone"),
        ("effective_from: 2027-01-01T00:00:00+01:00", "effective_from: next year",
         8, "'next year' is not an ISO 8601 date and time"),
        ('effective_until: "2026-12-24T18:00:00+00:00"',
         'effective_until: "2026-12-01T09:30:00+00:00"',
         24, "rules[1].effective_until: effective_until (2026-12-01T09:30:00+00:00) must be after"),
        ("  unknown_country: {promotions: allowed}",
         "  unknown_country: {promotions: allowed, effective_until: 2027-01-01T00:00:00Z}",
         10, "unknown_country zone cannot have effective_until"),
        ("    effective_from: 2026-12-01T09:30:00Z", "    effective_from: [1]",
         23, "expected a non-empty string"),
    ],
)
def test_bad_dates_name_file_key_and_line(old: str, new: str, line: int, message: str) -> None:
    assert old in POLICY
    with pytest.raises(PolicyError) as caught:
        load_policy_text(POLICY.replace(old, new), "dated.yaml")
    assert caught.value.line == line
    assert f"dated.yaml:{line}:" in str(caught.value)
    assert message in str(caught.value)


def test_explain_at_decides_with_the_rules_of_that_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MICAFENCE_ARCHIVE_DIR", raising=False)
    policy = tmp_path / "dated.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    answers: dict[str, Any] = {}
    for at in ("2026-12-01T09:29:59Z", "2026-12-01T10:30:00+01:00"):
        code = main(["explain", "--policy", str(policy), "--geoip-db", str(COUNTRY_DB),
                     "--ip", US, "--path", "/campaigns/x", "--at", at, "--json"])
        assert code == 0
        out, err = capsys.readouterr()
        answers[at] = json.loads(out)
        assert "current policy file" in err  # no archive: says which policy it used
    assert answers["2026-12-01T09:29:59Z"]["reason"] == "pass"
    assert answers["2026-12-01T10:30:00+01:00"]["reason"] == "uk.promotion"
    assert answers["2026-12-01T10:30:00+01:00"]["at"] == "2026-12-01T09:30:00+00:00"


def test_explain_at_refuses_a_time_without_timezone(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "--geoip-db", str(COUNTRY_DB), "--at", "2026-12-01T09:00:00"])
    assert code == 2
    assert "has no timezone" in capsys.readouterr().err

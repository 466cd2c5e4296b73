"""Anonymizer signals: the Anonymous-IP database's flags and the policy's tiers per route class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from micafence import (
    GeoIPDatabaseError,
    MicafenceMiddleware,
    PolicyError,
    default_policy_path,
    load_policy,
    load_policy_text,
)
from micafence.cli import main
from micafence.live.breakglass import throw
from micafence.location.anonymizer import AnonymousIPDatabase, default_anonymizer_rules
from tests.conftest import COUNTRY_DB, MAXMIND
from tests.live import SE, client_for, decision_app

ANONYMOUS_DB = MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"
EVERY_FLAG = "81.2.69.160"  # 81.2.69.0/24: every flag; GB, registered US (uk zone)
VPN = "1.2.3.4"  # 1.2.0.0/16: VPN; unknown to the Country database
PUBLIC_PROXY = "186.30.236.1"
HOSTING = "71.160.223.1"
RESIDENTIAL = "6.1.0.4"
TOR_V6_PROXY = "2001:480:3a::1"  # public proxy, IPv6

# unknown_country has no rules and may see promotions here, so the anonymizer alone decides.
POLICY = """\
policy: 1
name: anonymizers-test
client_ip: {trusted_proxies: [127.0.0.0/8]}
zones:
  eu: {countries: [SE, DE]}
  uk: {countries: [GB], promotions: allowed}
  unknown_country: {promotions: allowed}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: promo, class: promotion, path: /promo/**}
  - {id: orders, class: service, methods: [POST], path: /api/orders}
  - {id: withdrawals, class: wind_down, methods: [POST], path: /api/withdrawals}
rules:
  - {id: no-new-accounts, zones: [eu], class: account_creation, outcome: block}
anonymizers:
  tor_exit: block
  public_proxy: {default: suppress_promotions, account_creation: block}
  vpn: {default: record_only, account_creation: block, promotion: suppress_promotions,
        neutral: suppress_promotions}
  residential_proxy: {default: suppress_promotions, service: block}
  hosting: record_only
"""


def app(policy_text: str = POLICY, **options: object) -> MicafenceMiddleware:
    return MicafenceMiddleware(
        decision_app(), policy=load_policy_text(policy_text, "anonymizers.yaml"),
        geoip_db=COUNTRY_DB, anonymizer_db=ANONYMOUS_DB, watch=False, **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("ip", "method", "path", "status", "reason", "promotions", "flags"),
    [
        # vpn: account creation blocked, promotions suppressed on pages, services recorded only
        (VPN, "POST", "/api/accounts", 451, "anonymizer.vpn.account_creation", "forbidden",
         ["vpn"]),
        (VPN, "GET", "/promo/spring", 451, "anonymizer.vpn.promotion", "forbidden", ["vpn"]),
        (VPN, "GET", "/markets", 200, "pass", "forbidden", ["vpn"]),
        (VPN, "POST", "/api/orders", 200, "pass", "allowed", ["vpn"]),
        (VPN, "POST", "/api/withdrawals", 200, "pass", "allowed", ["vpn"]),
        # public proxy: suppress by default, block account creation
        (PUBLIC_PROXY, "POST", "/api/accounts", 451, "anonymizer.public_proxy.account_creation",
         "forbidden", ["public_proxy"]),
        (PUBLIC_PROXY, "POST", "/api/orders", 200, "pass", "forbidden", ["public_proxy"]),
        (PUBLIC_PROXY, "GET", "/markets", 200, "pass", "forbidden", ["public_proxy"]),
        (TOR_V6_PROXY, "POST", "/api/accounts", 451, "anonymizer.public_proxy.account_creation",
         "forbidden", ["public_proxy"]),
        # residential proxy: services blocked, the rest suppressed
        (RESIDENTIAL, "POST", "/api/orders", 451, "anonymizer.residential_proxy.service",
         "forbidden", ["residential_proxy"]),
        (RESIDENTIAL, "POST", "/api/accounts", 201, "pass", "forbidden", ["residential_proxy"]),
        # hosting: recorded only
        (HOSTING, "POST", "/api/accounts", 201, "pass", "allowed", ["hosting"]),
        (HOSTING, "GET", "/promo/spring", 200, "pass", "allowed", ["hosting"]),
        # every flag: the strongest tier wins (tor_exit blocks everything, even browsing)
        (EVERY_FLAG, "GET", "/markets", 451, "anonymizer.tor_exit.neutral", "forbidden",
         ["tor_exit", "public_proxy", "vpn", "residential_proxy", "hosting"]),
        (EVERY_FLAG, "POST", "/api/withdrawals", 451, "anonymizer.tor_exit.wind_down",
         "forbidden", ["tor_exit", "public_proxy", "vpn", "residential_proxy", "hosting"]),
        # not listed ({} from maxminddb): the zone rules alone decide
        (SE, "POST", "/api/accounts", 451, "eu.account_creation", "forbidden", []),
        (SE, "GET", "/markets", 200, "pass", "forbidden", []),
        ("2a02:d000::1", "GET", "/markets", 200, "pass", "allowed", []),
    ],
)
async def test_tiers_per_route_class(
    ip: str, method: str, path: str, status: int, reason: str, promotions: str,
    flags: list[str],
) -> None:
    async with client_for(app()) as client:
        response = await client.request(
            method, path, headers={"X-Forwarded-For": ip, "Accept": "application/json"}
        )
    assert response.status_code == status
    body = response.json()
    assert body["reason"] == reason
    if status == 451:
        assert response.headers["micafence-reason"] == reason
        if reason.startswith("anonymizer."):
            assert body["rule"] == ".".join(reason.split(".")[:2])  # anonymizer.<flag>
    else:
        assert body["promotions"] == promotions
        assert body["anonymizer"] == flags


async def test_repeated_requests_keep_their_answers() -> None:
    # Decisions are cached per address: a neighbour must not inherit another's flags.
    guarded = app()
    async with client_for(guarded) as client:
        statuses = [
            (await client.post("/api/accounts", headers={"X-Forwarded-For": ip})).status_code
            for ip in (VPN, HOSTING, VPN, "1.2.200.9", HOSTING, "71.160.223.2", "1.3.0.1")
        ]
    assert statuses == [451, 201, 451, 451, 201, 201, 201]


async def test_without_the_database_no_address_has_a_flag() -> None:
    guarded = MicafenceMiddleware(decision_app(), policy=load_policy_text(POLICY, "a.yaml"),
                                  geoip_db=COUNTRY_DB, watch=False)
    async with client_for(guarded) as client:
        response = await client.post("/api/accounts", headers={"X-Forwarded-For": VPN})
    assert response.status_code == 201
    assert response.json()["anonymizer"] == []


@pytest.mark.parametrize(
    ("ip", "method", "path", "status", "reason", "promotions"),
    [
        (VPN, "POST", "/api/accounts", 451, "anonymizer.vpn.account_creation", None),
        (VPN, "POST", "/api/orders", 451, "anonymizer.vpn.service", None),
        (VPN, "GET", "/promo/x", 451, "anonymizer.vpn.promotion", None),
        (VPN, "GET", "/markets", 200, "pass", "forbidden"),
        (VPN, "POST", "/api/withdrawals", 200, "pass", "allowed"),  # off-boarding untouched
        (HOSTING, "POST", "/api/accounts", 451, "anonymizer.hosting.account_creation", None),
        (HOSTING, "POST", "/api/orders", 200, "pass", "forbidden"),
        (EVERY_FLAG, "POST", "/api/orders", 451, "anonymizer.tor_exit.service", None),
    ],
)
async def test_default_tiers_fail_closed_for_accounts_and_services(
    ip: str, method: str, path: str, status: int, reason: str, promotions: str | None
) -> None:
    text = POLICY.split("anonymizers:")[0]  # no section: the documented defaults
    async with client_for(app(text)) as client:
        response = await client.request(method, path, headers={"X-Forwarded-For": ip,
                                                               "Accept": "application/json"})
    assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert response.json().get("promotions") == promotions


def test_default_policy_spells_out_the_built_in_defaults() -> None:
    assert load_policy(default_policy_path()).anonymizers == default_anonymizer_rules()


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("  hosting: record_only\n", "", 15, "anonymizers: missing required key 'hosting'"),
        ("  hosting: record_only", "  hosting: ignore", 21,
         "anonymizers.hosting: 'ignore' is not one of: record_only, suppress_promotions, block"),
        ("  tor_exit: block", "  tor_exit: {account_creation: block}", 16,
         "anonymizers.tor_exit: no tier for promotion, service, wind_down, neutral"),
        ("  tor_exit: block", "  tor_exit: {default: block, staking: block}", 16,
         "anonymizers.tor_exit.staking: unknown key 'staking'"),
        ("  tor_exit: block", "  tor_exit: block\n  is_anonymous: block", 17,
         "anonymizers.is_anonymous: unknown key"),
    ],
)
def test_bad_sections_name_file_key_and_line(old: str, new: str, line: int, message: str) -> None:
    assert old in POLICY
    with pytest.raises(PolicyError) as caught:
        load_policy_text(POLICY.replace(old, new), "anonymizers.yaml")
    assert f"anonymizers.yaml:{line}: {message}" in str(caught.value)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (COUNTRY_DB, "'GeoIP2-Country' is not an Anonymous-IP database"),
        (MAXMIND / "bad-data" / "cyclic-data-structure.mmdb", "not a valid MaxMind database"),
        (MAXMIND / "nope.mmdb", "no such file"),
    ],
)
def test_a_wrong_anonymizer_database_stops_start_up(path: Path, problem: str) -> None:
    # Kept, not raised, so that a lazily built middleware can fail the lifespan startup with it
    # (tests/test_startup.py runs that under real servers).
    app = MicafenceMiddleware(decision_app(), policy=load_policy_text(POLICY, "a.yaml"),
                              geoip_db=COUNTRY_DB, anonymizer_db=path, watch=False)
    assert isinstance(app.startup_error, GeoIPDatabaseError)
    assert str(path) in str(app.startup_error)
    assert problem in str(app.startup_error)


def test_unlisted_addresses_have_no_flags() -> None:
    database = AnonymousIPDatabase(ANONYMOUS_DB)
    assert database.lookup(SE) == ()  # maxminddb answers {} here
    assert database.lookup("::1") == ()  # and None here
    assert database.lookup("not an address") == ()
    assert database.lookup("1.124.213.1") == ("tor_exit", "vpn")


def test_explain_shows_the_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    common = ["explain", "--policy", str(policy), "--geoip-db", str(COUNTRY_DB),
              "--ip", VPN, "--method", "POST", "--path", "/api/accounts"]
    assert main([*common, "--anonymizer-db", str(ANONYMOUS_DB), "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert (decision["reason"], decision["anonymizer"]) == ("anonymizer.vpn.account_creation",
                                                            ["vpn"])
    assert main([*common, "--anonymizer-db", str(ANONYMOUS_DB)]) == 0
    text = capsys.readouterr().out
    assert "anonymizer vpn (GeoIP2-Anonymous-IP built 2026-02-04)" in text
    assert main(common) == 0  # without the database: no flag, the zone rules alone
    assert "anonymizer no flag (no --anonymizer-db)" in capsys.readouterr().out


async def test_breakglass_can_shadow_an_anonymizer_rule(tmp_path: Path) -> None:
    throw(tmp_path, on=True, by="erin", why="INC-8: VPN provider misflagged", rule="anonymizer.vpn")
    async with client_for(app(breakglass_dir=tmp_path)) as client:
        vpn = await client.post("/api/accounts", headers={"X-Forwarded-For": VPN})
        tor = await client.post("/api/accounts", headers={"X-Forwarded-For": EVERY_FLAG})
    assert vpn.status_code == 201
    assert vpn.json()["mode"] == "shadow"
    assert vpn.json()["reason"] == "anonymizer.vpn.account_creation"
    assert vpn.json()["breakglass"] == "shadow:anonymizer.vpn"
    assert tor.status_code == 451  # other flags' rules still enforce

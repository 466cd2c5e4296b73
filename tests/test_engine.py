"""Zones from the policy: which signals count, EEA switch, UK regime, most restrictive wins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from micafence import ClientIdentity, Enforcer, GeoIPDatabase, load_policy, load_policy_text
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.pipeline import dry_pipeline, trial
from micafence.policy.probe import build_scope
from micafence.store.memory import MemoryStore
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, MAXMIND, REGIONS_DB

PROXY = "127.0.0.1"


def decide(enforcer: Enforcer, ip: str | None, method: str = "POST", path: str = "/api/accounts",
           headers: list[tuple[str, str]] | None = None) -> tuple[bool, str, tuple[str, ...]]:
    scope = build_scope(ip, method, path, headers or [])
    decision = asyncio.run(trial(enforcer, dry_pipeline(MemoryStore()), scope)).decision
    return decision.blocked, decision.reason, decision.zones


@pytest.fixture
def default_enforcer() -> Enforcer:
    return Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB))


@pytest.mark.parametrize(
    ("ip", "blocked", "reason", "zones"),
    [
        ("89.160.20.112", True, "eu.account_creation", ("eu",)),  # SE
        ("2a02:d180::1", True, "eu.account_creation", ("eu",)),  # DE
        ("2.125.160.216", True, "eu.account_creation", ("eu", "uk")),  # GB on FR block
        ("67.43.156.1", True, "eu.account_creation", ("eu",)),  # BT on RO block
        ("2a02:cf40::1", True, "eea.account_creation", ("eea",)),  # NO
        ("2a02:d000::1", False, "pass", ()),  # CH
        ("216.160.83.56", False, "pass", ("uk",)),  # US on GB block: UK regime, no MiCA
        ("81.2.69.160", False, "pass", ("uk",)),  # GB
        ("2a02:d500::1", True, "unknown_country.account_creation", ("unknown_country",)),
        ("10.0.0.1", True, "unknown_country.account_creation", ("unknown_country",)),
        (None, True, "unknown_country.account_creation", ("unknown_country",)),
    ],
)
def test_default_policy_account_creation(default_enforcer: Enforcer, ip: str | None,
                                         blocked: bool, reason: str,
                                         zones: tuple[str, ...]) -> None:
    assert decide(default_enforcer, ip) == (blocked, reason, zones)


@pytest.mark.parametrize("ip", ["192.0.2.5", "192.0.2.20", "192.0.2.40", "192.0.2.50",
                                "192.0.2.70", "192.0.2.85", "192.0.2.100", "2001:db8:1::5"])
def test_outermost_regions_and_aland_are_eu(ip: str) -> None:
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(REGIONS_DB))
    assert decide(enforcer, ip)[2] == ("eu",)


@pytest.mark.parametrize(("ip", "zones"), [("192.0.2.120", ("eea",)), ("192.0.2.130", ("eea",)),
                                           ("192.0.2.150", ("eu",))])
def test_eea_states_and_registered_only_networks(ip: str, zones: tuple[str, ...]) -> None:
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(REGIONS_DB))
    assert decide(enforcer, ip)[2] == zones


# A Teredo address (2001::/32) is located on the client IPv4 in its last 32 bits (inverted),
# not on the Teredo server the database aliases it to (issue 15.8). 6to4 is the database's.
@pytest.mark.parametrize(("database", "ip", "country", "reason"), [
    # MaxMind's test database: the server 216.160.83.56 is US; the client 89.160.20.112 SE.
    pytest.param(COUNTRY_DB, "2001:0:d8a0:5338::a65f:eb8f", "SE", "eu.account_creation",
                 id="teredo-maxmind"),
    # Our fixture aliases Teredo like MaxMind: server 198.51.100.7 is CH; client 192.0.2.5 AX.
    pytest.param(REGIONS_DB, "2001:0:c633:6407:8000:63bf:3fff:fdfa", "AX",
                 "eu.account_creation", id="teredo-fixture"),
    pytest.param(COUNTRY_DB, "2002:59a0:1470::1", "SE", "eu.account_creation",
                 id="6to4-aliased-by-maxmind"),
    pytest.param(REGIONS_DB, "2002:c000:205::1", None, "unknown_country.account_creation",
                 id="6to4-not-aliased-by-the-fixture"),
])
def test_tunnelled_ipv6_addresses(database: Path, ip: str, country: str | None,
                                  reason: str) -> None:
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(database))
    decision = enforcer.decide(build_scope(PROXY, "POST", "/api/accounts",
                                           [("X-Forwarded-For", ip)]))
    assert (decision.country, decision.reason, decision.client_ip) == (country, reason, ip)


def test_teredo_client_is_screened_for_anonymizers() -> None:
    # The client 1.2.0.5 is a VPN in MaxMind's Anonymous-IP test data; the server is not.
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB),
                        anonymizer=AnonymousIPDatabase(MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"))
    decision = enforcer.decide(build_scope(PROXY, "POST", "/api/accounts",
                                           [("X-Forwarded-For", "2001:0:d8a0:5338::fefd:fffa")]))
    assert decision.anonymizer == ("vpn",)


def test_eea_switch_off_lets_norway_open_accounts(
    policy_variant: Callable[[str, str], str],
) -> None:
    text = policy_variant("enabled: true ", "enabled: false ")
    enforcer = Enforcer(load_policy_text(text), GeoIPDatabase(COUNTRY_DB))
    assert decide(enforcer, "2a02:cf40::1") == (False, "pass", ())


def test_registered_country_can_be_switched_off(policy_variant: Callable[[str, str], str]) -> None:
    text = policy_variant("registered_country: true ", "registered_country: false ")
    enforcer = Enforcer(load_policy_text(text), GeoIPDatabase(COUNTRY_DB))
    assert decide(enforcer, "2.125.160.216") == (False, "pass", ("uk",))  # GB visitor only
    assert decide(enforcer, "89.160.20.112")[0] is True


def test_residence_signal_counts_only_when_switched_on(
    policy_variant: Callable[[str, str], str],
) -> None:
    headers = [("X-Forwarded-For", "2a02:d000::1"), ("X-Client-Residence", "DE")]
    on = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB))
    off = Enforcer(load_policy_text(policy_variant("residence: true ", "residence: false ")),
                   GeoIPDatabase(COUNTRY_DB))
    assert decide(on, PROXY, headers=headers) == (True, "eu.account_creation", ("eu",))
    assert decide(off, PROXY, headers=headers) == (False, "pass", ())


def test_most_restrictive_outcome_wins_across_zones(
    policy_variant: Callable[[str, str], str],
) -> None:
    # uk blocks account creation outright; eu only needs... a grant: block wins for a GB
    # visitor on an FR-registered block, whichever zone comes first.
    text = policy_variant(
        "rules:\n",
        "rules:\n  - {id: uk-accounts, zones: [uk], class: account_creation, outcome: block,"
        " reason: uk.closed}\n",
    ).replace(
        "    zones: [eu, eea, unknown_country]     # unknown country fails closed for"
        " account creation\n    class: account_creation\n    outcome: block",
        "    zones: [eu, eea, unknown_country]\n    class: account_creation\n"
        "    outcome: require_grant",
    )
    policy = load_policy_text(text)
    enforcer = Enforcer(policy, GeoIPDatabase(COUNTRY_DB))
    assert decide(enforcer, "2.125.160.216") == (True, "uk.closed", ("eu", "uk"))
    assert decide(enforcer, "89.160.20.112") == (True, "eu.no_grant", ("eu",))


def test_callable_identity_source(policy_variant: Callable[[str, str], str]) -> None:
    text = policy_variant("  source: header\n", "  source: callable\n")

    def identify(scope: dict[str, object]) -> ClientIdentity:
        return ClientIdentity("client-9", "IT")

    with pytest.raises(ValueError, match="no identify"):
        Enforcer(load_policy_text(text), GeoIPDatabase(COUNTRY_DB))
    enforcer = Enforcer(load_policy_text(text), GeoIPDatabase(COUNTRY_DB), identify=identify)
    decision = enforcer.decide(build_scope("2a02:d000::1", "POST", "/api/withdrawals"))
    assert (decision.client_id, decision.residence_country, decision.zones) == (
        "client-9", "IT", ("eu",))
    assert decision.blocked is False  # identified client on a wind-down route


def test_broken_identity_callable_means_unidentified(
    policy_variant: Callable[[str, str], str],
) -> None:
    text = policy_variant("  source: header\n", "  source: callable\n")

    def identify(scope: dict[str, object]) -> ClientIdentity:
        raise RuntimeError("auth backend down")

    enforcer = Enforcer(load_policy_text(text), GeoIPDatabase(COUNTRY_DB), identify=identify)
    # Who the client is, and so where it is established, cannot be told: the unknown country too.
    assert decide(enforcer, "89.160.20.112", path="/api/withdrawals") == (
        True, "eu.wind_down.unidentified", ("eu", "unknown_country"))


def test_scope_user_identity(policy_variant: Callable[[str, str], str]) -> None:
    class User:
        is_authenticated = True
        identity = "client-3"
        residence_country = "fr"

    enforcer = Enforcer(load_policy_text(policy_variant("  source: header\n",
                                                        "  source: scope_user\n")),
                        GeoIPDatabase(COUNTRY_DB))
    scope = build_scope("2a02:d000::1", "POST", "/api/accounts")
    scope["user"] = User()
    decision = enforcer.decide(scope)
    assert (decision.client_id, decision.residence_country, decision.blocked) == (
        "client-3", "FR", True)


@pytest.mark.parametrize("client_id", ["a b", "x" * 200, "{evil}", "", "é"])
def test_client_ids_that_could_break_keys_are_unidentified(
    default_enforcer: Enforcer, client_id: str
) -> None:
    decision = default_enforcer.decide(build_scope(
        PROXY, "POST", "/api/withdrawals",
        [("X-Forwarded-For", "89.160.20.112"), ("X-Client-Id", client_id)],
    ))
    assert decision.client_id is None
    assert decision.reason == "eu.wind_down.unidentified"


# -- the decision cache: keyed by what decides ----------------------------------------------------

SE = "89.160.20.112"
LONG = "a" * 12_000
CacheRequest = tuple[str | None, str, str, list[tuple[str, str]], str]  # peer, method, target,
#                                                                       headers, root_path


def _scope(request: CacheRequest) -> dict[str, object]:
    peer, method, target, headers, root_path = request
    scope = build_scope(peer, method, target, headers)
    scope["root_path"] = root_path
    return scope


CACHE_SEQUENCES = [
    pytest.param([(SE, "GET", "/api/accounts", [], ""),
                  (SE, "GET", "/api/accounts", [("X-HTTP-Method-Override", "POST")], ""),
                  (SE, "GET", "/api/accounts", [("X-HTTP-Method-Override", "DELETE")], "")],
                 id="method-override-header"),
    pytest.param([(SE, "GET", "/api/accounts", [], ""),
                  (SE, "GET", "/api/accounts?_method=POST", [], ""),
                  (SE, "GET", "/api/accounts?_method=%50UT", [], ""),
                  (SE, "GET", "/api/accounts?_method=" + "X" * 5000, [], "")],
                 id="method-override-query"),
    pytest.param([(SE, "POST", "/accounts", [], ""),
                  (SE, "POST", "/accounts", [], "/api"),
                  (SE, "POST", "/api/accounts", [], "/api")],
                 id="root-path"),
    pytest.param([(SE, "GET", f"/promo/{LONG}", [], ""),
                  (SE, "GET", f"/market/{LONG}", [], ""),
                  (SE, "GET", "/promo/" + "x/.." * 3000, [], ""),
                  (SE, "GET", f"/{LONG}/../market", [], ""),  # the same first 12 KB, then
                  (SE, "GET", f"/{LONG}/../promo", [], ""),   # only the end decides
                  (SE, "GET", f"/promo/{LONG}", [], "")],
                 id="long-paths"),
    pytest.param([(PROXY, "GET", "/api/account/export", [("X-Forwarded-For", SE)], ""),
                  (PROXY, "GET", "/api/account/export",
                   [("X-Forwarded-For", SE), ("X-Client-Id", "alice")], ""),
                  (SE, "GET", "/api/account/export", [("X-Client-Id", "alice")], ""),
                  (PROXY, "GET", "/api/account/export",
                   [("X-Forwarded-For", SE), ("X-Client-Id", "alice"), ("X-Client-Id", "bob")],
                   "")],
                 id="identity-only-from-trusted-peers"),
    pytest.param([(PROXY, "GET", "/", [("CF-IPCountry", "CH")], ""),
                  (PROXY, "GET", "/", [("CF-IPCountry", "SE")], ""),
                  (PROXY, "GET", "/", [("CF-IPCountry", "SE"), ("CF-IPCountry", "CH")], ""),
                  (SE, "GET", "/", [("CF-IPCountry", "CH")], ""),
                  ("2a02:d000::1", "GET", "/", [("CF-IPCountry", "SE")], "")],
                 id="edge-country-only-from-trusted-peers"),
    pytest.param([(PROXY, "POST", "/api/accounts", [("X-Forwarded-For", f"{spoof}, {SE}")], "")
                  for spoof in ("2a02:d000::1", "216.160.83.56", "junk", "")]
                 + [(PROXY, "POST", "/api/accounts", [("X-Forwarded-For", f"{SE}, 10.0.0.1")], ""),
                    (PROXY, "POST", "/api/accounts", [("X-Forwarded-For", f"{SE}, 1.2.3.4")], ""),
                    (PROXY, "POST", "/api/accounts", [("X-Forwarded-For", "2a02:d000::1")], ""),
                    (PROXY, "POST", "/api/accounts", [("X-Forwarded-For", "  ")], ""),
                    (PROXY, "POST", "/api/accounts", [("X-Forwarded-For", ",")], ""),
                    ("2a02:d000::1", "POST", "/api/accounts", [("X-Forwarded-For", SE)], "")],
                 id="forwarded-for"),
]


@pytest.mark.parametrize("requests", CACHE_SEQUENCES)
def test_cached_decisions_are_what_a_fresh_enforcer_decides(
    requests: list[CacheRequest], policy_variant: Callable[[str, str], str]
) -> None:
    """Every request, decided in turn by one enforcer (twice: the second time from its cache),
    gets exactly what an enforcer that never saw another request decides."""
    # The edge set-up: the CDN's country header (from trusted proxies only) is the location.
    policy = load_policy_text(policy_variant(
        "  setup: private   #", "  setup: edge\n  edge_country_header: cf-ipcountry\n  #"),
        "edge.yaml") if any(h[0] == "CF-IPCountry" for r in requests for h in r[3]) \
        else load_policy(DEFAULT_POLICY)
    geoip = GeoIPDatabase(COUNTRY_DB)
    expected = [Enforcer(policy, geoip).decide(_scope(r)) for r in requests]
    assert len({(d.blocked, d.reason, d.zones, d.client_id, d.client_ip)
                for d in expected}) > 1
    enforcer = Enforcer(policy, geoip)
    for _ in range(2):
        assert [enforcer.decide(_scope(r)) for r in requests] == expected


def test_header_pairs_given_as_lists_are_decided_like_tuples(default_enforcer: Enforcer) -> None:
    # ASGI allows a header pair to be any two-item iterable; a list is not hashable.
    headers = [("X-Forwarded-For", SE), ("X-Client-Id", "alice")]
    as_tuples = _scope((PROXY, "POST", "/api/accounts", headers, ""))
    as_lists = {**as_tuples, "headers": [list(pair) for pair in as_tuples["headers"]]}
    expected = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB)).decide(as_tuples)
    assert default_enforcer.decide(as_lists) == expected
    assert default_enforcer.decide(as_lists) == expected

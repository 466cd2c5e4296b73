"""Policy loading: the packaged default policy, and every malformed policy named by file,
key path and line."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from micafence.errors import PolicyError
from micafence.policy.loader import (
    default_policy_path,
    load_policy,
    load_policy_text,
    policy_revision,
)
from micafence.policy.model import (
    UNKNOWN_COUNTRY_ZONE,
    Mode,
    Outcome,
    PromotionStance,
    Unlisted,
)

EU_27 = {
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
}
EU_EXTRA = {"GF", "GP", "MQ", "RE", "YT", "MF", "AX"}
REVISION = re.compile(r"sha256:[0-9a-f]{16}")

# A small valid policy. The line numbers on the right are what the expectations below use.
BASE = """\
policy: 1
name: base
mode: enforce
client_ip:
  trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]
  header: x-forwarded-for
signals:
  country: true
  registered_country: true
zones:
  eu:
    title: European Union
    countries: [DE, FR, SE]
    promotions: forbidden
  eea:
    enabled: true
    countries: [NO, IS, LI]
  unknown_country:
    promotions: forbidden
routes:
  - {id: accounts.api, class: account_creation, methods: [POST, PUT], path: /api/accounts}
  - {id: promotions.pages, class: promotion, path: /promo/**}
rules:
  - id: no-new-accounts
    zones: [eu, eea, unknown_country]
    class: account_creation
    outcome: block
  - id: no-promotions
    zones: [eu]
    class: promotion
    outcome: block
    mode: shadow
    reason: eu.promotion_blocked
"""
#  1 policy: 1                   13 countries: [DE, FR, SE]    25 zones: [eu, eea, ...]
#  3 mode: enforce               16 enabled: true              28 - id: no-promotions
#  5 trusted_proxies: [...]      17 countries: [NO, IS, LI]    29 zones: [eu]
#  7 signals:                    18 unknown_country:           31 outcome: block
# 10 zones:                      21 - {id: accounts.api ...}   32 mode: shadow
# 11 eu:                         22 - {id: promotions.pages}   33 reason: eu.promotion_blocked


def edit(old: str, new: str) -> str:
    """BASE with the one occurrence of ``old`` replaced by ``new``."""
    assert BASE.count(old) == 1, f"{old!r} must occur exactly once in BASE"
    return BASE.replace(old, new)


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the packaged default policy ---------------------------------------------------------------


def test_default_policy_loads_with_its_zones() -> None:
    policy = load_policy(default_policy_path())
    zones = {zone.name: zone for zone in policy.zones}
    assert list(zones) == ["eu", "eea", "uk", UNKNOWN_COUNTRY_ZONE]

    assert zones["eu"].countries == EU_27 | EU_EXTRA
    assert len(zones["eu"].countries) == 34
    assert zones["eu"].countries >= EU_EXTRA

    # YAML 1.2: NO is Norway, not the boolean false.
    assert zones["eea"].countries == {"NO", "IS", "LI"}
    assert all(type(code) is str for code in zones["eea"].countries)
    assert "NO" in zones["eea"].countries

    assert zones["uk"].countries == {"GB"}
    assert zones["uk"].promotions is PromotionStance.APPROVED_ONLY
    assert zones[UNKNOWN_COUNTRY_ZONE].countries == frozenset()
    assert zones["eu"].promotions is PromotionStance.FORBIDDEN

    assert policy.name == "default"
    assert policy.mode is Mode.ENFORCE
    assert policy.source == str(default_policy_path())
    assert REVISION.fullmatch(policy.revision)
    assert policy.revision == policy_revision(default_policy_path().read_bytes())
    # Format version 2 with a fail-closed default for unsafe methods; every class listed.
    assert (policy.version, policy.unlisted) == (2, Unlisted(safe="neutral", unsafe="service"))
    classes = Counter(route.route_class for route in policy.routes)
    assert classes == {"account_creation": 10, "promotion": 11, "service": 18,
                       "wind_down": 10, "neutral": 14}
    assert [rule.id for rule in policy.rules] == [
        "no-new-accounts", "no-promotion-routes", "services-need-grant",
        "wind-down-existing-clients",
    ]
    assert policy.client_ip.trusted_proxies == ("127.0.0.0/8", "::1/128")
    assert policy.client_identity.source == "header"
    assert policy.client_identity.trusted_sources == ("127.0.0.0/8", "::1/128")  # loopback only
    assert policy.client_identity.residence_header == "x-client-residence"


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    first = load_policy_text(BASE, "a.yaml")
    again = load_policy_text(BASE, "b.yaml")
    assert REVISION.fullmatch(first.revision)
    assert first.revision == again.revision
    # The same bytes read from a file give the same revision as the text.
    assert load_policy(write(tmp_path, BASE)).revision == first.revision
    # Any change, even a comment, is a new revision.
    assert load_policy_text(BASE + "# reviewed\n").revision != first.revision
    assert load_policy_text(edit("name: base", "name: other")).revision != first.revision


def test_base_policy_is_valid(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, BASE))
    assert policy.name == "base"
    assert [zone.name for zone in policy.zones] == ["eu", "eea", UNKNOWN_COUNTRY_ZONE]
    assert policy.client_ip.trusted_proxies == ("127.0.0.0/8", "10.0.0.0/8")
    first, second = policy.rules
    assert first.zones == {"eu", "eea", UNKNOWN_COUNTRY_ZONE}
    assert first.outcome is Outcome.BLOCK and first.mode is None and first.reason is None
    assert second.mode is Mode.SHADOW and second.reason == "eu.promotion_blocked"
    assert policy.routes[0].methods == {"POST", "PUT"}
    assert policy.routes[1].methods is None


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, edit("name: base\n", ""), "exchange-eu.yaml"))
    assert policy.name == "exchange-eu"


# -- malformed policies ------------------------------------------------------------------------

BAD_POLICIES = [
    # (id, text, key path, line, message fragment)
    pytest.param(BASE + "colour: red\n", "colour", 34, "unknown key 'colour'",
                 id="unknown-top-level-key"),
    pytest.param(edit("    title: European Union\n",
                      "    title: European Union\n    currency: EUR\n"),
                 "zones.eu.currency", 13, "unknown key 'currency'", id="unknown-zone-key"),
    pytest.param(edit("10.0.0.0/8", "10.0.0.300/8"), "client_ip.trusted_proxies[1]", 5,
                 "'10.0.0.300/8' is not an IP network in CIDR notation", id="bad-cidr"),
    pytest.param(edit("10.0.0.0/8", "10.0.0.0/33"), "client_ip.trusted_proxies[1]", 5,
                 "not an IP network", id="bad-cidr-prefix"),
    pytest.param(edit("[DE, FR, SE]", "[DE, XX, SE]"), "zones.eu.countries[1]", 13,
                 "'XX' is not an ISO 3166-1 alpha-2 country code", id="country-XX"),
    pytest.param(edit("[DE, FR, SE]", "[DE, FR, SE, UK]"), "zones.eu.countries[3]", 13,
                 "'UK' is not an ISO 3166-1 alpha-2 country code", id="country-UK"),
    pytest.param(edit("[DE, FR, SE]", "[DE, FR, SE, de]"), "zones.eu.countries[3]", 13,
                 "'de' is not an ISO 3166-1", id="country-lower-case"),
    pytest.param(edit("[DE, FR, SE]", "[DE, FR,\n                SE, XX]"),
                 "zones.eu.countries[3]", 14, "'XX'", id="country-on-continuation-line"),
    pytest.param(edit("[DE, FR, SE]", "\n      - DE\n      - XX\n      - SE"),
                 "zones.eu.countries[1]", 15, "'XX'", id="country-in-block-list"),
    pytest.param(edit("[DE, FR, SE]", "[DE, FR, SE, FR]"), "zones.eu.countries[3]", 13,
                 "FR is listed twice in zone 'eu'", id="country-twice"),
    pytest.param(edit("/promo/**", "api/x"), "routes[1].path", 22,
                 "must start with '/'", id="path-without-slash"),
    pytest.param(edit("/promo/**", "/a/**/b"), "routes[1].path", 22,
                 "'**' may only be the last segment", id="path-inner-double-star"),
    pytest.param(edit("/promo/**", "/promo/x*"), "routes[1].path", 22,
                 "'*' must be a whole segment", id="path-partial-star"),
    pytest.param(edit("[POST, PUT]", "[POST, FETCH]"), "routes[0].methods[1]", 21,
                 "unknown HTTP method 'FETCH'", id="unknown-method"),
    pytest.param(edit("class: promotion, path", "class: promo, path"), "routes[1].class", 22,
                 "'promo' is not one of: account_creation, promotion", id="unknown-route-class"),
    pytest.param(edit("id: promotions.pages", "id: accounts.api"), "routes[1].id", 22,
                 "duplicate route id 'accounts.api'", id="duplicate-route-id"),
    pytest.param(edit(", path: /promo/**}", "}"), "routes[1]", 22,
                 "missing required key 'path'", id="route-without-path"),
    pytest.param(edit("id: no-promotions", "id: no-new-accounts"), "rules[1].id", 28,
                 "duplicate rule id 'no-new-accounts'", id="duplicate-rule-id"),
    pytest.param(edit("zones: [eu]\n", "zones: [eu, uk]\n"), "rules[1].zones[1]", 29,
                 "unknown zone 'uk'", id="rule-undeclared-zone"),
    pytest.param(edit("    outcome: block\n    mode", "    outcome: deny\n    mode"),
                 "rules[1].outcome", 31, "'deny' is not one of: allow, allow_identified",
                 id="bad-outcome"),
    pytest.param(edit("mode: enforce", "mode: audit"), "mode", 3,
                 "'audit' is not one of: enforce, shadow", id="bad-global-mode"),
    pytest.param(edit("mode: shadow", "mode: dry-run"), "rules[1].mode", 32,
                 "'dry-run' is not one of: enforce, shadow", id="bad-rule-mode"),
    pytest.param(edit("reason: eu.promotion_blocked", "reason: EU-Promotion"),
                 "rules[1].reason", 33, "'EU-Promotion' is not a reason code",
                 id="bad-reason-format"),
    pytest.param(edit("reason: eu.promotion_blocked", "reason: promotion"),
                 "rules[1].reason", 33, "'promotion' is not a reason code",
                 id="reason-without-dot"),
    pytest.param(edit("    title: European Union\n",
                      "    title: European Union\n    title: EU again\n"),
                 "", 13, 'duplicate key "title"', id="duplicate-yaml-key"),
    pytest.param(BASE + "mode: shadow\n", "", 34, 'duplicate key "mode"',
                 id="duplicate-top-level-key"),
    pytest.param(edit("  header: x-forwarded-for\n", "  header: x-forwarded-for: yes\n"),
                 "", 6, "YAML error: mapping values are not allowed here", id="yaml-syntax"),
    pytest.param(edit("policy: 1", "policy: 3"), "policy", 1,
                 "unsupported schema version 3 (this reads 1 and 2)", id="schema-version"),
    pytest.param(edit("policy: 1", "policy: '1'"), "policy", 1,
                 "expected an integer, got string '1'", id="schema-version-string"),
    pytest.param(edit("  unknown_country:\n", "  unknown_country:\n    countries: [US]\n"),
                 "zones.unknown_country.countries", 19,
                 "the unknown_country zone cannot list countries", id="unknown-country-countries"),
    pytest.param(edit("  country: true\n  registered_country: true\n",
                      "  country: false\n  registered_country: false\n"),
                 "signals", 7, "at least one of country and registered_country must count",
                 id="signals-none-counted"),
    pytest.param(edit("[NO, IS, LI]", "NO"), "zones.eea.countries", 17,
                 "expected a list, got string 'NO'", id="string-for-list"),
    pytest.param(edit("[127.0.0.0/8, 10.0.0.0/8]", "10.0.0.0/8"), "client_ip.trusted_proxies",
                 5, "expected a list, got string '10.0.0.0/8'", id="string-for-proxy-list"),
    pytest.param(edit("enabled: true", 'enabled: "yes"'), "zones.eea.enabled", 16,
                 "expected true or false, got string 'yes'", id="enabled-quoted-yes"),
    pytest.param(edit("enabled: true", "enabled: yes"), "zones.eea.enabled", 16,
                 "expected true or false, got string 'yes'", id="enabled-yaml11-yes"),
    pytest.param(edit("  country: true\n", "  country: 1\n"), "signals.country", 8,
                 "expected true or false, got int 1", id="int-for-flag"),
    pytest.param(edit("zones: [eu]\n", "zones: eu\n"), "rules[1].zones", 29,
                 "expected a list, got string 'eu'", id="rule-zones-string"),
    pytest.param(edit("  eu:\n    title", "  EU:\n    title"), "zones.EU", 11,
                 "zone name 'EU' must be lower-case", id="zone-name-case"),
    # Identity headers need the auth gateway's networks (issue 15.6).
    pytest.param(BASE + "client_identity:\n  source: header\n  trusted_sources: []\n",
                 "client_identity.trusted_sources", 36,
                 "source 'header' needs at least one network; list the network of the auth "
                 "gateway that sets x-client-id", id="identity-header-empty-sources"),
    pytest.param(BASE + "client_identity:\n  source: header\n",
                 "client_identity.source", 35,
                 "source 'header' needs client_identity.trusted_sources",
                 id="identity-header-without-sources"),
    pytest.param(BASE + "client_identity:\n  source: header\n  trusted_sources: [10.9.0.300]\n",
                 "client_identity.trusted_sources[0]", 36,
                 "'10.9.0.300' is not an IP network in CIDR notation",
                 id="identity-source-bad-cidr"),
    pytest.param(BASE + "client_identity:\n  source: header\n  trusted_sources: 10.9.0.5\n",
                 "client_identity.trusted_sources", 36,
                 "expected a list, got string '10.9.0.5'", id="identity-sources-string"),
]


@pytest.mark.parametrize(("text", "key_path", "line", "message"), BAD_POLICIES)
def test_malformed_policy_names_file_key_and_line(
    tmp_path: Path, text: str, key_path: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.file, error.key_path, error.line) == (str(path), key_path, line), str(error)
    assert message in error.problem
    assert str(error).startswith(f"{path}:{line}:")


@pytest.mark.parametrize(("identity", "sources"), [
    pytest.param("  source: header\n  trusted_sources: [10.9.0.5, 2001:db8::/32]\n",
                 ("10.9.0.5/32", "2001:db8::/32"), id="header-with-gateways"),
    pytest.param("  source: scope_user\n", (), id="scope-user-needs-none"),
    pytest.param("  source: none\n  trusted_sources: []\n", (), id="none-with-empty-list"),
])
def test_identity_trusted_sources(identity: str, sources: tuple[str, ...]) -> None:
    policy = load_policy_text(BASE + "client_identity:\n" + identity, "p.yaml")
    assert policy.client_identity.trusted_sources == sources


@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="empty"), pytest.param("\n\n", id="blank"),
     pytest.param("# nothing here yet\n", id="comment-only")],
)
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.file, error.key_path, error.line) == (str(path), "", None)
    assert "empty" in error.problem
    assert str(error) == f"{path}: the file is empty"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert (caught.value.file, caught.value.line) == (str(path), None)
    assert "cannot read" in caught.value.problem


def test_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- policy: 1\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert (caught.value.key_path, caught.value.line) == ("", 1)
    assert "expected a mapping, got a list" in caught.value.problem


def test_missing_required_top_level_key() -> None:
    text = BASE[: BASE.index("rules:")]
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml")
    assert "missing required key 'rules'" in caught.value.problem
    assert caught.value.file == "p.yaml"


def test_error_string_is_file_line_key_path_message() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(edit("[DE, FR, SE]", "[DE, XX, SE]"), "p.yaml")
    assert str(caught.value) == (
        "p.yaml:13: zones.eu.countries[1]: 'XX' is not an ISO 3166-1 alpha-2 country code"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_text(BASE + "colour: red\n", "p.yaml")
    assert re.fullmatch(r"p\.yaml:34: colour: unknown key 'colour' \(allowed: .*\)",
                        str(caught.value))
    # A YAML error has no key path: "file:line: message".
    with pytest.raises(PolicyError) as caught:
        load_policy_text(BASE + "mode: shadow\n", "p.yaml")
    assert str(caught.value).startswith('p.yaml:34: YAML error: found duplicate key "mode"')


# -- disabled zones ----------------------------------------------------------------------------

DISABLED = edit("enabled: true", "enabled: false")


def test_disabled_zone_disappears() -> None:
    policy = load_policy_text(DISABLED, "p.yaml")
    assert [zone.name for zone in policy.zones] == ["eu", UNKNOWN_COUNTRY_ZONE]
    assert policy.zone("eea") is None
    # Naming the disabled zone in a rule is not an error; the rule just never covers it.
    assert policy.rules[0].zones == {"eu", UNKNOWN_COUNTRY_ZONE}


def test_rule_naming_only_a_disabled_zone_covers_nothing() -> None:
    text = DISABLED.replace("zones: [eu]\n", "zones: [eea]\n")
    policy = load_policy_text(text, "p.yaml")
    assert policy.rules[1].zones == frozenset()


def test_disabled_zone_is_still_validated_as_a_mapping() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(edit("enabled: true", "enabled: false\n    colour: red"), "p.yaml")
    assert (caught.value.key_path, caught.value.line) == ("zones.eea.colour", 17)


def test_disabled_zone_rules_never_apply() -> None:
    from micafence.decide import Enforcer
    from micafence.location.geo import GeoIPDatabase
    from micafence.policy.probe import build_scope

    database = GeoIPDatabase(
        Path(__file__).parent / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"
    )
    # 2a02:cf40::1 is Norway in MaxMind's test data.
    scope = build_scope("2a02:cf40::1", "POST", "/api/accounts")
    enabled = Enforcer(load_policy_text(BASE, "p.yaml"), database).decide(dict(scope))
    assert enabled.zones == ("eea",)
    assert enabled.blocked and enabled.reason == "eea.account_creation"

    disabled = Enforcer(load_policy_text(DISABLED, "p.yaml"), database).decide(dict(scope))
    assert disabled.zones == ()
    assert not disabled.blocked
    assert disabled.reason == "pass"


def test_disabling_unknown_country_is_refused_or_honoured() -> None:
    """``enabled: false`` on unknown_country must not be silently ignored.

    Either the loader refuses it (the unknown-country zone is fail-closed by design) at
    ``zones.unknown_country.enabled``, or it is honoured like any other disabled zone.
    """
    text = edit("  unknown_country:\n    promotions: forbidden\n",
                "  unknown_country:\n    enabled: false\n")
    try:
        policy = load_policy_text(text, "p.yaml")
    except PolicyError as error:
        assert (error.key_path, error.line) == ("zones.unknown_country.enabled", 19)
        return
    assert all(UNKNOWN_COUNTRY_ZONE not in rule.zones for rule in policy.rules), (
        "unknown_country has enabled: false, yet its rules still apply"
    )


# -- YAML merge keys ---------------------------------------------------------------------------

MERGED_ZONE = edit(
    "  eea:\n    enabled: true\n    countries: [NO, IS, LI]\n",
    "  eea: &eea\n    enabled: true\n    countries: [NO, IS, LI]\n"
    "  efta:\n    <<: *eea\n    title: EFTA\n",
)


def test_merge_key_is_loaded_or_refused_never_a_crash() -> None:
    """YAML merge keys (``<<: *anchor``) are valid YAML; they must load or be a PolicyError.

    The merged-in keys have no line of their own in the mapping that receives them.
    """
    try:
        policy = load_policy_text(MERGED_ZONE, "p.yaml")
    except PolicyError as error:
        assert error.file == "p.yaml"
        assert error.key_path.startswith("zones.efta")
        assert error.line in (18, 19, 20)
        return
    efta = policy.zone("efta")
    assert efta is not None
    assert efta.countries == {"NO", "IS", "LI"}
    assert efta.title == "EFTA"

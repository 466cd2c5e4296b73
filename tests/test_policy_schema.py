"""The policy JSON Schema (``micafence/data/policy.schema.json``) agrees with the loader.

Every policy in the repository passes both; invalid policies fail both; and policies made by
mutating the default one (a key dropped, an unknown key added, a value of another type, another
enumeration value) are accepted by the schema exactly when the loader accepts them.

The loader checks more than the schema: what one part of a file says about another, and values
a pattern cannot judge (:data:`LOADER_ONLY`, listed in docs/policy.md too). Each is shown here
with a policy the schema accepts and the loader refuses, and no mutation that could trip one of
them is generated.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, ValidationError
from jsonschema.exceptions import best_match
from ruamel.yaml import YAML

from micafence.cli import main
from micafence.errors import PolicyError
from micafence.location.anonymizer import FLAGS
from micafence.location.countries import ISO_COUNTRY_CODES
from micafence.policy.cache import CacheSetup
from micafence.policy.catalogue import (
    DECLARATION_SOURCES,
    FIAT_CURRENCIES,
    MICA_SERVICES,
    Category,
    Liquidity,
)
from micafence.policy.grant_store import REDIS_CHECKS
from micafence.policy.health import Posture
from micafence.policy.loader import SCHEMA_VERSIONS, default_policy_path, load_policy_text
from micafence.policy.model import (
    ROUTE_CLASSES,
    UNKNOWN_COUNTRY_ZONE,
    AnonymizerTier,
    Mode,
    Outcome,
    PromotionStance,
)
from micafence.policy.promotions import EmptyFormat, RouteOutcome
from micafence.policy.routes import HTTP_METHODS
from micafence.policy.schema import schema_path, schema_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "middleware" / "micafence" / "data" / "default-policy.yaml"
POLICY_PAGE = REPO / "docs" / "policy.md"
SCHEMA: dict[str, Any] = json.loads(schema_text())
VALIDATOR = Draft7Validator(SCHEMA)

Data = Any
Key = str | int
KeyPath = tuple[Key, ...]


def as_data(text: str) -> Data:
    """A policy as JSON data, the way an editor's YAML 1.2 reading sees it: a timestamp YAML
    resolves (``2027-01-01T00:00:00+01:00`` unquoted) is text to JSON Schema."""
    return json.loads(json.dumps(YAML(typ="safe", pure=True).load(text), default=_as_text))


def _as_text(value: object) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON: {value!r}")


def schema_says(data: Data) -> str | None:
    """``None`` when the schema accepts ``data``, else its most relevant error."""
    error = best_match(VALIDATOR.iter_errors(data))
    return None if error is None else f"{error.json_path}: {error.message}"


def loader_says(data: Data) -> str | None:
    """``None`` when the loader accepts ``data`` (written as YAML: JSON is YAML), else its
    error."""
    try:
        load_policy_text(json.dumps(data), "policy.yaml")
    except PolicyError as exc:
        return str(exc)
    return None


BASE: Data = as_data(DEFAULT.read_text(encoding="utf-8"))


def fresh() -> Data:
    return copy.deepcopy(BASE)


def route(data: Data, route_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in data["routes"] if r["id"] == route_id)
    return found


# -- the schema file ---------------------------------------------------------------------------


def test_schema_is_a_valid_draft_07_schema() -> None:
    Draft7Validator.check_schema(SCHEMA)  # draft-07: what the YAML language server speaks
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_schema_ships_beside_the_default_policy_and_its_first_line_names_it() -> None:
    assert schema_path().parent == default_policy_path().parent
    first = DEFAULT.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=policy.schema.json"
    # Resolved against the file as opened: the packaged file, and the repository's link to it.
    for opened in (DEFAULT, REPO / "policies" / "default.yaml"):
        assert (opened.parent / "policy.schema.json").read_text(encoding="utf-8") == schema_text()


def test_micafence_schema_prints_the_schema_and_its_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == SCHEMA
    assert main(["schema", "--path"]) == 0
    assert capsys.readouterr().out == f"{schema_path()}\n"


def _definition(name: str) -> dict[str, Any]:
    found: dict[str, Any] = SCHEMA["definitions"][name]
    return found


def test_schema_vocabularies_are_the_loaders() -> None:
    top = SCHEMA["properties"]
    assert top["policy"]["enum"] == list(SCHEMA_VERSIONS)
    assert set(_definition("country")["enum"]) == ISO_COUNTRY_CODES
    assert set(_definition("fiat")["enum"]) == FIAT_CURRENCIES
    assert set(top["assets"]["propertyNames"]["not"]["enum"]) == FIAT_CURRENCIES
    assert {key: entry["properties"]["mica"]["const"]
            for key, entry in top["services"]["properties"].items()} == {
        key: letter for key, (letter, _) in MICA_SERVICES.items()}
    assert _definition("route_class")["enum"] == list(ROUTE_CLASSES)
    assert top["anonymizers"]["anyOf"][1]["required"] == list(FLAGS)
    assert set(_definition("tier")["enum"]) == {tier.value for tier in AnonymizerTier}
    method = re.compile(_definition("route")["properties"]["methods"]["items"]["pattern"])
    for name in HTTP_METHODS:
        assert method.search(name) and method.search(name.lower()) and method.search(
            name.title())
    assert not any(method.search(word) for word in ("FETCH", "GETS", " GET", "", "*"))


# -- what each side accepts --------------------------------------------------------------------


def _repository_policies() -> list[Path]:
    candidates = [*sorted((REPO / "policies").glob("*.yaml")), DEFAULT,
                  *sorted((REPO / "examples").rglob("*.yaml")),
                  *sorted((REPO / "examples").rglob("*.yml"))]
    return [path for path in candidates
            if isinstance(data := as_data(path.read_text(encoding="utf-8")), dict)
            and "policy" in data]  # not a cases or grants file


REPOSITORY_POLICIES = _repository_policies()


def test_the_repository_has_policies_to_check() -> None:
    assert DEFAULT in REPOSITORY_POLICIES
    assert REPO / "policies" / "default.yaml" in REPOSITORY_POLICIES


@pytest.mark.parametrize("path", REPOSITORY_POLICIES,
                         ids=[str(p.relative_to(REPO)) for p in REPOSITORY_POLICIES])
def test_every_policy_in_the_repository_passes_schema_and_loader(path: Path) -> None:
    load_policy_text(path.read_text(encoding="utf-8"), str(path))
    assert schema_says(as_data(path.read_text(encoding="utf-8"))) is None


@dataclass(frozen=True)
class Invalid:
    name: str
    change: Callable[[Data], object]
    loader: str  # what the loader's error says


def _set(*path_and_value: Any) -> Callable[[Data], None]:
    *path, value = path_and_value

    def change(data: Data) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(*path: Key) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def _route_set(route_id: str, key: str, value: object) -> Callable[[Data], None]:
    return lambda data: route(data, route_id).__setitem__(key, value)


INVALID = [
    # unknown keys
    Invalid("unknown top-level key", _set("colour", "blue"), "unknown key 'colour'"),
    Invalid("unknown key in a route", _route_set("accounts.api", "verb", "POST"),
            "unknown key 'verb'"),
    Invalid("unknown key in a zone", _set("zones", "eu", "members", ["FR"]),
            "unknown key 'members'"),
    Invalid("unknown anonymizer flag", _set("anonymizers", "proxy", "block"),
            "unknown key 'proxy'"),
    # wrong types
    Invalid("mode is a number", _set("mode", 1), "expected a non-empty string"),
    Invalid("countries is a string", _set("zones", "eu", "countries", "FR"),
            "expected a list"),
    Invalid("max_body_bytes is text", _set("scopes", "max_body_bytes", "64k"),
            "expected an integer"),
    Invalid("a signal is text", _set("signals", "country", "yes"), "expected true or false"),
    Invalid("policy version is text", _set("policy", "2"), "expected an integer"),
    Invalid("policy version is true", _set("policy", True), "expected an integer"),
    Invalid("routes is a mapping", _set("routes", {}), "expected a list"),
    # enumerations and patterns
    Invalid("unknown outcome", lambda d: d["rules"][0].__setitem__("outcome", "deny"),
            "'deny' is not one of"),
    Invalid("unknown route class", _route_set("accounts.api", "class", "signup"),
            "'signup' is not one of"),
    Invalid("UK is not a country code", _set("zones", "uk", "countries", ["UK"]),
            "'UK' is not an ISO 3166-1 alpha-2 country code"),
    Invalid("unsupported format version", _set("policy", 3), "unsupported schema version 3"),
    Invalid("unknown HTTP method", _route_set("accounts.api", "methods", ["FETCH"]),
            "unknown HTTP method"),
    Invalid("zone name in capitals", _set("zones", "EU", {"countries": ["FR"]}),
            "zone name 'EU' must be lower-case"),
    Invalid("asset symbol in lower case", _set("assets", "btc", BASE["assets"]["BTC"]),
            "asset symbol 'btc'"),
    Invalid("bad rule reason", lambda d: d["rules"][0].__setitem__("reason", "EU"),
            "is not a reason code"),
    Invalid("bad duration", _set("audit", "retention", "5 years"),
            "is not an ISO 8601 duration"),
    Invalid("a duration in months", _set("scopes", "term", "P1M"),
            "is not an ISO 8601 duration"),
    Invalid("a date without time", lambda d: d["rules"][0].__setitem__(
        "effective_from", "2027-01-01"), "is a date: give a time and timezone"),
    Invalid("a time without timezone", lambda d: d["rules"][0].__setitem__(
        "effective_from", "2027-01-01T00:00:00"), "has no timezone"),
    Invalid("a header name with a space", _set("onboarding", "header", "x token"),
            "is not an HTTP header name"),
    Invalid("a path without a leading /", _route_set("accounts.api", "path", "api/accounts"),
            "must start with '/'"),
    Invalid("a marker that is only *", _set("promotions", "markers", ["*"]),
            "'*' alone would mark every query string"),
    Invalid("max_rewrite_bytes too small", _set("promotions", "max_rewrite_bytes", 100),
            "must be at least 1024"),
    Invalid("an IPv4 prefix over 32", _set("audit", "ip_truncation", {"ipv4": 33}),
            "a prefix length is at most 32"),
    Invalid("per_worker over the bound", _set("promotions", "evidence", "per_worker", 100001),
            "at most 100000"),
    # missing required keys
    Invalid("no rules", _drop("rules"), "missing required key 'rules'"),
    Invalid("a route without path", lambda d: d["routes"][0].pop("path"),
            "missing required key 'path'"),
    Invalid("an asset without peg", _drop("assets", "BTC", "peg"),
            "missing required key 'peg'"),
    Invalid("an anonymizer flag left out", _drop("anonymizers", "vpn"),
            "missing required key 'vpn'"),
    Invalid("a zone without countries", _drop("zones", "uk", "countries"),
            "missing required key 'countries'"),
    Invalid("a service without mica", _drop("services", "staking", "mica"),
            "missing required key 'mica'"),
    # rules within one entry (or section) that the schema states too
    Invalid("identity from a header without trusted sources",
            _drop("client_identity", "trusted_sources"), "needs client_identity.trusted_sources"),
    Invalid("edge cache without its header", _set("cache", {"setup": "edge"}),
            "'setup: edge' needs 'edge_country_header'"),
    Invalid("edge cache without trusted proxies", lambda d: (
        d.__setitem__("cache", {"setup": "edge", "edge_country_header": "cf-ipcountry"}),
        d["client_ip"].pop("trusted_proxies")), "needs client_ip.trusted_proxies"),
    Invalid("edge header without edge", _set("cache", "edge_country_header", "cf-ipcountry"),
            "only used with 'setup: edge'"),
    Invalid("a residence on a service route", _route_set(
        "service.orders", "residence", {"from": "body", "name": "country"}),
            "only an account_creation route declares a residence"),
    Invalid("an asset without a service", lambda d: route(d, "service.transfers").pop(
        "service"), "asset needs a service"),
    Invalid("a pair and an asset", _route_set("service.orders", "asset",
                                              {"from": "body", "name": "asset"}),
            "a pair names its assets: drop asset"),
    Invalid("an e-money token without peg", _set("assets", "USDC", "peg", "none"),
            "an e-money token (emt) is pegged"),
    Invalid("a pegged utility token", _set("assets", "NWT", "peg", "USD"),
            "only an e-money token is pegged"),
    Invalid("a fiat code as an asset", _set("assets", "USD", BASE["assets"]["BTC"]),
            "USD is a fiat currency code"),
    Invalid("a MiCA service with another letter", _set("services", "custody", "mica", "b"),
            "custody is MiCA Art. 3(1)(16)(a)"),
    Invalid("the firm's product with a MiCA letter", _set("services", "staking", "mica", "k"),
            "must say mica: false"),
    Invalid("format on a blocking promotion route", _set(
        "promotions", "routes", "promotions.feed", "outcome", "block"),
            "'format' only applies to 'outcome: empty'"),
    Invalid("an approved incentive", _set("promotions", "routes", "promotions.referral",
                                          "approved_for", ["uk"]),
            "an incentive route cannot be approved"),
    Invalid("account id from a header and a field", _set(
        "onboarding", "account_id", {"header": "x-account-id", "json": "id"}),
            "give exactly one of header: NAME or json: FIELD"),
    Invalid("unknown_country lists countries", _set("zones", "unknown_country", "countries",
                                                    ["AQ"]),
            "the unknown_country zone cannot list countries"),
    Invalid("unknown_country switched off", _set("zones", "unknown_country", "enabled", False),
            "the unknown_country zone cannot be disabled"),
    Invalid("unknown_country with an end date", _set(
        "zones", "unknown_country", "effective_until", "2027-01-01T00:00:00Z"),
            "the unknown_country zone cannot have effective_until"),
    Invalid("no location signal counts", _set("signals", {"country": False,
                                                          "registered_country": False}),
            "at least one of country and registered_country must count"),
    Invalid("a route named unlisted", _route_set("accounts.api", "id", "unlisted"),
            "'unlisted' names what no route lists"),
    Invalid("a country twice in a zone", _set("zones", "uk", "countries", ["GB", "GB"]),
            "GB is listed twice"),
    Invalid("a zone with no country", _set("zones", "uk", "countries", []),
            "a zone must list at least one country"),
    Invalid("no promotion selector", _set("promotions", "selectors", []),
            "list at least one selector"),
    Invalid("no method listed", _route_set("accounts.api", "methods", []),
            "list at least one method"),
    Invalid("anonymizer tiers leave classes out", _set("anonymizers", "vpn",
                                                       {"service": "block"}),
            "no tier for account_creation, promotion, wind_down, neutral"),
    Invalid("anonymizers as another word", _set("anonymizers", "off"),
            "give a tier for each of the five flags"),
]


@pytest.mark.parametrize("case", INVALID, ids=[case.name for case in INVALID])
def test_invalid_policies_fail_schema_and_loader(case: Invalid) -> None:
    data = fresh()
    case.change(data)
    error = loader_says(data)
    assert error is not None and case.loader in error, error
    assert schema_says(data) is not None


def test_a_disabled_zone_is_read_no_further_by_either() -> None:
    data = fresh()
    data["zones"]["eea"] = {"enabled": False, "title": 7, "countries": "none"}
    assert (loader_says(data), schema_says(data)) == (None, None)
    data["zones"]["eea"]["members"] = ["NO"]  # its keys are still checked
    assert loader_says(data) is not None and schema_says(data) is not None


def test_a_float_is_an_integer_to_the_schema_and_not_to_the_loader() -> None:
    data = fresh()
    data["scopes"]["max_body_bytes"] = 65536.0  # YAML: a float; JSON Schema: the integer 65536
    assert schema_says(data) is None
    assert "expected an integer, got" in (loader_says(data) or "")


def test_the_schema_wants_instants_in_the_extended_form() -> None:
    data = fresh()
    data["rules"][0]["effective_from"] = "20270101T000000Z"  # ISO 8601's basic form
    assert loader_says(data) is None
    assert schema_says(data) is not None
    data["rules"][0]["effective_from"] = "2027-01-01T00:00:00Z"
    assert (loader_says(data), schema_says(data)) == (None, None)


# -- what only the loader checks ---------------------------------------------------------------


@dataclass(frozen=True)
class LoaderOnly:
    """A check the loader makes and the schema cannot state, with a policy only it refuses.
    ``doc``: the check as docs/policy.md words it."""

    key: str
    doc: str
    change: Callable[[Data], None]
    loader: str


def _append_copy_of_first_route(data: Data) -> None:
    data["routes"].append(copy.deepcopy(data["routes"][0]))


LOADER_ONLY = [
    LoaderOnly("declared-zone", "a rule names only zones declared under `zones`",
               lambda d: d["rules"][0].__setitem__("zones", ["mars"]), "unknown zone 'mars'"),
    LoaderOnly("approved-zone", "`promotions.approved` and a promotion route's `approved_for` "
               "name zones whose `promotions` is `approved_only`",
               _set("zones", "uk", "promotions", "forbidden"),
               "zone 'uk' is not 'promotions: approved_only'"),
    LoaderOnly("declared-service", "a route's `service` and `scopes.related_services` name "
               "services listed under `services`", _drop("services", "staking"),
               "unknown service 'staking'"),
    LoaderOnly("promotion-route", "`promotions.routes` names routes of class `promotion`",
               _route_set("promotions.feed", "class", "neutral"),
               "route 'promotions.feed' is class 'neutral', not 'promotion'"),
    LoaderOnly("path-parameter", "a `from: path` source names a `{parameter}` of its route's "
               "path", lambda d: route(d, "service.transfers")["asset"].__setitem__(
                   "from", "path"), "has no {asset} parameter"),
    LoaderOnly("unique-ids", "route ids are unique, and so are rule ids",
               _append_copy_of_first_route, "duplicate route id"),
    LoaderOnly("path-pattern", "a route's `path` is a pattern the router can compile",
               _route_set("accounts.api", "path", "/api/**/accounts"),
               "'**' may only be the last segment"),
    LoaderOnly("selectors", "promotion selectors are CSS selectors the safety net can run",
               _set("promotions", "selectors", ["[data-promo"]),
               "is not a selector the promotion safety net can run"),
    LoaderOnly("duration-bounds", "durations are longer than zero and at most 100 years",
               _set("audit", "retention", "P0D"), "the duration must be longer than zero"),
    LoaderOnly("duration-order", "`scopes.same_type_window` is at most `scopes.term`",
               _set("scopes", "same_type_window", "P31D"),
               "cannot be longer than the scope term"),
    LoaderOnly("duration-limits", "`promotions.evidence.window` is from PT1M to P7D and "
               "`onboarding.token_ttl` at most P7D", _set("onboarding", "token_ttl", "P8D"),
               "an onboarding token lives at most P7D"),
    LoaderOnly("instants", "effective dates are real instants, and `effective_until` comes "
               "after `effective_from`", lambda d: d["rules"][0].update(
                   effective_from="2027-02-01T00:00:00Z",
                   effective_until="2027-01-01T00:00:00Z"),
               "must be after effective_from"),
    LoaderOnly("networks", "networks and probe addresses are IP networks and addresses",
               _set("client_ip", "trusted_proxies", ["10.0.0.0/33"]),
               "is not an IP network in CIDR notation"),
    LoaderOnly("evidence-limits", "`promotions.evidence.per_visitor` is at most `per_worker`",
               _set("promotions", "evidence", "per_visitor", 2000),
               "per_visitor (2000) is more than per_worker (1000) allows"),
    LoaderOnly("json-body", "the `body` of a `format: json` promotion route is JSON",
               _set("promotions", "routes", "promotions.feed", "body", "{"), "not JSON"),
]


@pytest.mark.parametrize("check", LOADER_ONLY, ids=[check.key for check in LOADER_ONLY])
def test_the_loader_checks_more_than_the_schema(check: LoaderOnly) -> None:
    data = fresh()
    check.change(data)
    assert schema_says(data) is None
    error = loader_says(data)
    assert error is not None and check.loader in error, error


def test_the_policy_reference_lists_what_only_the_loader_checks() -> None:
    page = " ".join(POLICY_PAGE.read_text(encoding="utf-8").split())
    section = page.split("The loader checks more than the schema", 1)[1]
    missing = [check.doc for check in LOADER_ONLY if check.doc not in section]
    assert not missing, f"docs/policy.md does not list: {missing}"


# -- generated policies: the two agree ---------------------------------------------------------


def _walk(node: Data, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Data]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _at(data: Data, path: KeyPath) -> Data:
    for key in path:
        data = data[key]
    return data


def _matches(pattern: tuple[str, ...], path: KeyPath) -> bool:
    return len(pattern) == len(path) and all(p in ("*", k) for p, k in zip(pattern, path,
                                                                             strict=True))


def _values(vocabulary: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in vocabulary)


#: Where the default policy holds a value from a closed list, and the list (the loader's).
VOCABULARIES: dict[tuple[str, ...], tuple[Any, ...]] = {
    ("policy",): (0, 1, 2, 3),
    ("mode",): _values(Mode),
    ("rules", "*", "mode"): _values(Mode),
    ("rules", "*", "class"): ROUTE_CLASSES,
    ("routes", "*", "class"): ROUTE_CLASSES,
    ("unlisted", "safe"): ROUTE_CLASSES,
    ("unlisted", "unsafe"): ROUTE_CLASSES,
    ("rules", "*", "outcome"): _values(Outcome),
    ("zones", "*", "promotions"): _values(PromotionStance),
    ("zones", "*", "countries", "*"): (*sorted(ISO_COUNTRY_CODES), "UK", "EU", "XX", "gb"),
    ("client_ip", "header"): ("x-forwarded-for", "forwarded"),
    ("client_identity", "source"): ("none", "header", "scope_user", "callable"),
    ("anonymizers", "*"): _values(AnonymizerTier),
    ("anonymizers", "*", "*"): _values(AnonymizerTier),
    ("health", "*"): _values(Posture),
    ("promotions", "on_unrewritable"): _values(RouteOutcome),
    ("promotions", "routes", "*", "outcome"): _values(RouteOutcome),
    ("promotions", "routes", "*", "format"): _values(EmptyFormat),
    ("cache", "setup"): _values(CacheSetup),
    ("assets", "*", "category"): _values(Category),
    ("assets", "*", "liquidity"): _values(Liquidity),
    ("assets", "*", "peg"): ("none", "USD", "EUR", "GBP", "XAU", "usd"),
    ("scopes", "redis_checks"): REDIS_CHECKS,
    ("routes", "*", "methods", "*"): (*sorted(HTTP_METHODS), "post", "Delete", "FETCH"),
    ("routes", "*", "residence", "from"): (*DECLARATION_SOURCES, "path"),
    ("services", "*", "mica"): (*(letter for letter, _ in MICA_SERVICES.values()), "k",
                                False, True),
}
EVERY_WORD = sorted({*(w for words in VOCABULARIES.values() for w in words), "zzz"}, key=repr)
UNKNOWN_KEYS = ("zzz", "Zzz", "ZZZ", "x_1")
#: One value of each JSON type (an empty and a non-empty one of the containers).
JUNK: tuple[Data, ...] = ("zzz", 7, 1.5, True, None, [], ["zzz"], {}, {"zzz": 1})


def _kind(value: Data) -> str:
    """The JSON type of ``value``, an empty list or mapping a kind of its own."""
    return "bool" if isinstance(value, bool) else type(value).__name__ + (
        "" if not isinstance(value, list | dict) or value else "-empty")


def _named(data: Data) -> tuple[set[str], set[str], set[str], set[str]]:
    """What other parts of the policy name: zones, approved_only zones, services, and the
    route ids of ``promotions.routes``."""
    promotions = data.get("promotions", {})
    routes = promotions.get("routes", {})
    approved = set(promotions.get("approved", {})) | {
        zone for entry in routes.values() for zone in entry.get("approved_for", [])}
    zones = {zone for rule in data["rules"] for zone in rule["zones"]} | approved
    services = {r["service"] for r in data["routes"] if "service" in r}
    related = data.get("scopes", {}).get("related_services", {})
    services |= set(related) | {name for names in related.values() for name in names}
    if any("pair" in r and "service" not in r for r in data["routes"]):
        services |= {"exchange_for_funds", "exchange_for_crypto"}
    return zones, approved, services, set(routes)


ZONES_NAMED, APPROVED_ZONES, SERVICES_NAMED, PROMOTION_ROUTES = _named(BASE)
#: Mappings whose keys name zones, routes and services (the check a new key could trip).
NAMING: dict[KeyPath, str] = {("promotions", "approved"): "approved-zone",
                            ("promotions", "routes"): "promotion-route",
                            ("scopes", "related_services"): "declared-service"}


def crossing(kind: str, path: KeyPath) -> str | None:
    """The :data:`LOADER_ONLY` check a mutation of ``kind`` at ``path`` of the default policy
    could trip, or ``None`` when only the schema's own checks decide it."""
    if kind == "drop":
        if path[:1] == ("services",) and (len(path) == 1 or path[1] in SERVICES_NAMED):
            return "declared-service"
        if len(path) == 2 and path[0] == "zones" and path[1] in ZONES_NAMED - {
                UNKNOWN_COUNTRY_ZONE}:  # always declared
            return "declared-zone"
        if _matches(("zones", "*", "promotions"), path) and path[1] in APPROVED_ZONES:
            return "approved-zone"
    if kind == "add":  # these mappings' keys name zones, routes and services
        return NAMING.get(path)
    if kind == "enum":
        if _matches(("routes", "*", "class"), path) and BASE["routes"][path[1]][
                "id"] in PROMOTION_ROUTES:
            return "promotion-route"
        if _matches(("zones", "*", "promotions"), path) and path[1] in APPROVED_ZONES:
            return "approved-zone"
    return None


@dataclass(frozen=True)
class Mutation:
    kind: str  # drop | add | retype | enum
    path: KeyPath
    value: Data = None
    key: str = ""

    def applied(self) -> Data:
        data = fresh()
        if self.kind == "drop":
            del _at(data, self.path[:-1])[self.path[-1]]
        elif self.kind == "add":
            _at(data, self.path)[self.key] = self.value
        else:
            _at(data, self.path[:-1])[self.path[-1]] = self.value
        return data


NODES = [(path, node) for path, node in _walk(BASE) if path]
KEYS = [path for path, _ in NODES if isinstance(_at(BASE, path[:-1]), dict)]
DROPS = [path for path in KEYS if crossing("drop", path) is None]
MAPPINGS = [path for path, node in _walk(BASE) if isinstance(node, dict)]
ADDS = [path for path in MAPPINGS if crossing("add", path) is None]
ENUM_SITES = [(path, words) for path, node in NODES if not isinstance(node, dict | list)
              for pattern, words in VOCABULARIES.items() if _matches(pattern, path)
              if crossing("enum", path) is None]


def test_the_mutations_reach_every_part_of_the_default_policy() -> None:
    for name in BASE:  # each top-level section has keys to drop
        assert any(path[0] == name for path in DROPS), name
    reached = {pattern for pattern in VOCABULARIES
               if any(_matches(pattern, path) for path, _ in ENUM_SITES)}
    # the default policy gives no rule a mode, and every anonymizer flag a mapping
    assert set(VOCABULARIES) - reached == {("rules", "*", "mode"), ("anonymizers", "*")}


mutations = st.one_of(
    st.sampled_from(DROPS).map(lambda path: Mutation("drop", path)),
    st.builds(lambda path, key, value: Mutation("add", path, value, key),
              st.sampled_from(ADDS), st.sampled_from(UNKNOWN_KEYS), st.sampled_from(JUNK)),
    st.sampled_from(NODES).flatmap(lambda site: st.sampled_from(
        [v for v in JUNK if _kind(v) != _kind(site[1])]).map(
            lambda value: Mutation("retype", site[0], value))),
    st.sampled_from(ENUM_SITES).flatmap(lambda site: st.one_of(
        st.sampled_from(site[1]), st.sampled_from(EVERY_WORD)).map(
            lambda value: Mutation("enum", site[0], value))),
)


@settings(max_examples=150, deadline=None, database=None)
@given(mutations)
def test_schema_accepts_a_mutated_default_policy_exactly_when_the_loader_does(
    mutation: Mutation,
) -> None:
    data = mutation.applied()
    schema, loader = schema_says(data), loader_says(data)
    note(f"{mutation}\nschema: {schema}\nloader: {loader}")
    assert (schema is None) == (loader is None)


#: Every word of every closed list at one place it may stand (of the country codes, a few).
WORD_CASES = [
    (site, word) for pattern, words in VOCABULARIES.items()
    if (site := next((path for path, _ in ENUM_SITES if _matches(pattern, path)), None))
    for word in (words if len(words) < 40 else (*words[:3], *words[-4:]))
]


@pytest.mark.parametrize(("path", "word"), WORD_CASES,
                         ids=[f"{'.'.join(map(str, p))}={w}" for p, w in WORD_CASES])
def test_schema_and_loader_take_the_same_words(path: KeyPath, word: Data) -> None:
    data = Mutation("enum", path, word).applied()
    schema, loader = schema_says(data), loader_says(data)
    assert (schema is None) == (loader is None), (schema, loader)


# -- the same keys and words on both sides -----------------------------------------------------

_ALLOWED = re.compile(r"unknown key 'zzz_unknown' \(allowed: (?P<keys>[^)]*)\)")


def _errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    for error in errors:
        yield error
        yield from _errors(iter(error.context or ()))


#: Mappings whose keys are names ops choose (zones, services...), not fixed keys.
NAME_MAPS = {("zones",), ("services",), ("assets",), ("promotions", "routes"),
             ("promotions", "approved"), ("scopes", "related_services")}


def _shape(path: KeyPath) -> KeyPath:
    """``path`` with list indices and names chosen by ops as ``*``."""
    return tuple("*" if isinstance(key, int) or path[:index] in NAME_MAPS else key
                 for index, key in enumerate(path))


#: One mapping of fixed keys of each shape (the unknown_country zone has its own).
SHAPES = {_shape(path): path for path in reversed(MAPPINGS) if path not in NAME_MAPS}
SHAPES[("zones", "unknown_country")] = ("zones", "unknown_country")


@pytest.mark.parametrize("path", list(SHAPES.values()),
                         ids=[".".join(map(str, path)) or "top" for path in SHAPES.values()])
def test_schema_and_loader_allow_the_same_keys(path: KeyPath) -> None:
    """Each mapping of fixed keys: the keys the loader's error lists are the schema's."""
    data = fresh()
    _at(data, path)["zzz_unknown"] = 1
    match = _ALLOWED.search(loader_says(data) or "")
    assert match is not None, loader_says(data)
    loader_keys = set(match["keys"].split(", "))
    found = [set(error.schema["properties"]) for error in _errors(VALIDATOR.iter_errors(data))
             if error.validator == "additionalProperties" and tuple(error.absolute_path) == path]
    assert found and found[0] == loader_keys

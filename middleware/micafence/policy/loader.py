"""Load and strictly validate policy files (YAML) into :class:`~micafence.policy.model.Policy`.

Every problem raises :class:`~micafence.errors.PolicyError` naming the file, the key path and
the line (:func:`check_policy` collects them all instead). Nothing is guessed: an unknown key,
a bad CIDR, an unknown country code, a pattern that does not compile or a rule naming a zone
that does not exist all stop the load.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TypeVar

from micafence.errors import PolicyError
from micafence.location.anonymizer import default_anonymizer_rules, parse_anonymizers
from micafence.location.countries import is_country_code
from micafence.location.dbcheck import parse_database_checks
from micafence.policy.audit import parse_audit, parse_reporting
from micafence.policy.cache import DEFAULT_CACHE, parse_cache
from micafence.policy.catalogue import ROUTE_SCOPE_KEYS, declaration_source, parse_catalogue
from micafence.policy.grant_store import parse_onboarding, parse_store_settings
from micafence.policy.health import parse_health
from micafence.policy.model import (
    DEFAULT_UNLISTED,
    ROUTE_CLASSES,
    UNKNOWN_COUNTRY_ZONE,
    UNLISTED_ROUTE_ID,
    ClientIP,
    DatabaseChecks,
    IdentitySource,
    Mode,
    Outcome,
    Policy,
    PromotionStance,
    Route,
    Rule,
    Signals,
    Unlisted,
    Zone,
)
from micafence.policy.problems import Problems
from micafence.policy.promotions import DEFAULT_PROMOTIONS, parse_promotions
from micafence.policy.routes import HTTP_METHODS, compile_pattern
from micafence.policy.schedule import WINDOW_KEYS, parse_window
from micafence.policy.yamlfile import Node, parse_yaml, read_yaml

T = TypeVar("T")
#: The format versions this reads (``policy:``): 1, the most severe matching route entry
#: decides; 2, the most specific one does (:mod:`micafence.policy.routes`).
SCHEMA_VERSIONS = (1, 2)
SCHEMA_VERSION = SCHEMA_VERSIONS[-1]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_REASON = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

_TOP_KEYS = (
    "policy", "name", "mode", "blocked_by", "client_ip", "signals", "client_identity",
    "zones", "routes", "unlisted", "rules",
    "services", "assets", "scopes",  # micafence.policy.catalogue
    "anonymizers", "database",  # micafence.location.anonymizer, micafence.location.dbcheck
    "promotions", "cache",  # micafence.policy.promotions, micafence.policy.cache
    "audit", "reporting",  # micafence.policy.audit
    "onboarding",  # micafence.policy.grant_store
    "health",  # micafence.policy.health
)


def default_policy_path() -> Path:
    """The default policy shipped in the package: ``data/default-policy.yaml``
    (``policies/default.yaml`` in the repository links to it)."""
    return Path(str(resources.files("micafence") / "data" / "default-policy.yaml"))


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; the first error raises :class:`PolicyError`."""
    return read_policy(path)[0]


def read_policy(path: str | Path) -> tuple[Policy, bytes]:
    """A validated policy and the exact bytes it was built from (for the archive)."""
    root, raw = read_yaml(str(path))
    return _strict(root, raw, str(path)), raw


def check_policy(path: str | Path) -> tuple[Policy | None, list[PolicyError]]:
    """Every error found in a policy file (``micafence check``), in file order, or the policy
    when there is none. Each top-level section, zone, route and rule is checked on its own
    (:class:`~micafence.policy.problems.Problems`), so each reports its first error."""
    try:
        root, raw = read_yaml(str(path))
    except PolicyError as exc:
        return None, [exc]
    problems = Problems(collect=True)
    policy = _build(root, raw, str(path), problems)
    return (None, problems.ordered()) if problems.found else (policy, [])


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text (for tests and tools that hold the text already)."""
    return _strict(parse_yaml(text, source), text.encode("utf-8"), source)


def policy_revision(raw: bytes) -> str:
    """The revision id of a policy: a content hash, so equal files share a revision."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def _strict(root: Node, raw: bytes, source: str) -> Policy:
    policy = _build(root, raw, source, Problems())
    assert policy is not None  # a strict load raises its first error
    return policy


def _build(root: Node, raw: bytes, source: str, problems: Problems) -> Policy | None:
    """The policy, or ``None`` when ``problems`` (collecting) holds an error."""
    top = problems.attempt(
        partial(root.mapping, _TOP_KEYS, ("policy", "zones", "routes", "rules"), problems), None
    )
    if top is None:
        return None

    def section(key: str, parse: Callable[[Node], T], default: T) -> T:
        return problems.attempt(partial(parse, top[key]), default) if key in top else default

    version = 1
    if "policy" in top:
        failed = len(problems.found)
        version = problems.attempt(partial(_schema_version, top["policy"]), 0)
        if len(problems.found) > failed:
            return None  # another schema's file: checking its keys would report nonsense
    signals = section("signals", _signals, Signals())
    failed = len(problems.found)
    no_zones: tuple[Zone, ...] = ()
    zones = section("zones", partial(_zones, problems=problems), no_zones)
    zones_failed = len(problems.found) > failed
    known_zones = {z.name for z in zones} | {UNKNOWN_COUNTRY_ZONE}
    failed = len(problems.found)
    no_routes: tuple[Route, ...] = ()
    routes = section("routes", partial(_routes, problems=problems), no_routes)
    routes_failed = len(problems.found) > failed
    declared = section("zones", _zone_names, None)
    rules: tuple[Rule, ...] = ()
    if declared is not None:  # else each rule's zones would be "unknown"
        rules = section("rules", partial(_rules, known_zones=known_zones, declared=declared,
                                         problems=problems), ())
    unlisted = section("unlisted", _unlisted, DEFAULT_UNLISTED)
    name = section("name", Node.text, Path(source).stem)
    mode = section("mode", _mode, Mode.ENFORCE)
    blocked_by = section("blocked_by", Node.text, None)
    client_ip = section("client_ip", _client_ip, ClientIP())
    client_identity = section("client_identity", _client_identity, IdentitySource())
    catalogue = problems.attempt(partial(parse_catalogue, top), parse_catalogue({}))
    anonymizers = section("anonymizers", parse_anonymizers, default_anonymizer_rules())
    database = section("database", parse_database_checks, DatabaseChecks())
    promotions = DEFAULT_PROMOTIONS
    if not (zones_failed or routes_failed):  # it names zones and routes
        promotions = problems.attempt(partial(
            parse_promotions, top.get("promotions"),
            {zone.name: zone.promotions for zone in zones},
            {route.id: route.route_class for route in routes},
        ), DEFAULT_PROMOTIONS)
    cache = section("cache", partial(parse_cache, client_ip=top.get("client_ip")), DEFAULT_CACHE)
    audit = problems.attempt(partial(parse_audit, top), parse_audit({}))
    reporting = problems.attempt(partial(parse_reporting, top), parse_reporting({}))
    grant_store = problems.attempt(partial(parse_store_settings, top), parse_store_settings({}))
    onboarding = problems.attempt(partial(parse_onboarding, top), parse_onboarding({}))
    health = problems.attempt(partial(parse_health, top), parse_health({}))
    if problems.found:
        return None
    return Policy(
        name=name,
        revision=policy_revision(raw),
        source=source,
        mode=mode,
        zones=zones,
        routes=routes,
        rules=rules,
        signals=signals,
        client_ip=client_ip,
        client_identity=client_identity,
        blocked_by=blocked_by,
        catalogue=catalogue,
        anonymizers=anonymizers,
        database=database,
        promotions=promotions,
        cache=cache,
        audit=audit,
        reporting=reporting,
        grant_store=grant_store,
        onboarding=onboarding,
        health=health,
        version=version,
        unlisted=unlisted,
    )


def _schema_version(node: Node) -> int:
    version = node.integer()
    if version not in SCHEMA_VERSIONS:
        node.fail(f"unsupported schema version {version} (this reads "
                  f"{' and '.join(map(str, SCHEMA_VERSIONS))})")
    return version


def _unlisted(node: Node) -> Unlisted:
    """``unlisted: {safe: CLASS, unsafe: CLASS}``: the class of a request no route entry
    names, by its method (GET, HEAD, OPTIONS are safe); each key defaults to neutral."""
    fields = node.mapping(("safe", "unsafe"))
    classes = {key: value.choice(ROUTE_CLASSES) for key, value in fields.items()}
    return Unlisted(**classes)


def _mode(node: Node) -> Mode:
    return Mode(node.choice(list(Mode)))


def _zone_names(node: Node) -> set[str]:
    return {name for name, _ in node.dict_items()} | {UNKNOWN_COUNTRY_ZONE}


def _zones(node: Node, problems: Problems) -> tuple[Zone, ...]:
    zones: list[Zone] = []
    for name, zone_node in node.dict_items():
        zone = problems.attempt(partial(_zone, name, zone_node), None)
        if zone is not None:  # None: disabled (or, when collecting, in error)
            zones.append(zone)
    if UNKNOWN_COUNTRY_ZONE not in {z.name for z in zones}:
        zones.append(Zone(UNKNOWN_COUNTRY_ZONE, "country unknown", frozenset(),
                          PromotionStance.FORBIDDEN))
    return tuple(zones)


def _zone(name: str, zone_node: Node) -> Zone | None:
    if not _NAME.fullmatch(name):
        zone_node.fail(f"zone name {name!r} must be lower-case letters, digits and _")
    fields = zone_node.mapping(("title", "countries", "promotions", "enabled", *WINDOW_KEYS))
    if "enabled" in fields and not fields["enabled"].flag():
        if name == UNKNOWN_COUNTRY_ZONE:
            fields["enabled"].fail(
                "the unknown_country zone cannot be disabled (remove its rules instead)"
            )
        return None
    countries: set[str] = set()
    if name == UNKNOWN_COUNTRY_ZONE:
        if "countries" in fields:
            fields["countries"].fail("the unknown_country zone cannot list countries")
        for key in WINDOW_KEYS:
            if key in fields:  # failing closed for unknown countries is never switched off
                fields[key].fail(f"the unknown_country zone cannot have {key}")
    else:
        if "countries" not in fields:
            zone_node.fail("missing required key 'countries'")
        for item in fields["countries"].items():
            code = item.text()
            if not is_country_code(code):
                item.fail(f"{code!r} is not an ISO 3166-1 alpha-2 country code")
            if code in countries:
                item.fail(f"{code} is listed twice in zone {name!r}")
            countries.add(code)
        if not countries:
            fields["countries"].fail("a zone must list at least one country")
    stance = PromotionStance.FORBIDDEN
    if "promotions" in fields:
        stance = PromotionStance(fields["promotions"].choice(list(PromotionStance)))
    title = fields["title"].text() if "title" in fields else name
    return Zone(name, title, frozenset(countries), stance, *parse_window(fields))


def _routes(node: Node, problems: Problems) -> tuple[Route, ...]:
    seen: set[str] = set()
    routes = (problems.attempt(partial(_route, item, seen), None) for item in node.items())
    return tuple(route for route in routes if route is not None)


def _route(item: Node, seen: set[str]) -> Route:
    fields = item.mapping(
        ("id", "class", "path", "methods", "residence", *ROUTE_SCOPE_KEYS),
        required=("id", "class", "path"),
    )
    route_id = fields["id"].text(_ID, "a route id (letters, digits, _ . : -)")
    if route_id in seen:
        fields["id"].fail(f"duplicate route id {route_id!r}")
    if route_id == UNLISTED_ROUTE_ID:
        fields["id"].fail(f"{UNLISTED_ROUTE_ID!r} names what no route lists (the `unlisted` "
                          "default): choose another id")
    seen.add(route_id)
    route_class = fields["class"].choice(ROUTE_CLASSES)
    path = fields["path"].text()
    try:
        compile_pattern(path)
    except (ValueError, re.error) as exc:
        fields["path"].fail(f"bad path pattern {path!r}: {exc}")
    methods: frozenset[str] | None = None
    if "methods" in fields:
        names = set()
        for method_node in fields["methods"].items():
            method = method_node.text().upper()
            if method not in HTTP_METHODS:
                method_node.fail(f"unknown HTTP method {method_node.value!r}")
            names.add(method)
        if not names:
            fields["methods"].fail("list at least one method (omit the key for any method)")
        methods = frozenset(names)
    residence = None
    if "residence" in fields:
        if route_class != "account_creation":
            fields["residence"].fail("only an account_creation route declares a residence")
        residence = declaration_source(fields["residence"], path)
    return Route(route_id, route_class, path, methods, residence, line=item.line)


def _rules(
    node: Node, known_zones: set[str], declared: set[str], problems: Problems
) -> tuple[Rule, ...]:
    seen: set[str] = set()
    rules = (
        problems.attempt(partial(_rule, item, known_zones, declared, seen), None)
        for item in node.items()
    )
    return tuple(rule for rule in rules if rule is not None)


def _rule(item: Node, known_zones: set[str], declared: set[str], seen: set[str]) -> Rule:
    fields = item.mapping(
        ("id", "zones", "class", "outcome", "mode", "reason", *WINDOW_KEYS),
        required=("id", "zones", "class", "outcome"),
    )
    rule_id = fields["id"].text(_ID, "a rule id (letters, digits, _ . : -)")
    if rule_id in seen:
        fields["id"].fail(f"duplicate rule id {rule_id!r}")
    seen.add(rule_id)
    effective_from, effective_until = parse_window(fields)
    zone_names: set[str] = set()
    for zone_node in fields["zones"].items():
        zone = zone_node.text()
        if zone not in declared:
            zone_node.fail(f"unknown zone {zone!r} (declared: {', '.join(sorted(declared))})")
        if zone in known_zones:  # a disabled zone's rules simply never apply
            zone_names.add(zone)
    return Rule(
        id=rule_id,
        zones=frozenset(zone_names),
        route_class=fields["class"].choice(ROUTE_CLASSES),
        outcome=Outcome(fields["outcome"].choice(list(Outcome))),
        mode=Mode(fields["mode"].choice(list(Mode))) if "mode" in fields else None,
        reason=(
            fields["reason"].text(_REASON, "a reason code like 'eu.account_creation'")
            if "reason" in fields else None
        ),
        effective_from=effective_from,
        effective_until=effective_until,
    )


def _signals(node: Node) -> Signals:
    fields = node.mapping(("country", "registered_country", "residence"))
    signals = Signals(**{key: value.flag() for key, value in fields.items()})
    if not (signals.country or signals.registered_country):
        node.fail("at least one of country and registered_country must count")
    return signals


def _client_ip(node: Node) -> ClientIP:
    fields = node.mapping(("trusted_proxies", "header"))
    proxies = _networks(fields["trusted_proxies"]) if "trusted_proxies" in fields else ()
    header = "x-forwarded-for"
    if "header" in fields:
        header = fields["header"].choice(("x-forwarded-for", "forwarded"))
    return ClientIP(proxies, header)


def _networks(node: Node) -> tuple[str, ...]:
    networks: list[str] = []
    for item in node.items():
        text = item.text()
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            item.fail(f"{text!r} is not an IP network in CIDR notation")
    return tuple(networks)


def _client_identity(node: Node) -> IdentitySource:
    fields = node.mapping(("source", "header", "residence_header", "trusted_sources"))
    source = fields["source"].choice(("none", "header", "scope_user", "callable")) \
        if "source" in fields else "none"
    header = fields["header"].text(_HEADER, "an HTTP header name").lower() \
        if "header" in fields else "x-client-id"
    residence = fields["residence_header"].text(_HEADER, "an HTTP header name").lower() \
        if "residence_header" in fields else None
    sources = _networks(fields["trusted_sources"]) if "trusted_sources" in fields else ()
    if source == "header" and not sources:
        # Without the list no identity header would ever be believed: wind-down clients
        # refused, grants unusable. Say so now rather than fail every signed-in client.
        gateway = f"list the network of the auth gateway that sets {header}: identity " \
            "headers are believed from it only, not from every trusted proxy"
        if "trusted_sources" in fields:
            fields["trusted_sources"].fail(f"source 'header' needs at least one network; {gateway}")
        fields["source"].fail(f"source 'header' needs client_identity.trusted_sources; {gateway}")
    return IdentitySource(source, header, residence, sources)

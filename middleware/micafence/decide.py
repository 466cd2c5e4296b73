"""From an ASGI scope to a :class:`~micafence.decision.Decision`: the pure first step of the
request pipeline (:mod:`micafence.pipeline`), which the middleware, ``micafence explain`` and
``micafence test`` all run, so what ops see from the command line is what the site does.

Signals (client address, edge country, identity) -> zones -> route class -> the rule's verdict,
and the reason it gives (:mod:`micafence.reasons`); a promotion ops approved for an
``approved_only`` zone passes here. What depends on the store (grants, onboarding tokens) is
settled by the pipeline. Everything that depends only on the policy
is computed in ``__init__``; per request there are dictionary look-ups, and route matching only
for visitors some rule applies to.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from micafence.asgi import Scope
from micafence.caches import BoundedCache
from micafence.clients.declarations import UNREADABLE
from micafence.decision import DEFAULT_RULE_ID, Decision
from micafence.identity import (
    NO_IDENTITY,
    UNREADABLE_IDENTITY,
    ClientIdentity,
    IdentifyFunction,
    clean_country,
    from_scope_user,
    read_client_id,
    unreadable_country,
)
from micafence.instants import utc_now
from micafence.live.breakglass import NO_BREAKGLASS, BreakGlass
from micafence.location.anonymizer import NO_FLAGS, AnonymizerScreen, AnonymousIPDatabase
from micafence.location.client_ip import (
    TrustedProxies,
    leads_with,
    located_address,
    names_itself,
    parse_ip,
    reached_from,
    resolve_client_ip,
)
from micafence.location.edge import edge_location
from micafence.location.geo import UNKNOWN_LOCATION, GeoIPDatabase, Location
from micafence.location.rewrite_alarm import ClientRewriteAlarm, forwarded_header_in
from micafence.policy.catalogue import Source
from micafence.policy.model import (
    UNKNOWN_COUNTRY_ZONE,
    Mode,
    Outcome,
    Policy,
    PromotionStance,
    Rule,
)
from micafence.policy.routes import (
    HTTP_METHODS,
    METHOD_OVERRIDE_HEADERS,
    PATH_KEY_CHARS,
    RouteTable,
    may_override_method,
    path_key,
    request_methods,
    route_paths,
)
from micafence.policy.schedule import next_boundary, rules_in_force, zones_in_force
from micafence.promotions.guard import PromotionGuard
from micafence.reasons import (
    CLASS_REASONS,
    PASS_CODE,
    Reason,
    RouteClass,
    reason_code,
    unidentified_code,
)
from micafence.records import NO_STANDING, Standing

_STANCE_ORDER = (PromotionStance.ALLOWED, PromotionStance.APPROVED_ONLY, PromotionStance.FORBIDDEN)
_CACHE_LIMIT = 4096
_NO_CLIENT = (None, None)  # a scope without "client"
_AMBIGUOUS = b""  # a repeated edge country header with different values: read as none
# A client id header sent twice with different values: the app reads one of them, micafence
# cannot tell which (never a header value: servers refuse NUL).
_AMBIGUOUS_ID = b"\0"
# The decision cache: one entry per visitor, and for a restricted visitor a table of its
# decisions per request line. Every decision held counts a fixed cost (dict slot, key tuple, a
# Decision and its own strings: 330-430 bytes measured with tracemalloc) plus the text its key
# holds, so the byte ceiling bounds the route entries of all visitors together as well.
VISITOR_CACHE_ENTRIES = 65536
VISITOR_CACHE_BYTES = 24 * 1024 * 1024
ROUTES_PER_VISITOR = 256
# What raw signal headers resolved to (the client writes the left of X-Forwarded-For, so a
# flood makes this memo start over often; the decision cache is keyed by what it resolved to).
RESOLVED_CACHE_ENTRIES = 65536
RESOLVED_CACHE_BYTES = 6 * 1024 * 1024
_ENTRY_BYTES = 384
_OVERRIDES = frozenset(METHOD_OVERRIDE_HEADERS)
_X_FORWARDED_FOR = b"x-forwarded-for"  # the header uvicorn takes a client address from
_DECLARING_METHODS = frozenset({"POST", "PUT", "PATCH"})  # a sign-up that may declare a residence
_SIGN_UP_PATHS_BYTES = 1024 * 1024
# An identity micafence cannot use (id; residence, when counted): the signals they put in the
# unknown country, keyed by (id unreadable, residence unreadable).
_UNREADABLE_SIGNALS: dict[tuple[bool, bool], tuple[str, ...]] = {
    (False, False): (), (True, False): ("identity:unreadable",),
    (False, True): ("residence:unreadable",),
    (True, True): ("identity:unreadable", "residence:unreadable"),
}

Header = tuple[bytes, bytes]
#: The identity signals a trusted source sent: the client id header, the residence headers.
IdentitySignals = tuple[bytes | None, tuple[bytes, ...]]
#: What a visitor is decided on, in full: the client address (the peer's, or the one resolved
#: from the forwarded header), the edge country and identity signals trusted from the peer, and
#: the identity the host supplied (``scope["user"]``, ``identify=``), and whether the address
#: is in doubt (it may have been taken from a header the client wrote: the unknown country too).
VisitorSignals = tuple[
    str | None, bytes | None, IdentitySignals | None, ClientIdentity | None, bool]
#: A visitor as the cache keys it: the address alone when nothing else was sent (the common
#: case: a string hashes once and for all), else the full :data:`VisitorSignals`.
Visitor = str | None | VisitorSignals


class KnownVisitor(NamedTuple):
    """A visitor with what the pipeline found beyond its headers: the identified client's
    standing in the registry, the residence its sign-up declares. A cache key of its own."""

    visitor: Visitor
    standing: Standing
    declared: str | None


#: What the decision cache is keyed by.
VisitorKey = Visitor | KnownVisitor
#: What a restricted visitor's request is matched on: its method (or every method it may be
#: handled as, when it carries an override), its path (long ones as a digest), its root_path.
RouteKey = tuple[object, object, object]


@dataclass(frozen=True, slots=True)
class _Profile:
    """What the policy says of a visitor with given location signals (cached per signal set)."""

    zones: tuple[str, ...]
    restricted: bool
    stance: PromotionStance
    signals: tuple[str, ...]  # the signals that put the visitor in its zones (Decision.signals)


@dataclass(frozen=True, slots=True)
class _Verdict:
    outcome: Outcome
    rule: Rule | None
    zone: str | None


_NO_VERDICT = _Verdict(Outcome.ALLOW, None, None)
_NEUTRAL = RouteClass.NEUTRAL
_PROMOTION = RouteClass.PROMOTION
_UNRESTRICTED: tuple[_Verdict, str | None, RouteClass] = (_NO_VERDICT, None, _NEUTRAL)


class Enforcer:
    """Decides requests against one policy and one GeoIP database.

    ``anonymizer`` is an optional Anonymous-IP database; ``breakglass`` the switches on;
    ``clock`` says what time it is (UTC-aware), for effective dates: the zones and rules in
    force are rebuilt, and every cached decision dropped, when the clock passes the next
    ``effective_from`` / ``effective_until`` of the policy. ``rewrite_alarm`` is tripped by a
    request whose client address the server rewrote (:mod:`micafence.location.rewrite_alarm`);
    the middleware passes the one it holds, so a reload keeps it.
    """

    # Slots, not a __dict__: CPython 3.11 stops sharing instance dict keys past 30 attributes,
    # and every attribute read on the request path then costs more (~40 ns per decision,
    # measured). Slots keep those reads fast however many attributes the class grows.
    __slots__ = (
        "_breakglass_tag",
        "_country_zones",
        "_declaring",
        "_edge_header",
        "_forwarded_header",
        "_grant_zones",
        "_id_header",
        "_identify",
        "_identity_sources",
        "_next_change",
        "_profiles",
        "_residence_header",
        "_resolved",
        "_restricted_zones",
        "_rules_by_class",
        "_screen",
        "_sign_up_paths",
        "_sign_ups",
        "_signal_headers",
        "_stances",
        "_supplies",
        "_timestamp",
        "_trusted",
        "_verdicts",
        "_visitors",
        "_zone_order",
        "anonymizer",
        "breakglass",
        "clock",
        "geoip",
        "in_force_at",
        "next_change",
        "policy",
        "promotions",
        "rewrite_alarm",
        "routes",
    )

    def __init__(
        self,
        policy: Policy,
        geoip: GeoIPDatabase,
        *,
        identify: IdentifyFunction | None = None,
        anonymizer: AnonymousIPDatabase | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        breakglass: BreakGlass = NO_BREAKGLASS,
        rewrite_alarm: ClientRewriteAlarm | None = None,
    ) -> None:
        if policy.client_identity.source == "callable" and identify is None:
            raise ValueError(
                f"{policy.source}: client_identity.source is 'callable' but no identify= "
                "function was given to the middleware"
            )
        self.policy = policy
        self.geoip = geoip
        self.anonymizer = anonymizer
        self.breakglass = breakglass
        self.clock = clock or utc_now
        # The hot path compares floats; only a policy with dates ahead makes it read the clock.
        self._timestamp: Callable[[], float] = (
            time.time if clock is None else (lambda: self.clock().timestamp())
        )
        self._screen = AnonymizerScreen(policy.anonymizers, anonymizer, breakglass.shadow_rules)
        self._breakglass_tag = breakglass.tag
        self._identify = identify
        self._supplies = policy.client_identity.source in ("scope_user", "callable")
        self.rewrite_alarm = rewrite_alarm or ClientRewriteAlarm()
        self._trusted = TrustedProxies(policy.client_ip.trusted_proxies)
        self._forwarded_header = policy.client_ip.header.encode("latin-1")
        identity = policy.client_identity
        # Identity headers are the auth gateway's word: trusted only from it (see reached_from).
        self._identity_sources = TrustedProxies(identity.trusted_sources)
        self._id_header = identity.header.encode("latin-1") if identity.source == "header" else None
        self._residence_header = (
            identity.residence_header.encode("latin-1")
            if identity.source == "header" and identity.residence_header
            else None
        )
        self.routes = RouteTable(policy.routes, policy.version, policy.unlisted)
        # Account-creation routes that read a declared residence: matched for every visitor.
        declaring = tuple(route for route in policy.routes if route.residence is not None)
        sign_ups = RouteTable(route for route in policy.routes
                              if route.route_class == RouteClass.ACCOUNT_CREATION)
        self._sign_ups = (sign_ups, sign_ups.named(HTTP_METHODS))
        # Path (and root_path) -> does an account-creation route match it under any method: the
        # one look-up every request not blocked pays for sign-up declarations and tokens.
        self._sign_up_paths: BoundedCache[object, bool] = BoundedCache(
            _CACHE_LIMIT, _SIGN_UP_PATHS_BYTES)
        self._declaring = None
        if declaring:
            table = RouteTable(declaring)
            self._declaring = (table, table.named(HTTP_METHODS),
                               {r.id: r.residence for r in declaring})
        self.promotions = PromotionGuard(policy)  # promotion suppression and cache safety
        edge = policy.cache.edge_country_header  # set-up "edge": the CDN's country is the location
        self._edge_header = edge.encode("latin-1") if edge else None
        self._profiles: BoundedCache[
            tuple[str | None, str | None, str | None, tuple[str, ...], bool, Standing,
                  str | None, tuple[str, ...]], _Profile
        ] = BoundedCache(_CACHE_LIMIT)
        self._verdicts: dict[tuple[tuple[str, ...], str, tuple[str, ...]], _Verdict] = {}
        self._visitors: BoundedCache[VisitorKey, Decision | dict[RouteKey, Decision]] = (
            BoundedCache(VISITOR_CACHE_ENTRIES, VISITOR_CACHE_BYTES))
        self._resolved: BoundedCache[object, str | VisitorSignals] = BoundedCache(
            RESOLVED_CACHE_ENTRIES, RESOLVED_CACHE_BYTES)
        self._activate(self.clock())
        # Every header a decision can depend on; the rest never enter cache keys.
        # X-Forwarded-For is one even when the policy reads `forwarded`: a client address
        # uvicorn took from it is told by it (_visitor).
        self._signal_headers = frozenset(
            name for name in (self._forwarded_header, self._id_header, self._residence_header,
                              self._edge_header, _X_FORWARDED_FOR, *METHOD_OVERRIDE_HEADERS)
            if name is not None
        )

    def _activate(self, at: dt.datetime) -> None:
        """Build the tables of the zones and rules in force at ``at``; forget every decision."""
        zones = zones_in_force(self.policy, at)
        rules = self.breakglass.apply(rules_in_force(self.policy, at))
        self._country_zones: dict[str, tuple[str, ...]] = {}
        for zone in zones:
            for country in zone.countries:
                self._country_zones[country] = (*self._country_zones.get(country, ()), zone.name)
        self._zone_order = {zone.name: index for index, zone in enumerate(zones)}
        self._stances = {zone.name: zone.promotions for zone in zones}
        self._restricted_zones = frozenset(z for rule in rules for z in rule.zones)
        # Where a grant recorded without a country puts its holder: every zone whose services
        # need a grant.
        self._grant_zones = tuple(sorted(
            {z for rule in rules if rule.outcome is Outcome.REQUIRE_GRANT for z in rule.zones
             if z in self._zone_order}, key=self._zone_order.__getitem__))
        self._rules_by_class: dict[str, tuple[Rule, ...]] = {}
        for rule in rules:
            self._rules_by_class[rule.route_class] = (
                *self._rules_by_class.get(rule.route_class, ()), rule
            )
        for cache in (self._profiles, self._verdicts, self._visitors, self._resolved):
            cache.clear()
        self.in_force_at = at
        self.next_change = next_boundary(self.policy, at)
        self._next_change = self.next_change.timestamp() if self.next_change else None

    # -- per request -------------------------------------------------------------------------

    def decide(
        self, scope: Scope, standing: Standing = NO_STANDING, declared: str | None = None
    ) -> Decision:
        """Decide one ``http`` or ``websocket`` scope. Never raises for request content.

        ``standing`` is what the client registry says of the identified client, ``declared``
        the residence its sign-up declares (a country, or ``"unreadable"``): the pipeline finds
        both (:mod:`micafence.pipeline`) and decides again with them when they say anything."""
        change = self._next_change
        if change is not None and self._timestamp() >= change:
            self._activate(self.clock())
        wanted = self._signal_headers
        signals: list[Header] | None = None
        overrides: list[Header] | None = None
        for header in scope.get("headers") or ():
            if header[0] in wanted:
                if header[0] in _OVERRIDES:
                    if overrides is None:
                        overrides = []
                    overrides.append(header)
                else:
                    if signals is None:
                        signals = []
                    signals.append(header)
        client = scope.get("client") or _NO_CLIENT
        peer = client[0]
        if not isinstance(peer, str):
            peer = None
        elif client[1] == 0:  # no TCP peer has port 0: a rewritten client?
            rewritten_from = forwarded_header_in(scope.get("headers") or ())
            if rewritten_from is not None:
                self.rewrite_alarm.trip(rewritten_from)
                peer = None  # who connected is unknown: decided as an unknown address
        # The host's identity (scope["user"], identify=): a call only when the policy asks.
        supplied = self._supplied_identity(scope) if self._supplies else None
        # Decisions are cached per visitor, keyed only by what decides (never by header text a
        # client writes, such as the left of X-Forwarded-For). A visitor no rule applies to gets
        # the same decision whatever the route, so the entry is that decision: the common case
        # costs one dictionary look-up. A restricted visitor's decisions depend on the route:
        # they are cached per visitor and request line.
        visitor: VisitorKey
        if signals is None:
            visitor = peer if supplied is None else (peer, None, None, supplied, False)
        else:
            # What the signal headers resolve to, memoised per header set: a bounded memo of a
            # pure function, so a client varying its part of the text (the left of
            # X-Forwarded-For) only churns this memo, never the decisions.
            raw: object = (peer, tuple(signals), supplied)
            try:
                resolved = self._resolved.get(raw)
            except TypeError:  # header pairs given as lists (ASGI allows it): not memoised
                resolved, raw = None, None
            if resolved is None:
                resolved = self._visitor(peer, signals, supplied)
                if raw is not None:
                    self._resolved.put(raw, resolved, _ENTRY_BYTES + _signal_bytes(signals))
            visitor = resolved
        if standing is not NO_STANDING or declared is not None:
            visitor = KnownVisitor(visitor, standing, declared)
        entry = self._visitors.get(visitor)
        if type(entry) is Decision:  # one test for "held, and not a table": the cheapest
            return entry
        # Not a Decision: a restricted visitor's table, or nothing (mypy cannot narrow by type()).
        routes: dict[RouteKey, Decision] | None = entry  # type: ignore[assignment]
        path = scope.get("path")
        query = scope.get("query_string")
        if overrides is None and not (query and may_override_method(query)) and not (
            path.__class__ is str and len(path) > PATH_KEY_CHARS
        ):
            route: RouteKey = (scope.get("method"), path, scope.get("root_path"))
        else:
            route = self._route_key(scope, overrides)
        if routes is not None:
            cached = routes.get(route)
            if cached is not None:
                return cached
        decision = self._decide(scope, visitor, overrides)
        self._remember(visitor, routes, route, decision)
        return decision

    def _remember(
        self, visitor: VisitorKey, entry: dict[RouteKey, Decision] | None, route: RouteKey,
        decision: Decision,
    ) -> None:
        """Cache ``decision``: as the visitor's entry, or (restricted) under its request line.

        A restricted visitor's entry is a table of at most ``ROUTES_PER_VISITOR`` decisions;
        each one added counts its bytes against the visitors' byte ceiling, so route entries
        of every visitor together stay under it."""
        size = _ENTRY_BYTES + _visitor_bytes(visitor)
        if not decision.restricted:
            self._visitors.put(visitor, decision, size)
            return
        routes = entry if entry is not None and len(entry) < ROUTES_PER_VISITOR else {}
        routes[route] = decision
        size += _route_bytes(route)
        if not self._visitors.put(visitor, routes, size) and len(routes) > 1:
            # The table started over: this visitor's earlier decisions would go uncounted.
            self._visitors.put(visitor, {route: decision}, size)

    def _visitor(
        self, peer: str | None, signals: list[Header], supplied: ClientIdentity | None
    ) -> str | VisitorSignals:
        """What decides about a request that carries signal headers: see :data:`Visitor`
        (never ``None``: a memo cannot hold it)."""
        forwarded: list[str] | None = None
        unread_x_forwarded_for: list[str] | None = None  # the policy reads `forwarded`
        id_value: bytes | None = None
        residences: list[bytes] | None = None
        edge_value: bytes | None = None
        for name, value in signals:
            # A signal header sent twice with different values is ambiguous: frameworks differ
            # on which one they read, so it counts as no edge country, and as an identity that
            # cannot be read (the app may take either client for the signed-in one).
            if name == self._forwarded_header:
                if forwarded is None:
                    forwarded = []
                forwarded.append(value.decode("latin-1"))
            elif name == _X_FORWARDED_FOR:
                if unread_x_forwarded_for is None:
                    unread_x_forwarded_for = []
                unread_x_forwarded_for.append(value.decode("latin-1"))
            elif name == self._edge_header:
                edge_value = value if edge_value is None or edge_value == value else _AMBIGUOUS
            elif name == self._id_header:
                id_value = value if id_value is None or id_value == value else _AMBIGUOUS_ID
            elif name == self._residence_header:
                if residences is None:
                    residences = []
                residences.append(value)
        x_forwarded_for = (forwarded if self._forwarded_header == _X_FORWARDED_FOR
                           else unread_x_forwarded_for)
        doubtful = False
        if x_forwarded_for and peer is not None:
            if peer in self._trusted:
                if leads_with(peer, x_forwarded_for):
                    # With '*', uvicorn takes the left-most entry, which the client writes, with
                    # its port: a trusted proxy written there ("10.0.0.1:5, <address>") would let
                    # the client's own entries decide. Who connected is unknown.
                    peer = None
            elif names_itself(peer, x_forwarded_for, "x-forwarded-for"):
                # Either a direct client wrote its own address (the peer is real), or a server
                # took the peer from this header (uvicorn keeps the entry's port, so the port-0
                # mark misses "[addr]:443"). Both readings count: the address's zones, and the
                # unknown country's. Not an alarm: a direct client can write its own address.
                doubtful = True
        address = peer
        if forwarded is not None and self._trusted:
            address = resolve_client_ip(peer, forwarded, self._trusted,
                                        self.policy.client_ip.header)
        if edge_value is not None and peer not in self._trusted:
            edge_value = None  # the cache keys on the edge's country: only the edge's counts
        identity = self._identity_signals(peer, forwarded, id_value, residences)
        if (address is not None and edge_value is None and identity is None and supplied is None
                and not doubtful):
            return address
        return (address, edge_value, identity, supplied, doubtful)

    def _route_key(self, scope: Scope, overrides: list[Header] | None) -> RouteKey:
        """What decides the route of a restricted visitor's request: see :data:`RouteKey`."""
        method: object = scope.get("method")
        query = scope.get("query_string") or b""
        if overrides is not None or may_override_method(query):
            method = self.routes.named(
                request_methods(str(method or "GET"), overrides or (), query))
        path = scope.get("path")
        if isinstance(path, str) and len(path) > PATH_KEY_CHARS:
            return (method, path_key(path), scope.get("root_path"))
        return (method, path, scope.get("root_path"))

    def _decide(
        self, scope: Scope, visitor: VisitorKey, overrides: Sequence[Header] | None
    ) -> Decision:
        """Signals -> zones -> route class -> verdict: what a visitor's request gets."""
        standing, declared = NO_STANDING, None
        if isinstance(visitor, KnownVisitor):
            visitor, standing, declared = visitor
        if isinstance(visitor, tuple):
            address, edge_value, identity_signals, supplied, doubtful = visitor
        else:
            address, edge_value, identity_signals, supplied, doubtful = (
                visitor, None, None, None, False)
        ip = parse_ip(address) if address is not None else None
        located = located_address(ip) if ip is not None else None  # Teredo: its client's IPv4
        location = self.geoip.lookup(located) if located is not None else UNKNOWN_LOCATION
        if self._edge_header is not None:  # the cache keys on the edge's country: so must we
            location = edge_location(edge_value)
        flags = self._screen.flags(located) if located is not None else NO_FLAGS

        identity = supplied or self._header_identity(identity_signals)
        counts_residence = self.policy.signals.residence
        residence = identity.residence_country if counts_residence else None
        unreadable = _UNREADABLE_SIGNALS[
            identity.unreadable, counts_residence and identity.residence_unreadable]
        profile = self._profile(location, residence, flags, doubtful, standing, declared,
                                unreadable)
        verdict, route_id, route_class = (
            self._route(scope, overrides, profile.zones, flags) if profile.restricted
            else _UNRESTRICTED)
        outcome, rule, zone = verdict.outcome, verdict.rule, verdict.zone
        code, kind = PASS_CODE, Reason.PASS
        if rule is not None:
            kind = CLASS_REASONS[route_class]
            code = rule.reason or reason_code(zone, kind)
        if outcome is Outcome.ALLOW_IDENTIFIED:
            if identity.client_id is not None:
                outcome = Outcome.ALLOW
            else:
                outcome, code, kind = Outcome.BLOCK, unidentified_code(code), Reason.UNIDENTIFIED
        mode = (rule.mode if rule is not None and rule.mode else None) or self.policy.mode
        stance = profile.stance
        if flags and self._screen.suppresses(flags, route_class):
            stance = PromotionStance.FORBIDDEN
        if outcome is Outcome.BLOCK and route_class is _PROMOTION \
                and stance is PromotionStance.APPROVED_ONLY:
            approved_in = self.promotions.approved_in(route_id, profile.zones)
            if approved_in is not None:  # ops approved this promotion for the visitor's zones
                outcome, kind = Outcome.ALLOW, Reason.PROMOTION_APPROVED
                code = reason_code(approved_in, kind)
        return Decision(
            outcome=outcome,
            blocked=outcome is Outcome.BLOCK and mode is Mode.ENFORCE,
            reason=code,
            kind=kind,
            rule_id=rule.id if rule is not None else DEFAULT_RULE_ID,
            mode=mode,
            route_id=route_id,
            route_class=route_class,
            zone=zone,
            zones=profile.zones,
            restricted=profile.restricted,
            promotion_stance=stance,
            country=location.country,
            registered_country=location.registered_country,
            residence_country=identity.residence_country,
            client_ip=ip,
            client_id=identity.client_id,
            policy_revision=self.policy.revision,
            database_build=self.geoip.build_epoch,
            anonymizer=flags,
            breakglass=self._breakglass_tag,
            signals=profile.signals,
        )

    def declaration(self, scope: Scope) -> Source | None:
        """Where this request declares a residence: the ``residence:`` of the account-creation
        route it matches (:mod:`micafence.clients.declarations`), for every visitor. Only a
        request that may carry a body (``POST``, ``PUT``, ``PATCH``, its own method or one a
        method override names) declares anything; the route is matched as for a restricted
        visitor, overrides included, and a websocket handshake on any route of its path."""
        declaring = self._declaring
        if declaring is None or not self.on_sign_up_path(scope):
            return None
        table, any_method, sources = declaring
        paths = route_paths(scope)
        for path in paths:  # the common case: no declaring route on this path, whatever method
            if (found := table.match(any_method, path)):
                break
        else:
            return None
        if scope.get("type") == "websocket":  # no method: every route of the path counts
            return sources[found[0].id]
        overrides = [header for header in scope.get("headers") or () if header[0] in _OVERRIDES]
        methods = request_methods(str(scope.get("method")), overrides,
                                  scope.get("query_string") or b"")
        if methods.isdisjoint(_DECLARING_METHODS):
            return None
        for path in paths:
            for route in table.match(methods, path):
                return sources[route.id]
        return None

    def sign_up(self, scope: Scope) -> bool:
        """Is this ``http`` request one an account-creation route may handle (matched as for a
        restricted visitor, method overrides included)? Asked of sign-ups that were not
        blocked and present an onboarding token."""
        if scope.get("type") != "http" or not self.on_sign_up_path(scope):
            return False
        table = self._sign_ups[0]
        paths = route_paths(scope)
        overrides = [header for header in scope.get("headers") or () if header[0] in _OVERRIDES]
        methods = request_methods(str(scope.get("method")), overrides,
                                  scope.get("query_string") or b"")
        return any(table.match(methods, path) for path in paths)

    def on_sign_up_path(self, scope: Scope) -> bool:
        """Does an account-creation route match this request's path, under any method? The
        pipeline asks it of every request not blocked before :meth:`declaration` and
        :meth:`sign_up`. Memoised per path (and root_path; a long path under its digest)."""
        path = scope.get("path")
        root = scope.get("root_path")
        if path.__class__ is str and len(path) > PATH_KEY_CHARS:
            path = path_key(path)
        key: object = (path, root) if root else path
        try:
            found = self._sign_up_paths.get(key)
        except TypeError:  # not a str path: not memoised
            found, key = None, None
        if found is None:
            table, any_method = self._sign_ups
            found = any(table.match(any_method, spelling) for spelling in route_paths(scope))
            if key is not None:
                self._sign_up_paths.put(key, found, _ENTRY_BYTES + _route_bytes((path, root, "")))
        return found

    def _route(
        self, scope: Scope, overrides: Sequence[Header] | None, zones: tuple[str, ...],
        flags: tuple[str, ...],
    ) -> tuple[_Verdict, str | None, RouteClass]:
        """The most severe verdict of the entries that may decide the request (a restricted
        visitor's: :meth:`RouteTable.candidates`), with the entry's id and class; the
        ``unlisted`` default's (route id ``unlisted``) when no entry names the request."""
        table = self.routes
        # A handshake carries no method of its own: every entry of its path counts.
        websocket = scope.get("type") == "websocket"
        methods = HTTP_METHODS if websocket else request_methods(
            str(scope.get("method") or "GET"), overrides or (), scope.get("query_string") or b"")
        verdict, chosen = _NO_VERDICT, None
        for path in route_paths(scope):
            for route in (table.handshake(path) if websocket else table.candidates(methods, path)):
                candidate = self._verdict(zones, route.route_class, flags)
                if chosen is None or candidate.outcome.severity > verdict.outcome.severity:
                    verdict, chosen = candidate, route
        if chosen is None:  # version 1, and no entry matches: the unlisted default
            for route in table.unlisted(methods):
                candidate = self._verdict(zones, route.route_class, flags)
                if chosen is None or candidate.outcome.severity > verdict.outcome.severity:
                    verdict, chosen = candidate, route
        assert chosen is not None
        return verdict, chosen.id, RouteClass(chosen.route_class)

    # -- helpers -----------------------------------------------------------------------------

    def _supplied_identity(self, scope: Scope) -> ClientIdentity | None:
        """The identity from ``scope["user"]`` or the Python callable; ``None`` for headers."""
        source = self.policy.client_identity.source
        if source == "scope_user":
            return from_scope_user(scope)
        if source == "callable" and self._identify is not None:
            try:
                found = self._identify(scope)
            except Exception:  # the host's code must not take the request down; but who the
                return UNREADABLE_IDENTITY  # client is, and so where, cannot be told
            if found is None:
                return NO_IDENTITY
            read = read_client_id(found.client_id)
            return ClientIdentity(read.client_id, clean_country(found.residence_country),
                                  read.unreadable or found.unreadable,
                                  found.residence_unreadable
                                  or unreadable_country(found.residence_country))
        return None

    def _identity_signals(
        self, peer: str | None, forwarded: list[str] | None, id_value: bytes | None,
        residences: list[bytes] | None,
    ) -> IdentitySignals | None:
        """The identity headers that count: only those the auth gateway sent, reached directly
        or through trusted proxies only (a CDN passing client headers through is not one). The
        one place that says whose identity headers are believed, so the cache key follows it."""
        if (id_value is None and not residences) or not reached_from(
            self._identity_sources, peer, forwarded or [], self._trusted,
            self.policy.client_ip.header,
        ):
            return None
        return (id_value, tuple(residences) if residences else ())

    def _header_identity(self, signals: IdentitySignals | None) -> ClientIdentity:
        if signals is None:
            return NO_IDENTITY
        id_value, residences = signals
        read = NO_IDENTITY if id_value is None else read_client_id(
            id_value.decode("latin-1").strip())
        residence = self._residence(residences)
        unreadable = any(unreadable_country(value.decode("latin-1")) for value in residences)
        if residence is None and not unreadable:
            return read
        return ClientIdentity(read.client_id, residence, read.unreadable, unreadable)

    def _residence(self, values: Sequence[bytes]) -> str | None:
        """The residence country; of several, one a zone claims (any EU signal makes EU)."""
        countries = [c for c in (clean_country(v.decode("latin-1")) for v in values) if c]
        for country in countries:
            if not self._restricted_zones.isdisjoint(self._country_zones.get(country, ())):
                return country
        return countries[0] if countries else None

    def _profile(
        self, location: Location, residence: str | None, flags: tuple[str, ...],
        doubtful: bool = False, standing: Standing = NO_STANDING, declared: str | None = None,
        unreadable: tuple[str, ...] = (),
    ) -> _Profile:
        key = (location.country, location.registered_country, residence, flags, doubtful,
               standing, declared, unreadable)
        profile = self._profiles.get(key)
        if profile is not None:
            return profile
        counted = self.policy.signals
        names: set[str] = set()
        signals: list[str] = []
        unknown = (UNKNOWN_COUNTRY_ZONE,)

        def put(signal: str, zones: Sequence[str]) -> None:
            if zones:
                names.update(zones)
                signals.append(signal)

        country_zones = self._country_zones.get
        ip_known = False
        if counted.country and location.country:
            ip_known = True
            put(f"country:{location.country}", country_zones(location.country, ()))
        if counted.registered_country and location.registered_country:
            ip_known = True
            put(f"registered_country:{location.registered_country}",
                country_zones(location.registered_country, ()))
        if not ip_known:
            put("location:unknown", unknown)
        if doubtful:
            put("address:doubtful", unknown)
        if residence:
            put(f"residence:{residence}", country_zones(residence, ()))
        for signal in unreadable:  # a client or residence named, but not so it can be placed
            put(signal, unknown)
        # The client registry and the grants the client holds (whatever its address), then
        # what its sign-up declares: zones only add up, so no signal lifts another's.
        if standing.registry:
            put(f"registry:{standing.registry}", country_zones(standing.registry, ()))
        for country in standing.grants:
            put(f"grant:{country}", country_zones(country, ()))
        if standing.legacy:
            put("grant:unnamed", self._grant_zones)
        if standing.unknown:
            put("registry:unavailable", unknown)
        if declared is not None:  # a country, or "unreadable": the unknown country's
            put(f"declared:{declared}",
                unknown if declared == UNREADABLE else country_zones(declared, ()))
        zones = tuple(sorted(names, key=self._zone_order.__getitem__))
        stance = max(
            (self._stances[name] for name in zones),
            key=_STANCE_ORDER.index,
            default=PromotionStance.ALLOWED,
        )
        restricted = not self._restricted_zones.isdisjoint(zones) or (
            bool(flags) and self._screen.restricts(flags)
        )
        profile = _Profile(zones, restricted, stance, tuple(signals))
        self._profiles.put(key, profile)
        return profile

    def _verdict(
        self, zones: tuple[str, ...], route_class: str, flags: tuple[str, ...]
    ) -> _Verdict:
        key = (zones, route_class, flags)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = _NO_VERDICT
            for rule in self._rules_by_class.get(route_class, ()):
                zone = next((z for z in zones if z in rule.zones), None)
                if zone is not None and (
                    verdict.rule is None or rule.outcome.severity > verdict.outcome.severity
                ):
                    verdict = _Verdict(rule.outcome, rule, zone)
            anonymizer_rule = self._screen.blocking_rule(flags, route_class) if flags else None
            # An anonymizer block wins over anything but a zone rule that blocks for real.
            if anonymizer_rule is not None and not (
                verdict.rule is not None and verdict.outcome is Outcome.BLOCK
                and (verdict.rule.mode or self.policy.mode) is Mode.ENFORCE
            ):
                verdict = _Verdict(Outcome.BLOCK, anonymizer_rule, None)
            self._verdicts[key] = verdict
        return verdict


def _visitor_bytes(visitor: VisitorKey) -> int:
    """The text a visitor key holds (beyond the fixed cost of an entry)."""
    if isinstance(visitor, KnownVisitor):
        visitor = visitor.visitor
    if not isinstance(visitor, tuple):
        return len(visitor or "")
    address, edge_value, identity_signals, _supplied, _doubtful = visitor
    size = len(address or "") + len(edge_value or b"")
    if identity_signals is not None:
        id_value, residences = identity_signals
        size += len(id_value or b"") + sum(len(value) for value in residences)
    return size


def _signal_bytes(signals: list[Header]) -> int:
    """The header text a memo key of raw signal headers holds."""
    return sum(len(name) + len(value) for name, value in signals)


def _route_bytes(route: RouteKey) -> int:
    """The text a route key holds: method(s), path (or its digest) and root_path."""
    size = 0
    for part in route:
        if isinstance(part, str | bytes):
            size += len(part)
        elif isinstance(part, frozenset):
            size += sum(len(method) for method in part)
    return size

"""What micafence does about promotions on each ``http`` request, built once per policy.

- Visitors who may see promotions: only cache safety. For ``GET``/``HEAD``/``POST`` a thin
  ``send`` wrapper makes zone-dependent answers (pages: HTML, XML, untyped; and, but for
  ``POST``, routes some rule treats by zone) private; other methods are not wrapped at all.
- Visitors who may not: solicitation evidence when they arrive through a promotion route or a
  marketing marker; promotion routes answer ``empty``, ``no_content`` or ``block`` as the policy
  says; everything else goes to the app without ranges or validators (and with only the
  content codings the net can read in ``Accept-Encoding``), and its pages come back through the
  :class:`~micafence.promotions.rewriter.RewritingSend` safety net.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

from micafence.answers import Refusal, Refused, send_block, send_empty, send_no_content
from micafence.asgi import Message, Scope, Send
from micafence.caches import BoundedCache
from micafence.decision import Decision
from micafence.location.client_ip import TrustedProxies
from micafence.policy.model import Policy, PromotionStance
from micafence.policy.promotions import EMPTY_BODIES, EmptyFormat, PromotionRoute, RouteOutcome
from micafence.policy.routes import PATH_KEY_CHARS, route_paths
from micafence.promotions.cache_safety import CacheSafety
from micafence.promotions.codings import accepted_codings
from micafence.promotions.evidence_budget import EvidenceBudget
from micafence.promotions.filter import PromotionFilter
from micafence.promotions.mime import may_be_page
from micafence.promotions.rewriter import RewritingSend
from micafence.promotions.solicitation import (
    MarkerMatcher,
    evidence,
    evidence_visitor,
    new_visitor_id,
    record,
    set_cookie_header,
    visitor_id,
)
from micafence.reasons import Reason, RouteClass, reason_code
from micafence.store.base import Store

Header = tuple[bytes, bytes]

# Request headers a restricted request loses: partial or "not modified" answers could not be
# rewritten (a 304 would let the browser show a copy cached with promotions). Accept-Encoding
# stays, cut to the codings the net reads (codings.accepted_codings): the net decodes and
# re-encodes a page in the app's own coding, one the client accepted.
_STRIPPED_REQUEST_HEADERS = frozenset({
    b"range", b"if-range", b"if-none-match", b"if-modified-since",
})
_ACCEPT_ENCODING = b"accept-encoding"
# Server extensions that send a file without passing its bytes through ``send``.
_FILE_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
# Enum members bound once: looking one up on its class costs ~90 ns on Python 3.11, and the
# request path below would pay that several times per request.
_ALLOWED = PromotionStance.ALLOWED
_APPROVED_ONLY = PromotionStance.APPROVED_ONLY
_PROMOTION = RouteClass.PROMOTION
_ROUTE_BLOCK = RouteOutcome.BLOCK
_CACHE_LIMIT = 256
_PATH_CACHE_LIMIT = 4096
#: The rule a page refused as unrewritable names (``promotions.on_unrewritable``).
UNREWRITABLE_RULE = "promotions.on_unrewritable"


class PromotionGuard:
    """The promotion controls of one policy (rebuilt with the :class:`~micafence.Enforcer`)."""

    def __init__(self, policy: Policy) -> None:
        self.settings = policy.promotions
        self.cache = CacheSafety(policy)
        self._blocked_by = policy.blocked_by
        self._stances = {zone.name: zone.promotions for zone in policy.zones}
        self._routes = {route.route_id: route for route in self.settings.routes}
        self._markers = MarkerMatcher(self.settings.markers)
        self._trusted = TrustedProxies(policy.client_ip.trusted_proxies)
        self._forbidden = PromotionFilter.build(self.settings.selectors,
                                                self.settings.incentives, ())
        self._filters: BoundedCache[tuple[str, ...], PromotionFilter] = BoundedCache(_CACHE_LIMIT)
        # Paths up to PATH_KEY_CHARS long only: the entry ceiling then bounds the bytes too.
        self._zone_paths: BoundedCache[object, bool] = BoundedCache(_PATH_CACHE_LIMIT)

    # -- decisions ---------------------------------------------------------------------------

    def route(self, route_id: str | None) -> PromotionRoute:
        """The settings of a promotion route (defaults when ops did not list it)."""
        found = self._routes.get(route_id or "")
        return found if found is not None else PromotionRoute(route_id or "")

    def approved_in(self, route_id: str | None, zones: tuple[str, ...]) -> str | None:
        """The zone that names the approval of promotion route ``route_id`` for an
        ``approved_only`` visitor in ``zones``: ops approved it for every such zone and it is
        no incentive. ``None``: not approved (the route stays blocked)."""
        route = self.route(route_id)
        needed = self._approval_zones(zones)
        if route.incentive or not needed or not set(needed) <= route.approved_for:
            return None
        return needed[0]

    def page_filter(self, zones: tuple[str, ...], stance: PromotionStance) -> PromotionFilter:
        """The filter for a visitor in ``zones`` whose promotions ``stance`` is not allowed."""
        if stance is not _APPROVED_ONLY:
            return self._forbidden
        found = self._filters.get(zones)
        if found is None:
            approvals = [self.settings.approval_selector(z) for z in self._approval_zones(zones)]
            found = self._forbidden
            if approvals and all(approvals):
                found = PromotionFilter.build(self.settings.selectors, self.settings.incentives,
                                              [a for a in approvals if a])
            self._filters.put(zones, found)
        return found

    def _approval_zones(self, zones: tuple[str, ...]) -> list[str]:
        return [z for z in zones if self._stances.get(z) is _APPROVED_ONLY]

    # -- requests ----------------------------------------------------------------------------

    def cache_safe(
        self, scope: Scope, send: Send, decision: Decision, zone_route: bool | None = None
    ) -> Send:
        """``send`` for a visitor who may see promotions: zone-dependent answers made private.

        A page (HTML, XML, or untyped, which a browser may sniff into one) depends on the zone:
        another zone's visitor gets it without its promotions. It is made private on every
        method a cache may store (``GET``, ``HEAD``, and ``POST`` with explicit freshness);
        other methods are not wrapped at all. So is every answer of a ``GET`` or ``HEAD`` on a
        route some rule treats by zone (:meth:`zone_route`; ``zone_route`` when the caller
        has asked it already). This runs for most traffic, so it stays small:
        :func:`~micafence.promotions.mime.may_be_page` answers the usual types from a table.
        """
        method = scope.get("method")
        if method != "GET" and method != "HEAD" and method != "POST":
            return send
        cache = self.cache
        personal = decision.client_id is not None or decision.residence_country is not None
        if method != "POST" and (self.zone_route(scope) if zone_route is None else zone_route):
            return _private(send, cache, personal)

        # Not a coroutine function: it hands back the server's own awaitable, so a response
        # message costs one call, not one more coroutine (``await send(m)`` is all ASGI asks).
        def send_private_if_page(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or ()
                if headers.__class__ is not list and headers.__class__ is not tuple:
                    # read once: an iterator passed on as it came would reach the server empty
                    headers = list(headers)
                    message = {**message, "headers": headers}
                if may_be_page(headers):
                    message = {**message, "headers": cache.mark(headers, personal)}
            return send(message)

        return send_private_if_page

    def zone_route(self, scope: Scope) -> bool:
        """Is the request's path, in any spelling a router may match, a route some rule treats
        by zone (its ``GET`` and ``HEAD`` answers are made private whatever their type)?"""
        return self._zone_route(scope)

    def _zone_route(self, scope: Scope) -> bool:
        """Is the request's path, in any spelling a router may match, a zone-dependent route?"""
        path = scope.get("path")
        root = scope.get("root_path")
        if not root:  # the common case: one dictionary look-up once the path has been seen
            found = self._zone_paths.get(path)
            if found is None:
                found = self.cache.route_depends_on_zone(_path(scope))
                if not isinstance(path, str) or len(path) <= PATH_KEY_CHARS:
                    self._zone_paths.put(path, found)  # a long one: the route table's memo
            return found
        return any(self.cache.route_depends_on_zone(p) for p in route_paths(scope))

    async def restrict(
        self, scope: Scope, send: Send, decision: Decision, store: Store,
        arrival: tuple[str | None, str | None] | None, budget: EvidenceBudget,
    ) -> Send | None:
        """Handle a blocked request or one from a visitor who may not see promotions, with
        what :meth:`arrival` found (recorded here as solicitation evidence, as far as the
        worker's ``budget`` allows).

        Returns the ``send`` to carry on with (the middleware then answers 451 or calls the
        app), or ``None`` when the request has been answered here.
        """
        extra = [] if arrival is None else await self._record_arrival(
            scope, decision, store, budget, *arrival)
        if decision.blocked:
            if decision.route_class is _PROMOTION:
                outcome = self.route(decision.route_id).outcome
                if outcome is not _ROUTE_BLOCK:
                    await self._answer(scope, send, decision, outcome, extra,
                                       self.route(decision.route_id))
                    return None
            return _with_headers(send, extra)
        if decision.promotion_stance is _ALLOWED:
            return self.cache_safe(scope, _with_headers(send, extra), decision)
        return self.page_safe(scope, send, decision, extra)

    def arrival(self, scope: Scope, decision: Decision) -> tuple[str | None, str | None] | None:
        """How a restricted visitor arrives through a promotion, as evidence to record: the
        promotion route and the marketing marker (either may be ``None``); ``None`` if not."""
        if decision.promotion_stance is _ALLOWED:
            return None
        route_id = None
        if decision.route_class is _PROMOTION and self.route(decision.route_id).evidence:
            route_id = decision.route_id
        marker = self._markers.find(scope.get("query_string") or b"")
        return None if route_id is None and marker is None else (route_id, marker)

    def page_safe(
        self, scope: Scope, send: Send, decision: Decision, extra: list[Header] | None = None,
        zone_route: bool | None = None,
    ) -> Send:
        """``send`` for a visitor who may not see promotions, on a request not blocked.

        The request loses what would stop its answer being rewritten; the answer, when it may
        be a page, goes through a :class:`~micafence.promotions.rewriter.RewritingSend`, made
        only then: most answers (JSON, images) pass with one check of their first message.
        ``extra`` headers (the visitor cookie) go on the response whatever it is.
        ``zone_route``: :meth:`zone_route` of the request when the caller has asked it already.
        """
        _strip_request(scope)
        added = extra or []
        method = scope.get("method")
        if method != "GET" and method != "HEAD":
            zone_route = False
        elif zone_route is None:
            zone_route = self._zone_route(scope)
        rewriter: RewritingSend | None = None

        # Not a coroutine function, as cache_safe's: a message that passes costs one call.
        def send_page_safe(message: Message) -> Awaitable[None]:
            nonlocal rewriter
            if rewriter is not None:
                return rewriter(message)
            if message["type"] != "http.response.start":
                return send(message)
            given = message.get("headers") or ()
            if given.__class__ is list:
                headers = given
            else:  # read once: an iterator passed on as it came would reach the server empty
                headers = list(given)
                if given.__class__ is not tuple:
                    message = {**message, "headers": headers}
            page = may_be_page(headers)
            if not (added or zone_route or page or int(message.get("status", 200)) < 200):
                return send(message)  # (not a page, nothing to add: most answers)
            rewriter = self._rewriter(scope, send, decision, added, bool(zone_route))
            # The rewriter keeps the headers until the page is out: its own copy, not the
            # app's list (which the app may change once its send has returned).
            return rewriter.begin(message, list(headers) if headers is given else headers, page)

        return send_page_safe

    def _rewriter(
        self, scope: Scope, send: Send, decision: Decision, extra: list[Header], zone_route: bool
    ) -> RewritingSend:
        async def refuse(problem: str) -> None:
            zone = _strictest_zone(decision, self._stances)
            refused = Refused(reason_code(zone, Reason.PROMOTION_UNREWRITABLE),
                              Reason.PROMOTION_UNREWRITABLE, UNREWRITABLE_RULE,
                              decision.policy_revision)
            await self._answer(scope, send, refused, self.settings.on_unrewritable, extra, None)

        return RewritingSend(
            send,
            page_filter=self.page_filter(decision.zones, decision.promotion_stance),
            limit=self.settings.max_rewrite_bytes,
            head=scope.get("method") == "HEAD",
            cache=self.cache,
            personal=_personal(decision),
            zone_route=zone_route,
            refuse=refuse,
            extra_headers=extra,
        )

    async def _record_arrival(
        self, scope: Scope, decision: Decision, store: Store, budget: EvidenceBudget,
        route_id: str | None, marker: str | None,
    ) -> list[Header]:
        """Record a restricted visitor's arrival through a promotion unless ``budget`` says it
        is a repeat or over a limit; the cookie to set, if any."""
        extra: list[Header] = []
        subject = decision.client_id
        cookie = self.settings.visitor_cookie
        presented = given = None
        if subject is None and cookie.enabled:
            presented = visitor_id(scope.get("headers") or (), cookie.name)
            if presented is None:
                given = new_visitor_id()
                extra.append(set_cookie_header(cookie, given, self._secure(scope)))
            subject = f"cookie:{presented or given}"
        elif subject is None:
            subject = f"ip:{decision.client_ip}"
        visitor = evidence_visitor(decision.client_id, presented, decision.client_ip)
        alias = evidence_visitor(None, given, None) if given is not None else None
        if budget.admit(self.settings.evidence, visitor, route_id, marker, alias):
            zone = _strictest_zone(decision, self._stances)
            await record(store, evidence(subject, zone, decision.country, route_id, marker))
        return extra

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        refusal: Refusal,
        outcome: RouteOutcome,
        extra: list[Header],
        route: PromotionRoute | None,
    ) -> None:
        """Send a promotion's suppressed answer: 451, 204, or an empty result."""
        if outcome is _ROUTE_BLOCK:
            await send_block(scope, send, refusal, self._blocked_by, extra)
        elif outcome is RouteOutcome.NO_CONTENT:
            await send_no_content(send, refusal.reason, extra)
        else:
            if route is not None:
                content_type, body = route.empty_answer()
            else:  # an unrewritable page: an empty page
                content_type, text = EMPTY_BODIES[EmptyFormat.HTML]
                body = text.encode("utf-8")
            await send_empty(scope, send, refusal.reason, content_type, body, extra)

    def _secure(self, scope: Scope) -> bool:
        """Was the request made over HTTPS (as the trusted proxy in front tells)?"""
        if scope.get("scheme") in ("https", "wss"):
            return True
        client = scope.get("client")
        if client and client[0] in self._trusted:
            for name, value in scope.get("headers") or ():
                if name == b"x-forwarded-proto":
                    return bytes(value).strip().lower() == b"https"
        return False


def _strip_request(scope: Scope) -> None:
    headers = scope.get("headers") or ()
    for name, value in headers:
        # (an Accept-Encoding the cut leaves as it is, as browsers send it, changes nothing)
        if name in _STRIPPED_REQUEST_HEADERS or (
                name == _ACCEPT_ENCODING and accepted_codings(bytes(value)) != value):
            scope["headers"] = _request_headers(headers)
            break
    extensions = scope.get("extensions")
    if extensions and any(name in extensions for name in _FILE_EXTENSIONS):
        scope["extensions"] = {k: v for k, v in extensions.items() if k not in _FILE_EXTENSIONS}


def _request_headers(headers: Iterable[Header]) -> list[Header]:
    """The headers a restricted request keeps (see :data:`_STRIPPED_REQUEST_HEADERS`)."""
    kept = []
    for name, value in headers:
        if name == _ACCEPT_ENCODING:
            accepted = accepted_codings(bytes(value))
            if accepted is not None:
                kept.append((name, accepted))
        elif name not in _STRIPPED_REQUEST_HEADERS:
            kept.append((name, value))
    return kept


def _private(send: Send, cache: CacheSafety, personal: bool) -> Send:
    """``send`` making the response private, whatever its type."""

    def send_private(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message = {**message, "headers": cache.mark(message.get("headers") or (), personal)}
        return send(message)

    return send_private


def _with_headers(send: Send, extra: list[Header]) -> Send:
    """``send`` adding ``extra`` headers to the response start (as is when there are none)."""
    if not extra:
        return send

    def send_with_headers(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
        return send(message)

    return send_with_headers


def _personal(decision: Decision) -> bool:
    """Did the decision read who the client is (not only where the request came from)?"""
    return decision.client_id is not None or decision.residence_country is not None


def _strictest_zone(decision: Decision, stances: dict[str, PromotionStance]) -> str:
    """The first of the visitor's zones with the visitor's (most restrictive) stance."""
    for zone in decision.zones:
        if stances.get(zone) is decision.promotion_stance:
            return zone
    if decision.anonymizer:  # no zone of the visitor forbids promotions: the relay does
        return "anonymizer"
    return decision.zone or (decision.zones[0] if decision.zones else "unknown_country")


def _path(scope: Scope) -> str:
    path = scope.get("path")
    return path if isinstance(path, str) else "/"

"""The ``promotions:`` policy section: what counts as a promotion and how it is suppressed.

A zone's ``promotions`` stance (``allowed``, ``approved_only``, ``forbidden``) says *whether* its
visitors may see promotions; this section says *what* a promotion is (CSS selectors for the HTML
safety net, marketing query markers), which promotions ops approved for an ``approved_only``
zone, which are incentives (never approved: FCA PS23/6), and how each promotion route answers a
visitor who may not see it. Everything is validated at load with the file, key path and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import lolhtml

from micafence.policy.durations import duration_setting
from micafence.policy.lookback import DEFAULT_SOLICITATION_LOOKBACK, Lookback, parse_lookback
from micafence.policy.selectors import SelectorError, parse_selectors
from micafence.policy.yamlfile import Node

_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_MARKER = re.compile(r"[A-Za-z0-9_.\-\[\]]+\*?")
_APPROVED_ONLY = "approved_only"

#: The attribute the default approval selector looks at: ``data-promo-approved="uk"``.
APPROVAL_ATTRIBUTE = "data-promo-approved"


class RouteOutcome(StrEnum):
    """How a promotion route (or an unrewritable page) answers a visitor who may not see it."""

    #: 200 with an empty result in the route's format (``[]`` for a JSON feed).
    EMPTY = "empty"
    #: 204 No Content.
    NO_CONTENT = "no_content"
    #: 451 Unavailable For Legal Reasons, like any blocked route.
    BLOCK = "block"


class EmptyFormat(StrEnum):
    """The format of an ``empty`` answer."""

    JSON = "json"
    HTML = "html"
    TEXT = "text"


#: ``(content type, body)`` of each format's empty answer unless the route names its own body.
EMPTY_BODIES: dict[EmptyFormat, tuple[str, str]] = {
    EmptyFormat.JSON: ("application/json", "[]"),
    EmptyFormat.HTML: (
        "text/html; charset=utf-8",
        '<!doctype html><html><head><meta charset="utf-8"><title></title></head>'
        "<body></body></html>",
    ),
    EmptyFormat.TEXT: ("text/plain; charset=utf-8", ""),
}


@dataclass(frozen=True, slots=True)
class PromotionRoute:
    """How one promotion route treats visitors whose zone may not see it."""

    route_id: str
    outcome: RouteOutcome = RouteOutcome.BLOCK
    format: EmptyFormat = EmptyFormat.JSON
    body: str | None = None  # the ``empty`` body; None: the format's default
    #: ``approved_only`` zones whose visitors may receive this route (ops approved it there).
    approved_for: frozenset[str] = frozenset()
    #: An incentive (refer-a-friend, bonus): never approved, whatever ``approved_for`` says.
    incentive: bool = False
    #: Arriving here is solicitation evidence (a landing page); False for background feeds.
    evidence: bool = True

    def empty_answer(self) -> tuple[str, bytes]:
        """``(content type, body)`` of this route's ``empty`` answer."""
        content_type, body = EMPTY_BODIES[self.format]
        return content_type, (self.body if self.body is not None else body).encode("utf-8")


@dataclass(frozen=True, slots=True)
class VisitorCookie:
    """The first-party cookie that names an anonymous visitor in solicitation evidence."""

    name: str = "micafence_visitor"
    max_age_days: int = 395  # 13 months, the usual ceiling for a tracking cookie's lifetime
    enabled: bool = True


#: The most records ``per_worker`` may allow per window: the worker keeps a line per record
#: (and per visitor) of the window in memory, so this bounds that memory too (~20 MB).
MAX_EVIDENCE_PER_WORKER = 100_000


@dataclass(frozen=True, slots=True)
class EvidenceLimits:
    """What solicitation evidence one worker writes (``promotions.evidence``).

    In each ``window`` (tumbling, on the wall clock): one record per visitor and arrival
    (promotion route and marker); later ones are counted, not stored. At most ``per_visitor``
    new records per visitor, ``per_worker`` in all; the rest are dropped and counted
    (:mod:`micafence.promotions.evidence_budget` says what that bounds).
    """

    window_seconds: int = 3600
    per_visitor: int = 20
    per_worker: int = 1000


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """The validated ``promotions:`` section (defaults when the section is absent)."""

    selectors: tuple[str, ...] = ("[data-promo]",)
    incentives: tuple[str, ...] = ('[data-promo-kind~="incentive"]',)
    #: ``(zone, selector)``: what marks a promotion approved for an ``approved_only`` zone.
    approved: tuple[tuple[str, str], ...] = ()
    max_rewrite_bytes: int = 4 * 1024 * 1024
    on_unrewritable: RouteOutcome = RouteOutcome.BLOCK
    #: Query parameter names that mark a marketing arrival; a final ``*`` matches a prefix.
    markers: tuple[str, ...] = ()
    visitor_cookie: VisitorCookie = VisitorCookie()
    routes: tuple[PromotionRoute, ...] = ()
    evidence: EvidenceLimits = EvidenceLimits()
    #: How far back from a client's own approach solicitation evidence counts against it
    #: (``grant add``, onboarding tokens, sign-ups): a calendar period (micafence.policy.lookback).
    solicitation_lookback: Lookback = DEFAULT_SOLICITATION_LOOKBACK

    def route(self, route_id: str | None) -> PromotionRoute:
        """The settings of a promotion route (the defaults when ops did not list it)."""
        for route in self.routes:
            if route.route_id == route_id:
                return route
        return PromotionRoute(route_id or "")

    def approval_selector(self, zone: str) -> str | None:
        for name, selector in self.approved:
            if name == zone:
                return selector
        return None


#: The settings of a policy without a ``promotions:`` section (approvals are added per zone).
DEFAULT_PROMOTIONS = PromotionPolicy()


def default_approvals(stances: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``[data-promo-approved~="<zone>"]`` for every ``approved_only`` zone (``stances``: zone
    name -> its ``promotions`` stance, in declaration order)."""
    return tuple(
        (zone, f'[{APPROVAL_ATTRIBUTE}~="{zone}"]')
        for zone, stance in stances.items()
        if stance == _APPROVED_ONLY
    )


_KEYS = (
    "selectors", "incentives", "approved", "max_rewrite_bytes", "on_unrewritable", "markers",
    "visitor_cookie", "routes", "evidence", "solicitation_lookback",
)


def parse_promotions(
    node: Node | None, stances: Mapping[str, str], route_classes: Mapping[str, str]
) -> PromotionPolicy:
    """Validate the ``promotions:`` section against the policy's zones (``stances``: zone name
    -> its ``promotions`` stance, in declaration order) and routes (``route_classes``: route id
    -> its class)."""
    approvals = default_approvals(stances)
    if node is None:
        return PromotionPolicy(approved=approvals)
    fields = node.mapping(_KEYS)
    defaults = PromotionPolicy()
    selectors = _selectors(fields["selectors"]) if "selectors" in fields else defaults.selectors
    incentives = (
        _selectors(fields["incentives"], allow_empty=True)
        if "incentives" in fields else defaults.incentives
    )
    if "approved" in fields:
        approvals = _approved(fields["approved"], stances)
    on_unrewritable = defaults.on_unrewritable
    if "on_unrewritable" in fields:
        on_unrewritable = RouteOutcome(fields["on_unrewritable"].choice(list(RouteOutcome)))
    return PromotionPolicy(
        selectors=selectors,
        incentives=incentives,
        approved=approvals,
        max_rewrite_bytes=(
            fields["max_rewrite_bytes"].integer(minimum=1024)
            if "max_rewrite_bytes" in fields else defaults.max_rewrite_bytes
        ),
        on_unrewritable=on_unrewritable,
        markers=_markers(fields["markers"]) if "markers" in fields else (),
        visitor_cookie=(
            _visitor_cookie(fields["visitor_cookie"])
            if "visitor_cookie" in fields else VisitorCookie()
        ),
        routes=_routes(fields["routes"], stances, route_classes) if "routes" in fields else (),
        evidence=_evidence(fields["evidence"]) if "evidence" in fields else EvidenceLimits(),
        solicitation_lookback=(
            _lookback(fields["solicitation_lookback"])
            if "solicitation_lookback" in fields else defaults.solicitation_lookback
        ),
    )


def _lookback(node: Node) -> Lookback:
    try:
        return parse_lookback(node.text())
    except ValueError as exc:
        node.fail(str(exc))


def check_selector(node: Node, selector: str) -> None:
    """Fail at ``node`` unless the safety net can run ``selector``: a list of compound selectors
    it evaluates on one start tag (:mod:`micafence.policy.selectors`), whose engine selectors
    lol-html compiles (they are compiled the same way for every response)."""
    try:
        parsed = parse_selectors(selector)
    except SelectorError as exc:
        node.fail(f"{selector!r} is not a selector the promotion safety net can run: {exc}")
    rewriter = lolhtml.HTMLRewriter(_discard)
    for engine_selector in parsed.engine_selectors():
        try:
            rewriter.on(engine_selector, _NO_HANDLER)
        except RuntimeError as exc:  # a bug of ours: say which selector lol-html refused
            node.fail(f"{selector!r}: lol-html refused {engine_selector!r} ({exc})")


def _discard(_: object) -> None:
    return None


class _NoHandler:
    def element(self, element: lolhtml.Element) -> None:
        return None


_NO_HANDLER = _NoHandler()


def _selectors(node: Node, allow_empty: bool = False) -> tuple[str, ...]:
    found: list[str] = []
    for item in node.items():
        selector = item.text().strip()
        check_selector(item, selector)
        if selector in found:
            item.fail(f"selector {selector!r} is listed twice")
        found.append(selector)
    if not found and not allow_empty:
        node.fail("list at least one selector (promotions would otherwise go unnoticed)")
    return tuple(found)


def _approved(node: Node, stances: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    approvals: list[tuple[str, str]] = []
    for name, item in node.dict_items():
        if name not in stances:
            item.fail(f"unknown zone {name!r} (declared: {', '.join(sorted(stances))})")
        if stances[name] != _APPROVED_ONLY:
            item.fail(f"zone {name!r} is not 'promotions: approved_only', so nothing is "
                      "approved for it")
        selector = item.text().strip()
        check_selector(item, selector)
        approvals.append((name, selector))
    return tuple(approvals)


def _markers(node: Node) -> tuple[str, ...]:
    markers: list[str] = []
    for item in node.items():
        if item.value == "*":
            item.fail("'*' alone would mark every query string")
        marker = item.text(_MARKER, "a query parameter name (a final * matches a prefix)")
        marker = marker.lower()
        markers.append(marker)
    return tuple(markers)


def _visitor_cookie(node: Node) -> VisitorCookie:
    fields = node.mapping(("name", "max_age_days", "enabled"))
    defaults = VisitorCookie()
    return VisitorCookie(
        name=fields["name"].text(_COOKIE_NAME, "a cookie name") if "name" in fields
        else defaults.name,
        max_age_days=fields["max_age_days"].integer(minimum=1) if "max_age_days" in fields
        else defaults.max_age_days,
        enabled=fields["enabled"].flag() if "enabled" in fields else defaults.enabled,
    )


def _evidence(node: Node) -> EvidenceLimits:
    fields = node.mapping(("window", "per_visitor", "per_worker"))
    defaults = EvidenceLimits()
    window = defaults.window_seconds
    if "window" in fields:
        window = int(duration_setting(fields["window"]).total_seconds())
        if not 60 <= window <= 7 * 86400:
            fields["window"].fail("the window must be from PT1M to P7D")
    per_visitor = fields["per_visitor"].integer(minimum=1) if "per_visitor" in fields \
        else defaults.per_visitor
    per_worker = defaults.per_worker
    if "per_worker" in fields:
        per_worker = fields["per_worker"].integer(minimum=1)
        if per_worker > MAX_EVIDENCE_PER_WORKER:
            fields["per_worker"].fail(f"at most {MAX_EVIDENCE_PER_WORKER} (the worker keeps "
                                      "a window's records in memory)")
    if per_visitor > per_worker:
        (fields.get("per_visitor") or node).fail(
            f"per_visitor ({per_visitor}) is more than per_worker ({per_worker}) allows")
    return EvidenceLimits(window, per_visitor, per_worker)


def _routes(
    node: Node, stances: Mapping[str, str], classes: Mapping[str, str]
) -> tuple[PromotionRoute, ...]:
    found: list[PromotionRoute] = []
    for route_id, item in node.dict_items():
        if route_id not in classes:
            item.fail(f"unknown route id {route_id!r}")
        if classes[route_id] != "promotion":
            item.fail(f"route {route_id!r} is class {classes[route_id]!r}, not 'promotion'")
        fields = item.mapping(("outcome", "format", "body", "approved_for", "incentive",
                               "evidence"))
        outcome = RouteOutcome.BLOCK
        if "outcome" in fields:
            outcome = RouteOutcome(fields["outcome"].choice(list(RouteOutcome)))
        for key in ("format", "body"):
            if key in fields and outcome is not RouteOutcome.EMPTY:
                fields[key].fail(f"'{key}' only applies to 'outcome: empty'")
        empty_format = EmptyFormat.JSON
        if "format" in fields:
            empty_format = EmptyFormat(fields["format"].choice(list(EmptyFormat)))
        body: str | None = None
        if "body" in fields:
            if not isinstance(fields["body"].value, str):
                fields["body"].fail("expected a string")
            body = str(fields["body"].value)
            if empty_format is EmptyFormat.JSON:
                try:
                    json.loads(body)
                except ValueError as exc:
                    fields["body"].fail(f"not JSON: {exc}")
        incentive = fields["incentive"].flag() if "incentive" in fields else False
        approved: set[str] = set()
        for zone_node in fields["approved_for"].items() if "approved_for" in fields else ():
            zone = zone_node.text()
            if stances.get(zone) != _APPROVED_ONLY:
                zone_node.fail(f"{zone!r} is not a zone with 'promotions: approved_only'")
            approved.add(zone)
        if approved and incentive:
            fields["approved_for"].fail(
                "an incentive route cannot be approved (FCA PS23/6 bans incentives)"
            )
        found.append(PromotionRoute(
            route_id=route_id,
            outcome=outcome,
            format=empty_format,
            body=body,
            approved_for=frozenset(approved),
            incentive=incentive,
            evidence=fields["evidence"].flag() if "evidence" in fields else True,
        ))
    return tuple(found)

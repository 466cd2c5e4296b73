"""What a policy's route entries decide, over every request at once: ``micafence check``'s notes
on precedence, and ``micafence routes``' coverage of an app.

Requests are too many to try, but only a few kinds of path can be told apart by a set of
patterns: at each segment a path either equals one of the literals some pattern still in play
has there, or none of them. :func:`witness_paths` walks that tree and gives one concrete path
(a *witness*) per kind, writing ``{x}`` for a segment no literal equals (a pattern literal never
holds a brace, so none can), and the real :class:`~micafence.policy.routes.RouteTable` decides
each witness: what is reported is what the middleware does.

Notes (never errors: the policy loads and works as written):

- version 2: an entry no request reaches (*shadowed*: every request it matches has a more
  specific entry, or an equally specific one listed before it), and *ties* (two equally
  specific entries matching one request: the file's order decides);
- version 1: every entry that decides some request today (the most severe match) and would not
  under version 2 (the most specific match), with the entry that would, for which zones' rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from micafence.errors import MicafenceError
from micafence.policy.model import Outcome, Policy, Route
from micafence.policy.routes import HTTP_METHODS, RouteTable, pattern_segments, specificity

#: The segment a witness path has where it equals no literal of any pattern.
FRESH = "{x}"
# Every method, the common ones first (a note's example request is the first found).
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE")
assert frozenset(_METHODS) == HTTP_METHODS
_ANY = "*"
_REST = "**"

Shape = tuple[str, ...]  # a pattern's segments: a literal, "*" (any one) or a final "**"
#: How many kinds of path :func:`witness_paths` tells apart before giving up (real policies
#: have hundreds; only patterns crafted to cross each other at every segment reach this).
WITNESS_LIMIT = 100_000
#: How many (kind of path, entry) pairs the notes weigh: each pair is a match tried for every
#: method, so the time grows as the square of the entries (5 million: a few seconds; a policy of
#: 20,000 entries would take hours).
ANALYSIS_LIMIT = 5_000_000


class TooManyPaths(MicafenceError):
    """The patterns tell more kinds of path apart than :data:`WITNESS_LIMIT`."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something ``micafence check`` says about a valid policy, where it applies: a
    ``warning`` (an entry that never decides, or decides by its place in the file) or a
    ``notice`` (what version 2 would change)."""

    file: str
    key_path: str
    line: int | None
    problem: str
    level: str = "warning"  # or "notice"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key_path}: {self.level}: {self.problem}"


def witness_paths(shapes: Sequence[Shape], domain: Shape = (_REST,),
                  limit: int = WITNESS_LIMIT) -> list[str]:
    """One path for every way the patterns ``shapes`` can match a path inside ``domain``
    (a shape too: every path by default): any path of the domain matches exactly the patterns
    one of these matches. Paths are normalised (``/`` for the root). Raises
    :class:`TooManyPaths` past ``limit`` kinds."""
    found: list[str] = []
    visited: set[tuple[int, tuple[int, ...], frozenset[int], bool]] = set()

    def walk(prefix: list[str], alive: list[int], rest: frozenset[int], loose: bool) -> None:
        depth = len(prefix)
        # `loose`: the domain took "**" before this depth, any continuation is inside it
        loose = loose or (depth < len(domain) and domain[depth] == _REST)
        entering = {i for i in alive if depth < len(shapes[i]) and shapes[i][depth] == _REST}
        rest = rest | entering
        alive = [i for i in alive if i not in entering]
        state = (depth, tuple(alive), rest, loose)
        if state in visited:
            return
        visited.add(state)
        if len(visited) > limit:
            raise TooManyPaths(f"the route patterns tell more than {limit} kinds of path apart")
        if loose or len(domain) == depth:
            found.append(_path(prefix))
        if not loose and len(domain) <= depth:
            return
        deeper = [i for i in alive if len(shapes[i]) > depth]
        if not deeper:  # nothing below can tell paths apart: one path deeper says it all
            tail = [FRESH] if loose else [
                FRESH if segment == _ANY else segment
                for segment in domain[depth:] if segment != _REST]
            if tail:
                found.append(_path(prefix + tail))
            return
        wanted = None if loose or domain[depth] == _ANY else domain[depth]
        if wanted is not None:
            choices = [wanted]
        else:
            choices = [*sorted({shapes[i][depth] for i in deeper} - {_ANY}), FRESH]
        for choice in choices:
            walk([*prefix, choice],
                 [i for i in deeper if shapes[i][depth] in (_ANY, choice)], rest, loose)

    walk([], list(range(len(shapes))), frozenset(), False)
    return found


def _path(segments: Sequence[str]) -> str:
    return "/" + "/".join(segments)


def _request(method: str, path: str) -> str:
    return f"{method} {path}"


def _entry(policy: Policy, route: Route) -> str:
    """How a note names an entry: its id and where it is in the file."""
    return f"{route.id!r} (routes[{_index(policy, route)}], {route.route_class})"


def _more(count: int, noun: str) -> str:
    """`` (and 3 more requests)``: how many more requests a note stands for."""
    if not count:
        return ""
    return f" (and {count} more{noun}{'s' if noun and count != 1 else ''})"


def _index(policy: Policy, route: Route) -> int:
    return next(i for i, listed in enumerate(policy.routes) if listed is route)


def _note(policy: Policy, route: Route, problem: str, level: str = "warning") -> Note:
    return Note(policy.source, f"routes[{_index(policy, route)}]", route.line, problem, level)


@dataclass
class _Seen:
    """What the walk found for one pair of entries: the first request, how many in all."""

    example: str
    count: int = 1
    zones: set[str] = field(default_factory=set)


def precedence_notes(policy: Policy) -> list[Note]:
    """``micafence check``'s notes on which route entries decide (see the module's text)."""
    if not policy.routes:
        return []
    shapes = [pattern_segments(route.path) for route in policy.routes]
    try:
        paths = witness_paths(shapes)
    except TooManyPaths as exc:
        return [Note(policy.source, "routes", None, f"precedence not analysed: {exc}")]
    if len(paths) * len(policy.routes) > ANALYSIS_LIMIT:
        return [Note(policy.source, "routes", None, (
            f"precedence not analysed: {len(policy.routes)} route entries tell {len(paths)} "
            f"kinds of path apart, more than the {ANALYSIS_LIMIT:,} pairs micafence check "
            "weighs"))]
    if policy.version >= 2:
        return _version2_notes(policy, paths)
    return _version1_notes(policy, paths)


def _version2_notes(policy: Policy, paths: Iterable[str]) -> list[Note]:
    table = RouteTable(policy.routes, 2, policy.unlisted)
    wins: set[int] = set()
    beaten: dict[int, dict[int, str]] = {}  # loser -> winner -> first request
    ties: dict[tuple[int, int], _Seen] = {}
    rank = {id(route): specificity(route) for route in policy.routes}  # once, not per request
    for path in paths:
        # Methods no entry tells apart match the same entries: each set is ranked once.
        groups: dict[tuple[int, ...], tuple[tuple[Route, ...], list[str]]] = {}
        for method in _METHODS:
            found = table.match(frozenset({method}), path)
            if found:
                groups.setdefault(tuple(map(id, found)), (found, []))[1].append(method)
        for found, methods in groups.values():
            matching = table.ranked(found)
            winner = matching[0]
            wins.add(id(winner))
            for other in matching[1:]:
                beaten.setdefault(id(other), {}).setdefault(
                    id(winner), _request(methods[0], path))
                if rank[id(other)] == rank[id(winner)]:
                    seen = ties.get((id(winner), id(other)))
                    if seen is None:
                        ties[id(winner), id(other)] = _Seen(
                            _request(methods[0], path), len(methods))
                    else:
                        seen.count += len(methods)
    by_id = {id(route): route for route in policy.routes}
    notes: list[Note] = []
    for route in policy.routes:
        if id(route) in wins:
            continue
        winners = beaten.get(id(route), {})
        deciders = ", ".join(_entry(policy, by_id[w]) for w in winners) or "none"
        example = next(iter(winners.values()), None)
        notes.append(_note(policy, route, (
            f"{route.id!r} is shadowed: no request reaches it; every request it matches"
            f"{f' ({example}, ...)' if example else ''} is decided by {deciders}, more "
            "specific or equally specific and listed first")))
    for (winner_id, loser_id), seen in ties.items():
        if loser_id not in wins:
            continue  # shadowed: said above
        winner, loser = by_id[winner_id], by_id[loser_id]
        more = _more(seen.count - 1, "")
        notes.append(_note(policy, loser, (
            f"{loser.id!r} ties with {_entry(policy, winner)} on {seen.example}{more}: "
            f"equally specific, so {winner.id!r}, listed first, decides")))
    notes.sort(key=lambda note: note.line or 0)
    return notes


def _version1_notes(policy: Policy, paths: Iterable[str]) -> list[Note]:
    now = RouteTable(policy.routes, 1, policy.unlisted)
    then = RouteTable(policy.routes, 2, policy.unlisted)
    zones = [zone.name for zone in policy.zones
             if any(zone.name in rule.zones for rule in policy.rules)]
    severity = {
        (zone, route_class): max(
            (rule.outcome.severity for rule in policy.rules
             if rule.route_class == route_class and zone in rule.zones),
            default=Outcome.ALLOW.severity)
        for zone in zones for route_class in {route.route_class for route in policy.routes}
    }
    changes: dict[tuple[int, int], _Seen] = {}
    for path in paths:
        for method in _METHODS:
            methods = frozenset({method})
            matching = now.candidates(methods, path)
            if not matching:
                continue  # the unlisted default decides, in either version
            (specific,) = then.candidates(methods, path)
            changed: dict[tuple[int, int], set[str]] = {}
            for zone in zones:
                severe = matching[0]
                for route in matching[1:]:
                    if severity[zone, route.route_class] > severity[zone, severe.route_class]:
                        severe = route
                if severe is not specific:
                    changed.setdefault((id(severe), id(specific)), set()).add(zone)
            for pair, changed_zones in changed.items():
                seen = changes.get(pair)
                if seen is None:
                    seen = changes[pair] = _Seen(_request(method, path))
                else:
                    seen.count += 1
                seen.zones |= changed_zones
    by_id = {id(route): route for route in policy.routes}
    notes: list[Note] = []
    for (severe_id, specific_id), seen in changes.items():
        severe, specific = by_id[severe_id], by_id[specific_id]
        more = _more(seen.count - 1, " request")
        visitors = ", ".join(zone for zone in zones if zone in seen.zones)
        notes.append(_note(policy, severe, (
            f"{severe.id!r} ({severe.route_class}) decides {seen.example}{more} for visitors "
            f"in {visitors} (the most severe match, the first among equals); under policy: 2 "
            f"the most specific, {_entry(policy, specific)}, would"), "notice"))
    notes.sort(key=lambda note: note.line or 0)
    return notes

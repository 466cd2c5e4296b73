"""``micafence routes APP``: every route of a Starlette or FastAPI app, with the class the policy
gives it and the entry that decides it (or ``unlisted``: the policy's default).

The app is imported from ``package.module:attribute`` (as uvicorn takes it) and its routes are
walked: ``Route`` and FastAPI's ``APIRoute``, ``WebSocketRoute``, ``Mount`` of a router or a
whole sub-app (a Starlette or FastAPI app, through any middleware wrapping it), ``Host``. An app
mounted whole that has no routes to walk (``StaticFiles``, any ASGI app) counts as its prefix
and everything below, for any method (``StaticFiles``: GET and HEAD). Path parameters match
one segment (``{id}``, ``{id:int}``, ``file-{name}.txt``), a ``{x:path}`` parameter anything
below: every path a route serves is tried against the policy (:mod:`micafence.policy.coverage`),
so a parameter the policy tells apart (``/api/{section}/orders`` against ``/api/futures/orders``)
shows the other entries too.

This module never imports Starlette (the core package does not depend on it): the app's own
import brings it, and routes are recognised by their classes' module and name.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from micafence.errors import MicafenceError
from micafence.policy.coverage import FRESH, Shape, witness_paths
from micafence.policy.model import SAFE_METHODS, UNLISTED_ROUTE_ID, Policy, Route
from micafence.policy.routes import (
    HTTP_METHODS,
    RouteTable,
    normalize_path,
    pattern_segments,
    request_methods,
)

#: What a row's method is for a websocket route, and for an app mounted whole (any method).
WEBSOCKET = "WEBSOCKET"
ANY_METHOD = "*"
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
_PATH_PARAMETER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*:path\}")  # Starlette's, which takes '/'
_MAX_WRAPPERS = 32  # middleware layers unwrapped to find an app's routes


@dataclass(frozen=True, slots=True)
class AppRoute:
    """One route of the app: its full path (mount prefixes included) as the app writes it,
    the shape policy matching sees, and its methods (``None``: any)."""

    path: str
    shape: Shape
    methods: tuple[str, ...] | None
    websocket: bool = False
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """What the policy makes of one method of one app route."""

    route: AppRoute
    method: str  # an HTTP method, WEBSOCKET or ANY_METHOD
    route_class: str
    route_id: str  # the deciding entry, or "unlisted"
    safe: bool
    falls_through: bool  # an unsafe method some path of which no entry names
    also: tuple[tuple[str, str, str], ...]  # (entry, class, example path) for other paths

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.route.path, "method": self.method, "name": self.route.name,
            "class": self.route_class, "route": self.route_id,
            "unlisted": self.route_id == UNLISTED_ROUTE_ID, "safe": self.safe,
            "falls_through": self.falls_through,
            "also": [{"route": rid, "class": cls, "path": path} for rid, cls, path in self.also],
        }


# -- finding the app and its routes ------------------------------------------------------------


def load_app(spec: str, app_dir: str = ".") -> object:
    """The object ``module:attribute`` names (``attribute`` may be dotted), imported with
    ``app_dir`` first on ``sys.path``."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"APP must be 'package.module:attribute', not {spec!r}")
    directory = os.path.abspath(app_dir)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # the app's own import error, named
        raise MicafenceError(
            f"cannot import {module_name!r} (from {directory}): {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise MicafenceError(f"{module_name!r} has no attribute {attribute!r}") from None
    return found


def _kind(obj: object) -> str | None:
    """The Starlette class ``obj`` is (or derives from), by module and name."""
    for cls in type(obj).__mro__:
        module, name = cls.__module__, cls.__name__
        if module == "starlette.routing" and name in (
                "Route", "WebSocketRoute", "Mount", "Host", "Router"):
            return name
        if module == "starlette.staticfiles" and name == "StaticFiles":
            return name
    return None


def _routes_of(app: object) -> list[object] | None:
    """The routes of an app, a router, or an app inside middleware (``.app``); ``None`` for an
    app with no routes to walk."""
    for _ in range(_MAX_WRAPPERS):
        if app is None:
            return None
        routes = getattr(app, "routes", None)
        if isinstance(routes, list | tuple):
            return list(routes)
        app = getattr(app, "app", None)
    return None


def app_routes(app: object) -> list[AppRoute]:
    """Every route of ``app``, mounts and sub-apps walked (see the module's text)."""
    routes = _routes_of(app)
    if routes is None:
        raise MicafenceError(
            f"{type(app).__module__}.{type(app).__qualname__} is not a Starlette or FastAPI "
            "app: no routes found (on it, or on the app its middleware wraps)")
    found: list[AppRoute] = []
    _walk(routes, "", found, set())
    return found


def _walk(routes: Iterable[object], prefix: str, found: list[AppRoute], seen: set[int]) -> None:
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            # A router FastAPI includes lazily (0.16x): each context is one of its routes,
            # with the path the include gave it (prefixes of nested includes joined).
            for context in contexts():
                inner = getattr(context, "starlette_route", None) or getattr(
                    context, "original_route", None)
                path = getattr(context, "path", None)
                methods = getattr(context, "methods", None)
                _add(inner, prefix + path if isinstance(path, str) else None,
                     _methods(context) if methods else None, prefix, found, seen)
            continue
        path = getattr(route, "path", None)
        _add(route, prefix + path if isinstance(path, str) else None, None, prefix, found,
             seen)


def _add(route: object, full: str | None, methods: tuple[str, ...] | None, prefix: str,
         found: list[AppRoute], seen: set[int]) -> None:
    """One route (``full``: its path, mount prefixes included; ``methods``: what the router
    gave it, else its own)."""
    kind = _kind(route)
    name = getattr(route, "name", None)
    name = name if isinstance(name, str) else None
    if kind == "Route" and full is not None:
        found.append(AppRoute(full, shape_of(full), methods or _methods(route), name=name))
    elif kind == "WebSocketRoute" and full is not None:
        found.append(AppRoute(full, shape_of(full), None, websocket=True, name=name))
    elif kind in ("Mount", "Host"):
        mounted = full if kind == "Mount" and full is not None else prefix
        inner = getattr(route, "_base_app", None) or getattr(route, "app", None)
        children = _routes_of(inner)
        if children is not None and id(inner) not in seen:
            _walk(children, mounted, found, seen | {id(inner)})
        else:  # an app mounted whole: its prefix and everything below
            served = ("GET", "HEAD") if _kind(_unwrapped(inner)) == "StaticFiles" else None
            found.append(AppRoute(f"{mounted}/{{path:path}}", (*shape_of(mounted), "**"),
                                  served, name=name))
    elif full is not None and full.startswith("/"):  # a route class of another kind
        found.append(AppRoute(full, shape_of(full), methods, name=name))
    else:
        raise MicafenceError(
            f"cannot tell what {type(route).__module__}.{type(route).__qualname__} "
            f"(under {prefix or '/'}) serves: not a Starlette route, mount or host")


def _unwrapped(app: object) -> object:
    for _ in range(_MAX_WRAPPERS):
        inner = getattr(app, "app", None)
        if inner is None or _kind(app) is not None:
            return app
        app = inner
    return app


def _methods(route: object) -> tuple[str, ...] | None:
    """A route's methods; for a class endpoint without ``methods`` (Starlette's
    ``HTTPEndpoint``), the handlers it defines; ``None``: any method."""
    methods = getattr(route, "methods", None)
    if methods:
        return tuple(m for m in _ORDER if m in {str(x).upper() for x in methods}) or tuple(
            sorted(str(x).upper() for x in methods))
    endpoint = getattr(route, "endpoint", None)
    if inspect.isclass(endpoint) and any(
            cls.__module__ == "starlette.endpoints" and cls.__name__ == "HTTPEndpoint"
            for cls in endpoint.__mro__):
        handled = tuple(m for m in _ORDER if callable(getattr(endpoint, m.lower(), None)))
        if "GET" in handled and "HEAD" not in handled:
            handled = ("GET", "HEAD", *handled[1:])
        return handled or None
    return None


def shape_of(path: str) -> Shape:
    """A Starlette path template as policy matching sees it: literal segments normalised,
    a segment holding a parameter matches any one segment, one holding a ``{x:path}`` (all of
    it, or part: ``v{rest:path}``) anything below."""
    segments: list[str] = []
    for raw in path.split("/"):
        if "{" in raw and "}" in raw:
            if _PATH_PARAMETER.search(raw):  # matches slashes, even inside a segment
                segments.append("**")
                break
            segments.append("*")
            continue
        literal = normalize_path("/" + raw).strip("/")
        if literal:
            segments.extend(literal.split("/"))
    return tuple(segments)


# -- what the policy makes of them ----------------------------------------------------------------


def route_rows(policy: Policy, routes: Sequence[AppRoute]) -> list[Row]:
    """One row per method of each route (HEAD folded into GET), as the middleware decides:
    the same route table, each path of the route tried."""
    table = RouteTable(policy.routes, policy.version, policy.unlisted)
    entries = [pattern_segments(route.path) for route in policy.routes]
    severity = {
        route_class: max((rule.outcome.severity for rule in policy.rules
                          if rule.route_class == route_class), default=0)
        for route_class in {r.route_class for r in policy.routes}
        | {policy.unlisted.safe, policy.unlisted.unsafe}
    }
    rows: list[Row] = []
    for app_route in routes:
        paths = witness_paths(entries, app_route.shape)
        generic = "/" + "/".join(FRESH if s in ("*", "**") else s for s in app_route.shape)
        if app_route.websocket:
            variants = [(WEBSOCKET, HTTP_METHODS)]
        elif app_route.methods is None:
            variants = [(ANY_METHOD, HTTP_METHODS)]
        else:
            variants = [(m, request_methods(m, (), b"")) for m in app_route.methods
                        if not (m == "HEAD" and "GET" in app_route.methods)]
        for method, methods in variants:
            websocket = method == WEBSOCKET
            decided = _decide(table, severity, methods, normalize_path(generic), websocket)
            also: dict[str, tuple[str, str, str]] = {}
            falls = False
            for path in paths:
                chosen = _decide(table, severity, methods, path, websocket)
                falls = falls or any(c is table.unlisted_unsafe for c in _candidates(
                    table, methods, path, websocket))
                if chosen.id != decided.id and chosen.id not in also:
                    also[chosen.id] = (chosen.id, chosen.route_class, path)
            safe = method not in (WEBSOCKET, ANY_METHOD) and method in SAFE_METHODS
            rows.append(Row(app_route, method, decided.route_class, decided.id, safe,
                            falls and not safe, tuple(also.values())))
    return rows


def _candidates(table: RouteTable, methods: frozenset[str], path: str,
                websocket: bool) -> tuple[Route, ...]:
    if websocket:
        return table.handshake(path)
    return table.candidates(methods, path) or table.unlisted(methods)


def _decide(table: RouteTable, severity: dict[str, int], methods: frozenset[str],
            path: str, websocket: bool) -> Route:
    """The entry the middleware would take for a visitor every rule applies to: the most
    severe candidate, the first among equals."""
    chosen: Route | None = None
    for route in _candidates(table, methods, path, websocket):
        if chosen is None or severity.get(route.route_class, 0) > severity.get(
                chosen.route_class, 0):
            chosen = route
    assert chosen is not None
    return chosen


# -- what the command prints ---------------------------------------------------------------------


def falling_through(rows: Sequence[Row]) -> list[Row]:
    """The rows ``--strict`` fails on: an unsafe method falls to the unlisted default."""
    return [row for row in rows if row.falls_through]


def report_json(app: str, policy: Policy, rows: Sequence[Row], strict: bool) -> str:
    failing = falling_through(rows)
    return json.dumps({
        "app": app,
        "policy": {"name": policy.name, "revision": policy.revision,
                   "source": policy.source, "version": policy.version,
                   "unlisted": {"safe": policy.unlisted.safe,
                                "unsafe": policy.unlisted.unsafe}},
        "routes": [row.as_dict() for row in rows],
        "falls_through": len(failing),
        "ok": not (strict and failing),
    }, indent=2) + "\n"


def report_text(app: str, policy: Policy, rows: Sequence[Row]) -> str:
    failing = falling_through(rows)
    lines = [f"{app}: {len({id(row.route) for row in rows})} routes; policy {policy.name} "
             f"{policy.revision} ({policy.source}), format version {policy.version}, "
             f"unlisted safe: {policy.unlisted.safe}, unsafe: {policy.unlisted.unsafe}"]
    width = max((len(row.route.path) for row in rows), default=4)
    lines.append(f"{'METHOD':<9} {'PATH':<{width}}  {'CLASS':<16} ROUTE")
    for row in rows:
        decided = row.route_id + ("  <- unsafe, unlisted" if row.falls_through else "")
        other = [(rid, cls, path) for rid, cls, path in row.also if cls != row.route_class]
        if other:  # a parameter's value the policy classes otherwise (JSON lists every entry)
            decided += "; for some values: " + ", ".join(
                f"{rid} ({cls}: {path})" for rid, cls, path in other)
        lines.append(f"{row.method:<9} {row.route.path:<{width}}  {row.route_class:<16} "
                     f"{decided}".rstrip())
    if failing:
        count = len(failing)
        lines.append(f"{count} unsafe route method{'s' if count != 1 else ''} fall"
                     f"{'s' if count == 1 else ''} to the unlisted default "
                     f"({policy.unlisted.unsafe}): name {'it' if count == 1 else 'them'} in "
                     "the policy's routes")
    else:
        lines.append("every unsafe route method is named by a policy entry")
    return "\n".join(lines) + "\n"

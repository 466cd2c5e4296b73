"""Route matching that cannot be dodged by how a path or method is spelled.

Both the policy's patterns and every request path go through :func:`normalize_path`, so
``/API//Accounts/``, ``/api/./accounts``, ``/api/x/../accounts`` and ``/api/%61ccounts`` all
meet ``/api/accounts``. Matching is deliberately looser than any app router: a request the app
would treat as a route is always classed as that route; the reverse only costs a false block.
So the path as a router that resolves nothing sees it counts too (:func:`router_path`):
``/r/..`` is ``/`` once normalised, but Starlette serves it from ``/r/{code}``.

Which entry decides (:meth:`RouteTable.candidates`) depends on the policy's format version. A
request has variants: every method it may be handled as (its own, a method override's, GET for
HEAD) on every spelling of its path (:func:`route_paths`). Version 1: every entry matching any
variant is a candidate, the most severe verdict wins (first in the file among equals), and the
``unlisted`` default decides only when no entry matches at all. Version 2: each variant's most
specific matching entry (:func:`specificity`), or the ``unlisted`` default of its method, is a
candidate, and the most severe of those wins: an override never picks a laxer entry.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

from micafence.caches import BoundedCache
from micafence.policy.model import (
    DEFAULT_UNLISTED,
    SAFE_METHODS,
    UNLISTED_ROUTE_ID,
    Route,
    Unlisted,
)

_SEGMENT_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
METHOD_OVERRIDE_HEADERS = (b"x-http-method-override", b"x-http-method", b"x-method-override")
_CACHE_LIMIT = 4096
#: Paths longer than this are memoised under their digest, not their text (:func:`path_key`).
PATH_KEY_CHARS = 256
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
# What a method no entry names stands for in memo keys (RouteTable.named): it matches only
# entries without `methods:`, as every such method does; its kind picks the unlisted default.
_OTHER_SAFE = "~safe"
_OTHER_UNSAFE = "~unsafe"


def normalize_path(path: str) -> str:
    """One canonical, lower-case spelling of a URL path (idempotent)."""
    # Decode and fold Unicode until nothing changes: NFKC turns a fullwidth percent sign into
    # a new '%', and some stacks decode more than once, so one round of each is not enough.
    for _ in range(32):
        folded = unquote(unicodedata.normalize("NFKC", path), errors="replace")
        if folded == path:
            break
        path = folded
    path = path.replace("\\", "/").lower()
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0].strip()  # matrix parameters never select a route
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


_FOLDED = re.compile(r"[%;\\]")  # characters normalize_path decodes or cuts at
#: What :func:`router_path` writes for a segment no policy literal can equal.
OPAQUE_SEGMENT = ";"


def _canonical_segment(segment: str) -> bool:
    """Is ``segment`` already in :func:`normalize_path`'s form (so a policy literal may equal
    it)? ASCII without ``%``, ``;``, ``\\``, surrounding blanks or dots: when lower-case."""
    if segment.isascii():
        return (segment == segment.lower() and segment == segment.strip()
                and segment not in (".", "..") and _FOLDED.search(segment) is None)
    return normalize_path("/" + segment) == "/" + segment


def router_path(path: str) -> str:
    """``path`` as a router that takes each segment as written sees it (Starlette's: no dot
    segments resolved, nothing decoded or folded, no matrix parameters stripped), in
    :func:`normalize_path`'s terms: each segment not already canonical becomes
    :data:`OPAQUE_SEGMENT`, which a ``{name}`` or ``*`` matches and no literal does. Where
    :func:`normalize_path` folds ``/r/..``, ``/r/%20`` or ``/r/;x`` away, the app may still
    serve ``/r/{code}``: both spellings decide (:meth:`RouteTable.candidates`)."""
    return "/" + "/".join(
        segment if _canonical_segment(segment) else OPAQUE_SEGMENT
        for segment in path.split("/") if segment)


def spellings(path: str) -> tuple[str, ...]:
    """The normalised path and, when it differs, the :func:`router_path`: every form of
    ``path`` an app's router may match its routes against, in policy terms."""
    canonical = normalize_path(path)
    if canonical == path:  # most paths: every segment is canonical already
        return (canonical,)
    routed = router_path(path)
    return (canonical,) if routed == canonical else (canonical, routed)


def path_key(path: str) -> str | bytes:
    """How memos of route matching hold a path: the path itself, or a long one's BLAKE2b-256
    digest, so a flood of long paths cannot fill a memo with their text. A digest (bytes)
    never equals a path (str), and two paths share one only by a 256-bit collision."""
    if len(path) <= PATH_KEY_CHARS:
        return path
    return hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=32).digest()


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a policy path pattern: literal segments, ``{name}`` for one segment, ``*`` for
    one segment, and a final ``**`` for any rest (including nothing). Raises ``ValueError``."""
    if not pattern.startswith("/"):
        raise ValueError("a path pattern must start with '/'")
    parts: list[str] = []
    segments = [s for s in normalize_path(pattern).split("/") if s]
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise ValueError("'**' may only be the last segment")
            parts.append("(?:/.*)?")
            continue
        if segment == "*":
            parts.append("/[^/]+")
            continue
        if "{" in segment or "}" in segment:
            if not _SEGMENT_PARAM.fullmatch(segment):
                raise ValueError(f"bad parameter segment {segment!r} (use {{name}})")
            name = segment[1:-1]
            parts.append(f"/(?P<{name}>[^/]+)")
            continue
        if "*" in segment:
            raise ValueError(f"'*' must be a whole segment, not part of {segment!r}")
        parts.append("/" + re.escape(segment))
    body = "".join(parts) or "/"
    try:
        return re.compile(body if body != "(?:/.*)?" else "/.*")
    except re.error as exc:  # e.g. the same {name} twice
        raise ValueError(str(exc)) from None


def pattern_segments(pattern: str) -> tuple[str, ...]:
    """A valid pattern's segments, normalised: a literal, ``*`` (any one segment: ``{name}``
    reads as ``*``) or a final ``**``."""
    return tuple(
        "*" if segment.startswith("{") else segment
        for segment in normalize_path(pattern).split("/") if segment
    )


#: (literal segments, parameters, ends without ``**``, has ``methods:``): the greater decides.
Specificity = tuple[int, int, bool, bool]


def specificity(route: Route) -> Specificity:
    """How specific an entry is (version 2: the most specific entry matching a request
    decides). The one with more literal segments; then more parameters (``{name}`` or ``*``);
    then the one not ending in ``**``; then the one with ``methods:``. Equals are a tie, which
    the file's order breaks (``micafence check`` reports it). An entry without ``**`` or
    parameters thus beats any other matching the same path."""
    segments = pattern_segments(route.path)
    rest = bool(segments) and segments[-1] == "**"
    parameters = segments.count("*")
    return (len(segments) - parameters - rest, parameters, not rest,
            route.methods is not None)


def may_override_method(query: bytes) -> bool:
    """Could this query string carry a ``_method`` override (possibly percent-encoded)?"""
    if not query:  # most requests: no query string, nothing to lower-case
        return False
    return b"%" in query or b"_method" in query.lower()


def request_methods(
    method: str, headers: Iterable[tuple[bytes, bytes]], query: bytes
) -> frozenset[str]:
    """Every method a request may be handled as: its own, any override, and GET for HEAD."""
    methods = {method.upper()}
    for name, value in headers:
        if name in METHOD_OVERRIDE_HEADERS:
            methods.add(value.decode("latin-1").strip().upper())
    if may_override_method(query):
        for pair in query.split(b"&"):
            key, _, value = pair.partition(b"=")
            if unquote(key.decode("latin-1")).lower() == "_method":
                methods.add(unquote(value.decode("latin-1")).strip().upper())
    if "HEAD" in methods:
        methods.add("GET")
    return frozenset(methods)


class RouteTable:
    """The policy's routes, compiled once; matching results are cached per method and path.

    ``version`` (the policy's format) and ``unlisted`` (its default for what no entry names)
    say which entries decide: :meth:`candidates`."""

    def __init__(
        self, routes: Iterable[Route], version: int = 1, unlisted: Unlisted = DEFAULT_UNLISTED
    ) -> None:
        listed = tuple(routes)
        self.version = version
        self._routes = tuple((route, compile_pattern(route.path)) for route in listed)
        self._named = frozenset(m for route, _ in self._routes for m in route.methods or ())
        # Version 2 looks for each method's first match in this order: most specific first,
        # then file order (sorted() is stable).
        order = sorted(range(len(listed)), key=lambda i: specificity(listed[i]), reverse=True)
        self._by_precedence = tuple(self._routes[i] for i in order)
        self._precedence = {id(listed[i]): rank for rank, i in enumerate(order)}
        self._position = {id(route): index for index, route in enumerate(listed)}
        self.unlisted_safe = Route(UNLISTED_ROUTE_ID, unlisted.safe, "/**", SAFE_METHODS)
        self.unlisted_unsafe = Route(UNLISTED_ROUTE_ID, unlisted.unsafe, "/**", None)
        # Keys are at most PATH_KEY_CHARS long: the entry ceiling bounds the bytes too.
        self._cache: BoundedCache[tuple[frozenset[str], str | bytes], tuple[Route, ...]] = (
            BoundedCache(_CACHE_LIMIT)
        )
        self._decided: BoundedCache[tuple[frozenset[str], str | bytes], tuple[Route, ...]] = (
            BoundedCache(_CACHE_LIMIT)
        )
        self._handshakes: BoundedCache[str | bytes, tuple[Route, ...]] = BoundedCache(
            _CACHE_LIMIT)

    def named(self, methods: frozenset[str]) -> frozenset[str]:
        """The ``methods`` some route names; each other method (an override's junk, or a
        method no entry lists) matches only entries without ``methods:``, as its absence
        would, so memo keys hold it as one of two markers (safe, unsafe, for the unlisted
        default): it cannot make keys long or many."""
        if methods <= self._named:
            return methods
        others = methods - self._named
        marks = {_OTHER_SAFE if m in SAFE_METHODS else _OTHER_UNSAFE for m in others}
        return (methods & self._named) | marks

    def match(self, methods: frozenset[str], path: str) -> tuple[Route, ...]:
        """Every route matching any of ``methods`` on ``path`` (policy order)."""
        methods = self.named(methods)
        key = (methods, path_key(path))
        found = self._cache.get(key)
        if found is not None:
            return found
        forms = spellings(path)
        found = tuple(
            route
            for route, regex in self._routes
            if (route.methods is None or not route.methods.isdisjoint(methods))
            and any(regex.fullmatch(form) for form in forms)
        )
        self._cache.put(key, found)
        return found

    def candidates(self, methods: frozenset[str], path: str) -> tuple[Route, ...]:
        """The entries that may decide a request handled as any of ``methods`` on ``path``;
        the most severe verdict among them (and among those of the request's other path
        spellings) applies, the first listed among equals. Version 1: every matching route in
        policy order (none: the caller takes :meth:`unlisted`). Version 2: each method's most
        specific matching route, else the ``unlisted`` default of that method (never empty),
        in policy order, the defaults last."""
        if self.version < 2:
            return self.match(methods, path)
        methods = self.named(methods)
        key = (methods, path_key(path))
        found = self._decided.get(key)
        if found is not None:
            return found
        winners: dict[int, Route] = {}
        defaults: list[Route] = []
        for form in spellings(path):  # each form's winners: an app may route on either
            matching = [route for route, regex in self._by_precedence if regex.fullmatch(form)]
            for method in methods:
                for route in matching:
                    if route.methods is None or method in route.methods:
                        winners[self._position[id(route)]] = route
                        break
                else:
                    default = self.unlisted_for(method)
                    if default not in defaults:
                        defaults.append(default)
        defaults.sort(key=lambda route: route is self.unlisted_unsafe)
        found = (*(winners[index] for index in sorted(winners)), *defaults)
        self._decided.put(key, found)
        return found

    def handshake(self, path: str) -> tuple[Route, ...]:
        """The candidates of a websocket handshake on ``path``. A handshake has no method of
        its own (the app behind the path may serve it whatever its routes' methods), so
        every entry of the path counts: version 1, every match; version 2, each method's
        most specific match. Only a path no entry names gets the ``unlisted`` defaults, both
        (the stricter applies): a websocket nobody listed fails closed like an unsafe method."""
        key = path_key(path)
        found = self._handshakes.get(key)
        if found is not None:
            return found
        if self.version < 2:
            found = self.match(HTTP_METHODS, path)
        else:
            defaults = (self.unlisted_safe, self.unlisted_unsafe)
            found = tuple(route for route in self.candidates(HTTP_METHODS, path)
                          if route not in defaults)
        found = found or (self.unlisted_safe, self.unlisted_unsafe)
        self._handshakes.put(key, found)
        return found

    def unlisted_for(self, method: str) -> Route:
        """The ``unlisted`` default's pseudo-route (id ``unlisted``) for ``method``."""
        safe = method in SAFE_METHODS or method == _OTHER_SAFE
        return self.unlisted_safe if safe else self.unlisted_unsafe

    def unlisted(self, methods: frozenset[str]) -> tuple[Route, ...]:
        """The ``unlisted`` defaults of ``methods`` (the safe one first)."""
        kinds = {self.unlisted_for(method) is self.unlisted_safe for method in methods}
        return tuple(route for route, safe in ((self.unlisted_safe, True),
                                               (self.unlisted_unsafe, False)) if safe in kinds)

    def ranked(self, routes: Iterable[Route]) -> list[Route]:
        """``routes`` of this table, most specific first (version 2's order of precedence)."""
        return sorted(routes, key=lambda route: self._precedence[id(route)])


def route_paths(scope: MutableMapping[str, Any]) -> tuple[str, ...]:
    """Every spelling of a request's path that some router could match against a policy route.

    Servers and frameworks disagree on whether ``path`` includes ``root_path`` (uvicorn's
    ``--root-path``, Starlette's ``Mount``): the path as given, without the ``root_path`` prefix
    (what the mounted app routes on) and with it in front all count, so a mounted app cannot be
    reached under a spelling the policy did not think of.
    """
    path = scope.get("path")
    if not isinstance(path, str) or not path:
        path = "/"
    root = scope.get("root_path")
    if not isinstance(root, str) or not root or root == "/":
        return (path,)
    if path.startswith(root):
        return (path, path[len(root):] or "/")
    return (path, root + path)

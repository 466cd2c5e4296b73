"""Route matching that cannot be dodged by how a path or method is spelled.

Both the policy's patterns and every request path go through :func:`normalize_path`, so
``/API//Accounts/``, ``/api/./accounts``, ``/api/x/../accounts`` and ``/api/%61ccounts`` all
meet ``/api/accounts``. Matching is deliberately looser than any app router: a request the app
would treat as a route is always classed as that route; the reverse only costs a false block.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

from micafence.caches import BoundedCache
from micafence.policy.model import Route

_SEGMENT_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
METHOD_OVERRIDE_HEADERS = (b"x-http-method-override", b"x-http-method", b"x-method-override")
_CACHE_LIMIT = 4096
#: Paths longer than this are memoised under their digest, not their text (:func:`path_key`).
PATH_KEY_CHARS = 256
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


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
    """The policy's routes, compiled once; matching results are cached per method and path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple((route, compile_pattern(route.path)) for route in routes)
        self._named = frozenset(m for route, _ in self._routes for m in route.methods or ())
        # Keys are at most PATH_KEY_CHARS long: the entry ceiling bounds the bytes too.
        self._cache: BoundedCache[tuple[frozenset[str], str | bytes], tuple[Route, ...]] = (
            BoundedCache(_CACHE_LIMIT)
        )

    def named(self, methods: frozenset[str]) -> frozenset[str]:
        """The ``methods`` some route names. A method no route names (an override's junk)
        matches nothing its absence would not, so memo keys leave it out: it cannot make keys
        long or many."""
        return methods if methods <= self._named else methods & self._named

    def match(self, methods: frozenset[str], path: str) -> tuple[Route, ...]:
        """Every route matching any of ``methods`` on ``path`` (policy order)."""
        methods = self.named(methods)
        key = (methods, path_key(path))
        found = self._cache.get(key)
        if found is not None:
            return found
        canonical = normalize_path(path)
        found = tuple(
            route
            for route, regex in self._routes
            if (route.methods is None or not route.methods.isdisjoint(methods))
            and regex.fullmatch(canonical)
        )
        self._cache.put(key, found)
        return found


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

"""Cache safety: a response that depends on the visitor's zone must never reach another zone.

A CDN cannot key its cache on an IP-derived zone, so zone-dependent responses are made
``Cache-Control: private`` (merged into the app's own directives, never dropping ``no-store``)
and ``Vary`` names the request headers the decision reads. Targeted CDN cache headers
(``CDN-Cache-Control``, ``Surrogate-Control``, nginx's ``X-Accel-Expires``, …) are dropped: a
CDN or proxy cache that honours them would ignore ``private``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from micafence.policy.cache import CacheSetup
from micafence.policy.model import Outcome, Policy
from micafence.policy.routes import RouteTable

Headers = list[tuple[bytes, bytes]]

#: Cache-Control targeted at CDNs and reverse proxies (RFC 9213 and vendor spellings): they
#: override Cache-Control. ``X-Accel-Expires`` is nginx's: its ``proxy_cache`` gives it priority
#: over ``Cache-Control``, ``private`` included.
TARGETED_CACHE_HEADERS = frozenset({
    b"cdn-cache-control", b"surrogate-control", b"cloudflare-cdn-cache-control", b"edge-control",
    b"x-accel-expires",
})
_DIRECTIVE = re.compile(r'\s*([^,=\s]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')
# Directives that would let a shared cache keep the response, or only limit private caching.
_SHARED_ONLY = frozenset({"public", "s-maxage"})
_GET = frozenset({"GET"})


def merge_cache_control(values: Iterable[bytes]) -> bytes:
    """Every ``Cache-Control`` value merged into one that says ``private``.

    ``no-store``, ``no-cache``, ``max-age`` and the rest are kept; ``public`` and ``s-maxage``
    go; a field-qualified ``private="set-cookie"`` becomes the whole-response ``private``.
    """
    kept: list[str] = []
    for value in values:
        text = value.decode("latin-1")
        for match in _DIRECTIVE.finditer(text):
            name = match.group(1).lower()
            if name in _SHARED_ONLY or name == "private":
                continue
            directive = match.group(0).strip().rstrip(",").strip()
            if directive and directive.lower() not in (d.lower() for d in kept):
                kept.append(directive)
    kept.append("private")
    return ", ".join(kept).encode("latin-1")


def merge_vary(values: Iterable[bytes], names: Sequence[str]) -> bytes:
    """Every ``Vary`` value with ``names`` appended (case-insensitive, no duplicates)."""
    fields: list[str] = []
    for value in values:
        for name in value.decode("latin-1").split(","):
            name = name.strip()
            if name and name.lower() not in (f.lower() for f in fields):
                fields.append(name)
    if "*" in fields:
        return b"*"
    for name in names:
        if name.lower() not in (f.lower() for f in fields):
            fields.append(name)
    return ", ".join(fields).encode("latin-1")


def make_private(
    headers: Iterable[tuple[bytes, bytes]], vary: Sequence[str], private: bool = True
) -> Headers:
    """``headers`` with ``Cache-Control: private`` merged in and ``vary`` appended to ``Vary``
    (with ``private=False``: only ``Vary``, for a CDN that keys on what it names)."""
    out: Headers = []
    cache_control: list[bytes] = []
    vary_values: list[bytes] = []
    for name, value in headers:
        lower = bytes(name).lower()  # (a bytearray or memoryview name: bytes-like, as ASGI allows)
        if lower == b"vary":
            vary_values.append(value)
        elif not private:
            out.append((name, value))
        elif lower == b"cache-control":
            cache_control.append(value)
        elif lower not in TARGETED_CACHE_HEADERS:
            out.append((name, value))
    # The memos key on the values: bytes, whatever bytes-like object the app gave.
    if private:
        out.append((b"cache-control", _merged_cache_control(tuple(map(bytes, cache_control)))))
    merged_vary = _merged_vary(tuple(map(bytes, vary_values)), tuple(vary))
    if merged_vary:
        out.append((b"vary", merged_vary))
    return out


# A response's directives and Vary are one of a handful per app: the merges (a regex pass each)
# are remembered per value, bounded.
@lru_cache(maxsize=256)
def _merged_cache_control(values: tuple[bytes, ...]) -> bytes:
    return merge_cache_control(values)


@lru_cache(maxsize=256)
def _merged_vary(values: tuple[bytes, ...], names: tuple[str, ...]) -> bytes:
    return merge_vary(values, names)


class CacheSafety:
    """Which responses depend on the zone, and the headers that keep them out of shared caches.

    A response depends on the zone when it may be a page (HTML, XML or untyped: promotions are
    removed per zone) or when its route is one some rule treats differently by zone (a Swiss
    visitor's ``/earn`` page must not be served from a CDN to a French one). Built once per
    policy.
    """

    def __init__(self, policy: Policy) -> None:
        identity = policy.client_identity
        names: list[str] = []
        edge = policy.cache.edge_country_header if policy.cache.setup is CacheSetup.EDGE else None
        #: Set-up ``edge``: the CDN keys on this header, so answers vary on it, not private.
        self.edge = edge is not None
        if edge is not None:
            names.append(_title(edge))
        elif policy.client_ip.trusted_proxies:
            names.append(_title(policy.client_ip.header))
        if identity.source == "header":
            names.append(_title(identity.header))
            if identity.residence_header:
                names.append(_title(identity.residence_header))
        #: The request headers a decision reads: what a cache must key on, if it keys at all.
        self.vary: tuple[str, ...] = tuple(names)
        ruled = {rule.route_class for rule in policy.rules if rule.outcome is not Outcome.ALLOW}
        # A rule on the neutral class (an incident block, say) makes every response zone-bound.
        self.every_route = "neutral" in ruled
        self._routes = RouteTable(r for r in policy.routes if r.route_class in ruled)

    def route_depends_on_zone(self, path: str) -> bool:
        """Is ``path`` (for GET) a route whose answer some rule makes zone-dependent?"""
        return self.every_route or bool(self._routes.match(_GET, path))

    def mark(self, headers: Iterable[tuple[bytes, bytes]], personal: bool = False) -> Headers:
        """``headers`` made private (set-up ``edge``: only for a ``personal`` answer, one whose
        decision read a client id or residence the CDN does not key on) and varied."""
        return make_private(headers, self.vary, private=personal or not self.edge)


def _title(header: str) -> str:
    """``x-forwarded-for`` → ``X-Forwarded-For`` (for readable ``Vary`` values)."""
    return "-".join(part.capitalize() for part in header.split("-"))

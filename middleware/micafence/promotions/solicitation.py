"""Solicitation evidence: restricted visitors arriving through promotions or marketing links.

An EU visitor who lands on a referral page or follows a ``utm_*`` link was solicited by the
firm (RULES.md rule 3): that is recorded per client id, or per a first-party visitor cookie when
the visitor is anonymous, so a later claim of "I came on my own" can be checked against it.

Recording is evidence, not a gate: a store that fails or is slow never fails or delays the
answer beyond a short bound (the answer is a suppression anyway; blocking it gains nothing).
Nor can it fill a disk: markers are cut short, and how many records a visitor and a worker
write is bounded (:mod:`micafence.promotions.evidence_budget`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from http.cookies import SimpleCookie
from urllib.parse import unquote_plus

from micafence.policy.promotions import VisitorCookie
from micafence.records import SolicitationEvidence
from micafence.store.base import Store

logger = logging.getLogger("micafence.promotions.solicitation")

#: How long a request waits for its evidence to be written before answering anyway.
EVIDENCE_WAIT_SECONDS = 0.25
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: A marker is stored as ``name=value`` with the name cut to this many characters...
MARKER_NAME_LIMIT = 64
#: ... and the value to this many.
MARKER_VALUE_LIMIT = 200
#: The most one record takes in the file store (a JSON line) or the Redis store (a list item),
#: for policies whose zone names and route ids have at most 128 characters: a client id of up
#: to 128, the cut marker (at most 4 bytes a character once control characters are replaced).
MAX_RECORD_BYTES = 2048
# C0 controls and DEL would be written as 6-byte escapes: stored as "?".
_CONTROLS = dict.fromkeys([*range(0x20), 0x7F], "?")
# Evidence still being written after the wait: kept referenced so it is not collected.
_pending: set[asyncio.Task[None]] = set()


class MarkerMatcher:
    """Finds the first marketing marker (a listed query parameter) in a query string."""

    def __init__(self, markers: Sequence[str]) -> None:
        self._exact = frozenset(m for m in markers if not m.endswith("*"))
        self._prefixes = tuple(m[:-1] for m in markers if m.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def find(self, query: bytes) -> str | None:
        """``"name=value"`` of the first marker in ``query``, or ``None``."""
        if not query or not self:
            return None
        for pair in query.split(b"&"):
            raw_name, _, raw_value = pair.partition(b"=")
            name = unquote_plus(raw_name.decode("latin-1")).strip().lower()
            if name in self._exact or (name and name.startswith(self._prefixes)):
                value = unquote_plus(raw_value.decode("latin-1"))[:MARKER_VALUE_LIMIT]
                return f"{name[:MARKER_NAME_LIMIT]}={value}".translate(_CONTROLS)
        return None


def visitor_id(headers: Iterable[tuple[bytes, bytes]], cookie_name: str) -> str | None:
    """The visitor id in the request's first-party cookie, if it holds a well-formed one."""
    for name, value in headers:
        if name != b"cookie":
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value.decode("latin-1"))
        except Exception:  # a malformed Cookie header is the visitor's problem, not ours
            continue
        morsel = jar.get(cookie_name)
        if morsel is not None and _VISITOR_ID.fullmatch(morsel.value):
            return morsel.value
    return None


def evidence_visitor(client_id: str | None, cookie: str | None, address: str | None) -> str:
    """Who an arrival counts against: the signed-in client, else the visitor cookie presented,
    else the client address (an IPv6 address as its /64: one subscriber's block)."""
    if client_id is not None:
        return f"client:{client_id}"
    if cookie is not None:
        return f"cookie:{cookie}"
    if address is not None and ":" in address:
        try:
            return f"net:{ipaddress.IPv6Network((address, 64), strict=False)}"
        except ValueError:
            pass
    return f"ip:{address}"


def new_visitor_id() -> str:
    """A fresh random visitor id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def set_cookie_header(cookie: VisitorCookie, value: str, secure: bool) -> tuple[bytes, bytes]:
    """``Set-Cookie`` for the visitor id: first-party, HttpOnly, SameSite=Lax."""
    attributes = [
        f"{cookie.name}={value}", "Path=/", f"Max-Age={cookie.max_age_days * 86400}",
        "HttpOnly", "SameSite=Lax",
    ]
    if secure:
        attributes.append("Secure")
    return b"set-cookie", "; ".join(attributes).encode("latin-1")


def evidence(
    subject: str, zone: str, country: str | None, route_id: str | None, marker: str | None
) -> SolicitationEvidence:
    """One piece of evidence, timestamped now (UTC)."""
    return SolicitationEvidence(
        subject=subject, at=dt.datetime.now(dt.UTC), zone=zone, country=country,
        route_id=route_id, marker=marker,
    )


async def record(store: Store, item: SolicitationEvidence) -> None:
    """Write ``item``; wait at most :data:`EVIDENCE_WAIT_SECONDS`, never raise."""
    task = asyncio.ensure_future(_write(store, item))
    done, _ = await asyncio.wait({task}, timeout=EVIDENCE_WAIT_SECONDS)
    if not done:
        logger.warning("solicitation evidence for %s still being written after %.2fs; "
                       "answering without waiting", item.subject, EVIDENCE_WAIT_SECONDS)
        _pending.add(task)
        task.add_done_callback(_pending.discard)


async def _write(store: Store, item: SolicitationEvidence) -> None:
    try:
        await store.record_solicitation(item)
    except Exception:
        logger.exception("could not record solicitation evidence for %s (zone %s, route %s, "
                         "marker %s)", item.subject, item.zone, item.route_id, item.marker)

"""Solicited arrivals that count against a client: its own evidence and its linked arrivals.

Solicitation evidence (:mod:`micafence.promotions.solicitation`) is recorded under the client id
when the visitor is signed in, and under its first-party arrival cookie (``cookie:<visitor
id>``) when it is not. The first time such a cookie comes with an identity (a sign-in, or a
sign-up with an onboarding token), the arrival is **linked** to that client with an
:class:`~micafence.records.ArrivalLink` record in its history; from then on the evidence recorded
under the cookie counts against the client as if recorded under its id.

Evidence counts inside the policy's look-back window (``promotions.solicitation_lookback``,
default ``P12M``), which runs back from the client's own approach (a grant's ``initiated_at``)
and covers everything since. :func:`solicitations_of` gathers what counts; ``grant add``
(:class:`~micafence.grants.book.GrantBook`), onboarding tokens
(:func:`~micafence.grants.onboarding.issue_token`) and sign-ups
(:class:`~micafence.grants.onboarding.OnboardingGate`) refuse on it, unless a grant recorded with
an override reason **and approved by a second officer** already covered it (:func:`covered`).

:class:`ArrivalLinker` is what the pipeline calls for identified requests: it costs a header
scan when the request has no arrival cookie, and a dictionary look-up for a pair (cookie,
client) this process has seen; only a new pair goes to the store, in the background of the
request, and a store that fails never fails the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from micafence.caches import BoundedCache
from micafence.instants import Clock, utc_now
from micafence.logs import log_event
from micafence.records import AccountBinding, ArrivalLink, Grant, SolicitationEvidence

if TYPE_CHECKING:
    from micafence.asgi import Scope
    from micafence.policy.model import Policy
    from micafence.store.base import Store

logger = logging.getLogger("micafence.grants.arrivals")

COOKIE_SUBJECT = "cookie:"
#: How long a request waits for a new link to be written before going on without waiting.
LINK_WAIT_SECONDS = 0.25
#: (cookie, client) pairs a worker remembers having handled.
LINKER_ENTRIES = 10_000
#: A pair whose cookie had no evidence is looked at again after this long (new evidence may
#: have been recorded under the cookie since).
RECHECK_UNSOLICITED = dt.timedelta(minutes=10)
#: A pair the store failed on is tried again after this long.
RECHECK_FAILED = dt.timedelta(minutes=1)
_VISITOR_ID = re.compile(rb"[A-Za-z0-9_-]{16,64}")
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
# Links still being written after the wait: kept referenced so they are not collected.
_pending: set[asyncio.Task[None]] = set()


class Solicitation(NamedTuple):
    """A piece of evidence counting against a client, and the link that made it count
    (``None``: recorded under the client's own id)."""

    evidence: SolicitationEvidence
    link: ArrivalLink | None = None

    @property
    def known_at(self) -> dt.datetime:
        """When the firm could know it was this client's: recorded, or linked."""
        if self.link is None:
            return self.evidence.at
        return max(self.evidence.at, self.link.linked_at)

    def describe(self) -> str:
        item = self.evidence
        via = item.route_id or item.marker or "a marketing marker"
        text = f"{item.at.isoformat()} via {via}"
        if self.link is not None:
            text += (f" (arrival {self.link.subject}, linked "
                     f"{self.link.linked_at.isoformat()})")
        return text


async def solicitations_of(
    store: Store, client_id: str, since: dt.datetime
) -> list[Solicitation]:
    """The evidence that counts against ``client_id`` from ``since`` on, oldest first: recorded
    under its id, or under an arrival cookie linked to it; and so for the client whose grant
    opened ``client_id`` as its account (an onboarding token's binding): one client."""
    events = await store.grant_events(client_id)
    holders = dict.fromkeys(
        event.client_id for event in events if isinstance(event, AccountBinding)
        and event.account_id == client_id and event.client_id != client_id)
    found: list[Solicitation] = []
    for subject in (client_id, *holders):
        history = events if subject == client_id else await store.grant_events(subject)
        found += [Solicitation(e) for e in await store.solicitations(subject) if e.at >= since]
        for link in links_of(history, subject).values():
            found += [Solicitation(e, link) for e in await store.solicitations(link.subject)
                      if e.at >= since]
    unique = {item.evidence: item for item in reversed(found)}  # linked to both: once
    return sorted(unique.values(), key=lambda item: item.evidence.at)


def links_of(events: Iterable[object], client_id: str) -> dict[str, ArrivalLink]:
    """The first link of each arrival subject in a client's history."""
    links: dict[str, ArrivalLink] = {}
    for event in events:
        if isinstance(event, ArrivalLink) and event.client_id == client_id:
            links.setdefault(event.subject, event)
    return links


def covered(item: Solicitation, grant: Grant) -> bool:
    """Did ``grant`` override this evidence? Only a grant recorded with an override reason
    covers evidence, and only what could be known when it was recorded; the caller checks that
    the grant is in force (approved by a second officer)."""
    return grant.solicitation_override is not None and item.known_at <= grant.recorded_at


async def link_arrival(
    store: Store, client_id: str, subject: str, now: dt.datetime,
    evidence: list[SolicitationEvidence] | None = None,
    history: Iterable[object] | None = None,
) -> ArrivalLink | None:
    """Link the arrival ``subject`` to ``client_id`` unless it is linked already or has no
    evidence: the link (new or existing), or ``None``. ``evidence`` and ``history`` (the
    client's records) are read from the store when not given. Store errors are raised."""
    if history is None:
        history = await store.grant_events(client_id)
    existing = links_of(history, client_id).get(subject)
    if existing is not None:
        return existing
    if evidence is None:
        evidence = await store.solicitations(subject)
    if not evidence:
        return None
    first = min(evidence, key=lambda item: item.at)
    link = ArrivalLink(client_id, subject, first.at, now, first.route_id or first.marker)
    await store.append_grant_event(link)
    log_event(logging.WARNING, "solicitation.arrival_linked",
              f"micafence: client {client_id} came with arrival {subject}, solicited "
              f"{first.at.isoformat()}: its evidence counts against the client from now on",
              client_id=client_id, subject=subject, solicited_at=first.at.isoformat())
    return link


def arrival_cookie(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The well-formed visitor id in the request's ``name`` cookie, or ``None``: the same
    answer as :func:`~micafence.promotions.solicitation.visitor_id` for the ids micafence
    sets, without building a cookie jar (this runs for every identified request)."""
    for header, value in headers:
        if header != b"cookie" or name not in value:
            continue
        for pair in value.split(b";"):
            key, _, raw = pair.partition(b"=")
            if key.strip() == name:
                raw = raw.strip()
                if len(raw) > 1 and raw[:1] == raw[-1:] == b'"':
                    raw = raw[1:-1]
                if _VISITOR_ID.fullmatch(raw):
                    return raw.decode("ascii")
    return None


class ArrivalLinker:
    """Links arrival cookies to the identities they come with (one per middleware)."""

    def __init__(self, store: Store, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock
        # (subject, client) -> when to look again (_NEVER once linked, or being linked).
        self._seen: BoundedCache[tuple[str, str], dt.datetime] = BoundedCache(LINKER_ENTRIES)
        # A Cookie header's bytes -> the arrival subject in it ("" for none).
        self._subjects: BoundedCache[bytes, str] = BoundedCache(LINKER_ENTRIES, 4 << 20)
        self._cookie: object = None  # the policy's visitor cookie settings, and its name:
        self._name: bytes | None = None  # None when the cookie is off

    def seen(self, policy: Policy, client_id: str, scope: Scope) -> Awaitable[None] | None:
        """What to await for a request identified as ``client_id``: ``None`` (the common
        case) when it has no arrival cookie or this process handled the pair already."""
        value = self.cookie_header(policy, scope)
        if value is None:
            return None
        name = self._name
        assert name is not None  # cookie_header found it
        subject = self._subjects.get(value)  # a client's Cookie header is mostly the same
        if subject is None:
            visitor = arrival_cookie(scope.get("headers") or (), name)
            subject = "" if visitor is None else COOKIE_SUBJECT + visitor
            self._subjects.put(value, subject, len(value) + 100)
        if not subject:
            return None
        key = (subject, client_id)
        again = self._seen.get(key)
        if again is not None and (again is _NEVER or self.clock() < again):
            return None
        self._seen.put(key, _NEVER)  # concurrent requests of the pair do not link it twice
        return self._start(key)

    def cookie_header(self, policy: Policy, scope: Scope) -> bytes | None:
        """The first ``Cookie`` header that names the policy's arrival cookie: ``None`` (the
        common case) when there is none, so :meth:`seen` has nothing to link. No side effect:
        the pipeline asks it before deciding whether a request needs to await."""
        cookie = policy.promotions.visitor_cookie
        if cookie is not self._cookie:  # a policy (re)load
            self._cookie = cookie
            self._name = cookie.name.encode("latin-1") if cookie.enabled else None
        name = self._name
        if name is None:
            return None
        for header, value in scope.get("headers") or ():  # most requests carry no such cookie
            if header == b"cookie" and name in value:
                return bytes(value)
        return None

    async def _start(self, key: tuple[str, str]) -> None:
        task = asyncio.ensure_future(self._link(key))
        done, _ = await asyncio.wait({task}, timeout=LINK_WAIT_SECONDS)
        if not done:
            _pending.add(task)
            task.add_done_callback(_pending.discard)

    async def _link(self, key: tuple[str, str]) -> None:
        subject, client_id = key
        now = self.clock()
        try:
            link = await link_arrival(self.store, client_id, subject, now)
        except Exception:  # evidence, not a gate: the request goes on
            logger.exception("micafence: could not link arrival %s to client %s", subject,
                             client_id)
            self._seen.put(key, now + RECHECK_FAILED)
            return
        if link is None:
            self._seen.put(key, now + RECHECK_UNSOLICITED)

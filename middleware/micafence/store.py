"""The store: where grants and solicitation evidence live, chosen by URL.

A small async interface (:class:`Store`) with one backend per URL scheme: ``memory://`` (the
embedded default, one process) here; ``file://PATH`` (an append-only JSON Lines file shared by
the processes of one host, :mod:`micafence.store_file`); ``redis://`` in
:mod:`micafence.store_redis`. Grant history is append-only: a revocation is a new record, and
``grant_version`` counts the records so caches can tell when to refresh. Backends wrap
their driver's errors in :class:`~micafence.errors.StoreError`. One shared test suite
(``tests/test_store.py``) runs the same assertions on every backend.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .errors import StoreError
from .grants import Grant, GrantEvent


@dataclass(frozen=True, slots=True)
class SolicitationEvidence:
    """An EU arrival through a promotion route or a marketing marker: evidence that the firm
    solicited this visitor, which later counts against any claim of client initiative."""

    subject: str  # a client id, or "cookie:<first-party visitor id>" when anonymous
    at: dt.datetime
    zone: str
    country: str | None
    route_id: str | None  # the promotion route, if that is how they arrived
    marker: str | None  # the marketing marker seen, e.g. "ref=FRIEND10" or "utm_source=x"


class Store(ABC):
    """What micafence keeps between requests."""

    @abstractmethod
    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        """Append one piece of solicitation evidence (never overwritten, never deleted)."""

    @abstractmethod
    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        """Every piece of evidence recorded for ``subject``, oldest first."""

    @abstractmethod
    async def append_grant_event(self, event: GrantEvent) -> int:
        """Append a grant or a revocation to the history; return the new :meth:`grant_version`.

        Appending a grant whose id is already recorded raises :class:`StoreError`.
        """

    @abstractmethod
    async def grant_events(self, client_id: str | None = None) -> list[GrantEvent]:
        """The grant history, oldest first: one client's records, or everyone's (``None``)."""

    @abstractmethod
    async def grant_version(self) -> int:
        """How many grant records there are: it grows with every append, never shrinks."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


class MemoryStore(Store):
    """Everything in this process's memory: for the demo, tests and single-process apps."""

    def __init__(self) -> None:
        self._solicitations: dict[str, list[SolicitationEvidence]] = {}
        self._events: list[GrantEvent] = []
        self._by_client: dict[str, list[GrantEvent]] = {}
        self._grant_ids: set[str] = set()

    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        self._solicitations.setdefault(evidence.subject, []).append(evidence)

    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        return list(self._solicitations.get(subject, ()))

    async def append_grant_event(self, event: GrantEvent) -> int:
        if isinstance(event, Grant):
            if event.id in self._grant_ids:
                raise StoreError(f"grant {event.id} is already recorded")
            self._grant_ids.add(event.id)
        self._events.append(event)
        self._by_client.setdefault(event.client_id, []).append(event)
        return len(self._events)

    async def grant_events(self, client_id: str | None = None) -> list[GrantEvent]:
        if client_id is None:
            return list(self._events)
        return list(self._by_client.get(client_id, ()))

    async def grant_version(self) -> int:
        return len(self._events)

    async def close(self) -> None:
        return None


def open_store(url: str) -> Store:
    """The store for a URL: ``memory://``, ``file://PATH`` (``redis://`` comes with Redis)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "memory":
        return MemoryStore()
    if scheme.lower() == "file":
        from .store_file import FileStore

        return FileStore(rest)
    raise StoreError(f"unsupported store URL {url!r} (supported: memory://, file://PATH)")

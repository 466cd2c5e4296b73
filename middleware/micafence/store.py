"""The store: where grants and solicitation evidence live, chosen by URL.

A small async interface (:class:`Store`) with one backend per URL scheme: ``memory://`` (the
embedded default, one process) here; ``redis://`` in :mod:`micafence.store_redis`. Backends wrap
their driver's errors in :class:`~micafence.errors.StoreError`. One shared test suite
(``tests/test_store.py``) runs the same assertions on every backend.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .errors import StoreError


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
    async def close(self) -> None:
        """Release connections."""


class MemoryStore(Store):
    """Everything in this process's memory: for the demo, tests and single-process apps."""

    def __init__(self) -> None:
        self._solicitations: dict[str, list[SolicitationEvidence]] = {}

    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        self._solicitations.setdefault(evidence.subject, []).append(evidence)

    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        return list(self._solicitations.get(subject, ()))

    async def close(self) -> None:
        return None


def open_store(url: str) -> Store:
    """The store for a URL: ``memory://`` (``redis://`` and ``rediss://`` come with Redis)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    raise StoreError(f"unsupported store URL {url!r} (supported: memory://)")

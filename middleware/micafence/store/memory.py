"""``memory://``: everything in this process's memory, for the demo, tests and one-process apps.
"""

from __future__ import annotations

import datetime as dt

from micafence.caches import BoundedCache
from micafence.errors import StoreError
from micafence.records import (
    Grant,
    GrantEvent,
    GrantState,
    OnboardingTicket,
    SolicitationEvidence,
    filed_under,
)
from micafence.store.base import Store

_FOLDED_LIMIT = 10_000  # clients whose folded grants the memory store keeps at once


class MemoryStore(Store):
    """Everything in this process's memory: for the demo, tests and single-process apps."""

    def __init__(self) -> None:
        self._solicitations: dict[str, list[SolicitationEvidence]] = {}
        self._events: list[GrantEvent] = []
        self._by_client: dict[str, list[GrantEvent]] = {}
        self._grant_ids: set[str] = set()
        self._tickets: dict[str, OnboardingTicket] = {}
        # Per client, until a new record.
        self._folded: BoundedCache[str, tuple[GrantState, ...]] = BoundedCache(_FOLDED_LIMIT)

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
        for client in filed_under(event):
            self._by_client.setdefault(client, []).append(event)
        self._folded.clear()  # a binding changes its account's holdings too: forget them all
        return len(self._events)

    async def grant_events(self, client_id: str | None = None) -> list[GrantEvent]:
        if client_id is None:
            return list(self._events)
        return list(self._by_client.get(client_id, ()))

    async def grant_version(self) -> int:
        return len(self._events)

    def cached_grant_states(self, client_id: str) -> tuple[GrantState, ...] | None:
        return self._folded.get(client_id)  # what grant_states answers first

    async def grant_states(self, client_id: str) -> tuple[GrantState, ...]:
        # One tuple per client until a record changes (see Store.grant_states).
        states = self._folded.get(client_id)
        if states is None:
            version = len(self._events)
            states = await super().grant_states(client_id)
            if version == len(self._events):  # no record came in meanwhile (subclasses wait)
                self._folded.put(client_id, states)
        return states

    async def put_onboarding_ticket(self, ticket: OnboardingTicket) -> None:
        self._tickets[ticket.token_hash] = ticket

    async def take_onboarding_ticket(
        self, token_hash: str, now: dt.datetime
    ) -> OnboardingTicket | None:
        ticket = self._tickets.pop(token_hash, None)  # no await in between: atomic
        return ticket if ticket is not None and now < ticket.expires_at else None

    async def close(self) -> None:
        return None

    async def check(self) -> bool:
        return False  # nothing outside this process: the readiness report says "not configured"

"""The store interface: where grants, onboarding tickets and solicitation evidence live.

A small async interface (:class:`Store`) with one backend per URL scheme, chosen by
:func:`~micafence.store.opener.open_store`: ``memory://`` (the embedded default, one process,
:mod:`micafence.store.memory`); ``file://PATH`` (an append-only JSON Lines file shared by
the processes of one host, :mod:`micafence.store.file_store`); ``redis://`` and ``rediss://`` (one
Redis shared by every worker and instance, :mod:`micafence.store.redis_store`). Grant history is
append-only: a revocation is a new record, and ``grant_version`` counts the records so caches
can tell when to refresh. ``file://`` and ``redis://`` sign what they write with the grant key
(:mod:`micafence.grants.signing`). Backends wrap their driver's errors in
:class:`~micafence.errors.StoreError`, and name each operation that fails to the listener
given to :meth:`Store.report_failures_to` (the middleware's metrics count them:
``micafence_store_errors_total{operation}``). :meth:`Store.check` is what the readiness probe
asks. One shared test suite (``tests/test_store.py``)
runs the same assertions on every backend.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from micafence.policy.grant_store import DEFAULT_STORE_SETTINGS, StoreSettings
from micafence.records import (
    AccountBinding,
    GrantEvent,
    GrantState,
    OnboardingTicket,
    SolicitationEvidence,
    filed_under,
    fold,
    grant_id_of,
)

if TYPE_CHECKING:
    pass


class Store(ABC):
    """What micafence keeps between requests.

    A backend calls :meth:`report_failure` with the operation's name wherever an operation
    fails with :class:`~micafence.errors.StoreError` (the store is unreachable, a record cannot
    be read, the store is refused); a refusal such as a grant id already recorded is no
    failure of the store and is not reported."""

    _failure_listener: Callable[[str], None] | None = None

    def report_failures_to(self, listener: Callable[[str], None] | None) -> None:
        """Call ``listener(operation)`` for every operation that fails from now on (``None``:
        stop). :class:`~micafence.metrics.Metrics` listens to the middleware's store."""
        self._failure_listener = listener

    def report_failure(self, operation: str) -> None:
        """Say that ``operation`` (``grant_events``, ``record_solicitation``, …) failed."""
        listener = self._failure_listener
        if listener is not None:
            listener(operation)

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
    async def put_onboarding_ticket(self, ticket: OnboardingTicket) -> None:
        """Keep an onboarding ticket (its token only as a hash) until taken or expired."""

    @abstractmethod
    async def take_onboarding_ticket(
        self, token_hash: str, now: dt.datetime
    ) -> OnboardingTicket | None:
        """Take the unexpired ticket of ``token_hash`` for good, or ``None``. Atomic: of two
        concurrent takes of one ticket, exactly one gets it (in every process)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def check(self) -> bool:
        """Can the store serve now? The readiness probe's store check.

        Raises :class:`~micafence.errors.StoreError` saying what is wrong when the store cannot
        be reached or read; answers ``True`` when it answered, ``False`` when there is nothing
        outside this process to check (the memory store). A failure is reported like any
        other operation's (operation ``check``).
        """

    async def holdings(self, client_id: str) -> list[GrantEvent]:
        """The records of every grant ``client_id`` holds: its own, and those bound to it as
        the account opened with the grant's onboarding token (its holder's records of that
        grant). What service checks read; the Redis store answers it from a local cache."""
        events = await self.grant_events(client_id)
        bound = [e for e in events if isinstance(e, AccountBinding)
                 and e.account_id == client_id and e.client_id != client_id]
        for holder in dict.fromkeys(b.client_id for b in bound):
            ids = {b.grant_id for b in bound if b.client_id == holder}
            events = events + [e for e in await self.grant_events(holder)
                               if grant_id_of(e) in ids and client_id not in filed_under(e)]
        return events

    async def grant_states(self, client_id: str) -> tuple[GrantState, ...]:
        """:meth:`holdings` folded into grants, each with its revocation, approval and accounts
        (:func:`~micafence.grants.book.fold`): what a service check tests.

        A store that can should hand out the same tuple until one of the client's records
        changes (the memory store and the Redis store's cache do): the service check remembers
        its verdicts per tuple (:class:`~micafence.grants.gate.ScopeGate`). This default folds
        on every call, which is correct but never lets a verdict be reused."""
        return tuple(fold(await self.holdings(client_id)))

    def cached_grant_states(self, client_id: str) -> tuple[GrantState, ...] | None:
        """What :meth:`grant_states` would answer now from this process's own copy, without
        an await; ``None`` when there is none (then ask :meth:`grant_states`). The service
        check asks it first on every request. A store that overrides :meth:`grant_states`
        must override this too (this default holds no copy)."""
        return None

    async def start(self, settings: StoreSettings = DEFAULT_STORE_SETTINGS) -> None:
        """Start background work with the server's lifespan (the Redis store's cache
        invalidation and production checks); ``settings`` are the policy's."""
        return None

    async def stop(self) -> None:
        """Stop what :meth:`start` started."""
        return None

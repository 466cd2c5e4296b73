"""What the observers (audit log, metrics, readiness) read of a running micafence, as Protocols.

Observers are handed what they read, never the middleware object: a function answering the
enforcer in force now (the middleware swaps it on every reload, so an observer asks again each
time rather than keeping one), the store, the counters. These Protocols name exactly what they
read, so an observer depends on the policy model and the databases, not on the engine or the
middleware; :class:`~micafence.decide.Enforcer` satisfies them as it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Protocol

from micafence.asgi import Scope
from micafence.decision import Decision
from micafence.live.breakglass import BreakGlass
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.geo import GeoIPDatabase
from micafence.policy.model import Policy


class InForce(Protocol):
    """The enforcer in force: its policy, its databases and its effective-date horizon."""

    @property
    def policy(self) -> Policy: ...

    @property
    def geoip(self) -> GeoIPDatabase: ...

    @property
    def anonymizer(self) -> AnonymousIPDatabase | None: ...

    @property
    def breakglass(self) -> BreakGlass: ...

    @property
    def next_change(self) -> dt.datetime | None: ...


#: Answers the enforcer in force now (read again on every use: reloads swap it).
CurrentEnforcer = Callable[[], InForce]


class Deciding(InForce, Protocol):
    """An enforcer the metrics time a decision of."""

    def decide(self, scope: Scope) -> Decision: ...


class EvidenceCounts(Protocol):
    """Solicitation-evidence arrivals by outcome since the worker started (never reset)."""

    @property
    def counts(self) -> Mapping[str, int]: ...


class AuditCounters(Protocol):
    """What the audit log counts: its queue and its plain, ever-growing counters."""

    @property
    def backlog(self) -> int: ...

    @property
    def written(self) -> int: ...

    @property
    def aggregated(self) -> int: ...

    @property
    def refused(self) -> int: ...

    @property
    def write_errors(self) -> int: ...

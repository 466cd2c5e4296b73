"""How much solicitation evidence a worker writes: bounded per visitor, per worker, per window.

Evidence is written for restricted visitors arriving through a promotion route or with a
marketing marker; the visitor chooses how often that happens, and what the marker says. So,
in each window of the policy's ``promotions.evidence`` (tumbling windows on the wall clock):

- one record per visitor and arrival (promotion route and marker); a repeat is counted, not
  stored;
- at most ``per_visitor`` new records per visitor, and ``per_worker`` in all (every visitor
  together); the rest are dropped and counted.

A visitor is the signed-in client; else the visitor cookie the request presents; else the
client address, an IPv6 address as its /64 (one subscriber's block). A cookie handed out with a
record names the same visitor: its next arrival with the same marker is a repeat.

The bound. A record is at most :data:`~micafence.promotions.solicitation.MAX_RECORD_BYTES` in
the file or Redis store (markers are cut to 64 + 200 characters, control characters replaced).
So, per worker and window, one visitor adds at most ``per_visitor`` records and all visitors
together ``per_worker``: with the default policy (``PT1H``, 20, 1000) at most 40 KiB per visitor
and 2 MiB in all per worker and hour. ``uvicorn --workers N`` multiplies both by N: each worker
counts alone. A client changing cookies at will is a new visitor each time; only the
per-worker cap holds it.

Counts are monotonic per outcome (``recorded``, ``repeat``, ``dropped_visitor_rate``,
``dropped_worker_cap``): the Prometheus metric ``micafence_solicitation_evidence_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from micafence.policy.promotions import EvidenceLimits

#: Every outcome :meth:`EvidenceBudget.admit` counts, in the metric's ``outcome`` label.
OUTCOMES = ("recorded", "repeat", "dropped_visitor_rate", "dropped_worker_cap")

Arrival = tuple[str, str | None, str | None]  # visitor, promotion route, marker


class EvidenceBudget:
    """One worker's account of the evidence it wrote in the current window.

    Owned by the middleware, so a policy reload keeps it; the limits are the policy's at each
    call. Memory is bounded by the limits: at most ``2 * per_worker`` arrivals and
    ``per_worker`` visitors are remembered, and all is forgotten when the window ends.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        #: Arrivals by outcome since the worker started (never reset).
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._window: tuple[int, EvidenceLimits] | None = None
        self._seen: set[Arrival] = set()
        self._per_visitor: dict[str, int] = {}
        self._recorded = 0

    def admit(
        self, limits: EvidenceLimits, visitor: str, route_id: str | None, marker: str | None,
        alias: str | None = None,
    ) -> bool:
        """Should the arrival of ``visitor`` (through ``route_id``, with ``marker``) be written?

        ``alias`` is another name of the same visitor (the cookie handed out with this
        record): a later arrival under it is a repeat too. Counts the outcome either way.
        """
        window = (int(self._clock() // limits.window_seconds), limits)
        if window != self._window:
            self._window = window
            self._seen.clear()
            self._per_visitor.clear()
            self._recorded = 0
        if (visitor, route_id, marker) in self._seen:
            return self._count("repeat")
        written = self._per_visitor.get(visitor, 0)
        if written >= limits.per_visitor:
            return self._count("dropped_visitor_rate")
        if self._recorded >= limits.per_worker:
            return self._count("dropped_worker_cap")
        self._seen.add((visitor, route_id, marker))
        if alias is not None:
            self._seen.add((alias, route_id, marker))
        self._per_visitor[visitor] = written + 1
        self._recorded += 1
        self.counts["recorded"] += 1
        return True

    def _count(self, outcome: str) -> bool:
        self.counts[outcome] += 1
        return False

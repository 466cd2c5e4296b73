"""The client registry: where each client is established, whatever network it uses.

A client's **standing** (:class:`~micafence.records.Standing`) is folded from its history in
the store: its latest :class:`~micafence.records.Residence` record (made by an officer with
``micafence client set``, or by the host app with :meth:`ClientRegistry.record_residence` at
sign-up or KYC time) and the countries named by the grants it holds (recorded with ``grant add
--country``, or bound to the account its onboarding token opened). The records are grant-history
records, so every store keeps, signs and caches them as it keeps grants.

The pipeline asks :meth:`ClientRegistry.cached` on every identified request (one dictionary
look-up while the entry is fresh) and :meth:`ClientRegistry.standing` when it is not. An entry
is fresh for :data:`FRESH_SECONDS`: with the Redis store's own cache (trusted for 0.75 s at
most), a change is seen by every worker within a second. When the store cannot be read, the
last standing read is used however old; with none, the client counts as the unknown country
(:data:`~micafence.records.UNKNOWN_STANDING`).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from micafence.caches import BoundedCache
from micafence.identity import clean_client_id, clean_country
from micafence.instants import Clock, utc_now
from micafence.records import (
    UNKNOWN_STANDING,
    GrantEvent,
    Residence,
    Standing,
    standing_of,
)
from micafence.store.base import Store

if TYPE_CHECKING:
    from micafence.audit.log import AuditLog

logger = logging.getLogger("micafence")

#: Seconds a standing read from the store is served without asking it again.
FRESH_SECONDS = 0.25
_ENTRIES = 100_000  # clients remembered per process; a full cache starts over
_LOG_EVERY = 10.0
_SOURCES = ("officer", "app", "grant", "onboarding")
_MAX_TEXT = 500


class ClientRegistry:
    """Where clients are established: read (for every identified request) and written."""

    def __init__(
        self, store: Store, *, clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self._monotonic = monotonic
        # Client id -> (standing, monotonic time it is fresh until). Kept past freshness: an
        # outage falls back to it.
        self._known: BoundedCache[str, tuple[Standing, float]] = BoundedCache(_ENTRIES)
        self._logged_at = -_LOG_EVERY
        #: The decision log that records every residence recorded here (``client.residence``):
        #: the middleware's, for ``fence.clients``.
        self.audit: AuditLog | None = None

    def cached(self, client_id: str) -> Standing | None:
        """The client's standing if read less than :data:`FRESH_SECONDS` ago, else ``None``."""
        entry = self._known.get(client_id)
        if entry is not None and self._monotonic() < entry[1]:
            return entry[0]
        return None

    async def standing(self, client_id: str) -> Standing:
        """The client's standing, read from the store; on a store failure the last one read,
        else :data:`~micafence.records.UNKNOWN_STANDING`."""
        try:
            standing = standing_of(await self.store.holdings(client_id))
        except Exception:  # the store failing must not take the request down
            if self._monotonic() - self._logged_at >= _LOG_EVERY:
                self._logged_at = self._monotonic()
                logger.exception("micafence: client registry unavailable (the last standing "
                                 "read is used; unknown clients count as the unknown country;"
                                 " logged at most every %g s)", _LOG_EVERY)
            entry = self._known.get(client_id)
            return entry[0] if entry is not None else UNKNOWN_STANDING
        entry = self._known.get(client_id)
        if entry is not None and entry[0] == standing:
            # The same object while nothing changed: the pipeline remembers decisions per
            # standing object (Pipeline._known), and a refresh must not forget them.
            standing = entry[0]
        self._known.put(client_id, (standing, self._monotonic() + FRESH_SECONDS))
        return standing

    # -- writing and reading the records (CLI, host app) --------------------------------------

    async def record_residence(
        self, client_id: str, country: str, *, evidence: str, by: str, source: str = "app",
    ) -> Residence:
        """Record where ``client_id`` is established (the host app at sign-up or KYC time:
        ``by`` names who or what, ``evidence`` the KYC file or document). Appended, never
        overwritten: the latest record is the registry's word, and the decision log (if any)
        records it. Raises ``ValueError`` for an id, country or text that cannot be recorded,
        :class:`StoreError` if the store fails."""
        clean_id = clean_client_id(client_id)
        if clean_id is None:
            raise ValueError(f"not a client id: {client_id!r} (letters, digits, . _ : @ -)")
        clean = clean_country(country)
        if clean is None or clean != country.strip().upper():
            raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {country!r}")
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {', '.join(_SOURCES)}, not {source!r}")
        record = Residence(clean_id, clean, _text("evidence", evidence), _text("by", by),
                           self.clock(), source)
        await self.store.append_grant_event(record)
        if self.audit is not None:
            self.audit.record_grant(record)
        await self.standing(clean_id)  # this worker sees it at once
        return record

    async def history(self, client_id: str) -> builtins.list[GrantEvent]:
        """Every record the registry holds of the client (residences and linked arrivals),
        with its grant records, oldest first."""
        return await self.store.holdings(client_id)

    async def list(self) -> builtins.list[tuple[str, Standing]]:
        """Every client with a standing (a residence or a grant), by client id."""
        events = await self.store.grant_events()
        by_client: dict[str, builtins.list[GrantEvent]] = {}
        for event in events:
            by_client.setdefault(event.client_id, []).append(event)
        found = []
        for client_id in sorted(by_client):
            standing = standing_of(await self.store.holdings(client_id))
            if standing:
                found.append((client_id, standing))
        return found


def _text(name: str, value: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > _MAX_TEXT or not text.isprintable():
        raise ValueError(f"{name} must be printable text of 1 to {_MAX_TEXT} characters")
    return text


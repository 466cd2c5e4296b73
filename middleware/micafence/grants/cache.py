"""The Redis store's local grant cache, and what keeps it honest.

A service check reads the client's grant records from this process's memory: one dictionary
look-up, no network round trip. redis-py's own client-side caching is synchronous only and
needs Redis 7.4, so the cache is kept honest here, by two background tasks started with the
server's lifespan (:class:`CacheInvalidator`):

- a **pub/sub listener** on the store's change channel: every grant record written publishes on
  it (in the same script as the write), and any message flushes the whole cache (grant changes
  are rare; a targeted flush would have to follow account bindings). Every (re)subscription
  flushes it too, since messages sent while the connection was down are lost;
- a **version poller**: every ``poll_interval`` (0.25 s) it reads the store's ``grant_version``
  and flushes on any change, which catches a message that never arrived.

An entry is served only while the channel is subscribed **and** a version read sent less than
``max_staleness`` (0.75 s) ago confirmed it: whatever goes wrong (pub/sub down, a poll that
hangs, an event loop too busy to poll), the cache then counts as empty and checks go to Redis,
which fail closed when Redis is down. So a revocation is enforced by every instance within
milliseconds while pub/sub works, and within ``max_staleness`` at worst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from micafence.background import stop_task
from micafence.caches import BoundedCache
from micafence.logs import log_event
from micafence.records import GrantEvent, GrantState, fold

POLL_INTERVAL = 0.25
MAX_STALENESS = 0.75
_LIMIT = 100_000  # clients kept; a full cache starts again empty
_RETRY_CAP = 1.0
_RECHECK_REFUSED = 5.0  # seconds between checks of a server the store refuses to trust


class _Refused(Exception):
    """The subscription works, but the store refuses to trust this server (its checks)."""


class GrantCache:
    """Client id → that client's grant records, trusted only while invalidation works."""

    def __init__(
        self, *, max_staleness: float = MAX_STALENESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_staleness = max_staleness
        self._clock = clock
        # Client id -> (its records, folded into grants once, for the service checks).
        self._entries: BoundedCache[str, tuple[tuple[GrantEvent, ...], tuple[GrantState, ...]]] = (
            BoundedCache(_LIMIT))
        self._generation = 0
        self._version: int | None = None
        self._verified_at = float("-inf")
        self._subscribed = False

    @property
    def live(self) -> bool:
        """May entries be served now: channel subscribed and the version recently confirmed."""
        return self._subscribed and self._clock() - self._verified_at < self.max_staleness

    @property
    def generation(self) -> int:
        """Read before loading from Redis, hand to :meth:`put`: a flush in between wins."""
        return self._generation

    def get(self, client_id: str) -> tuple[GrantEvent, ...] | None:
        """The client's records, or ``None``: not cached, or the cache cannot be trusted now."""
        entry = self._entry(client_id)
        return None if entry is None else entry[0]

    def states(self, client_id: str) -> tuple[GrantState, ...] | None:
        """The client's records folded into grants (:func:`~micafence.grants.book.fold`), or
        ``None`` as for :meth:`get`. (:meth:`_entry` in this frame: every grant check asks.)"""
        if not self._subscribed or self._clock() - self._verified_at >= self.max_staleness:
            return None
        entry = self._entries.get(client_id)
        return None if entry is None else entry[1]

    def _entry(
        self, client_id: str
    ) -> tuple[tuple[GrantEvent, ...], tuple[GrantState, ...]] | None:
        if not self._subscribed or self._clock() - self._verified_at >= self.max_staleness:
            return None
        return self._entries.get(client_id)

    def put(self, client_id: str, events: tuple[GrantEvent, ...], generation: int) -> None:
        """Keep what was loaded, unless the cache was flushed while it was being loaded."""
        if generation != self._generation or not self._subscribed:
            return
        self._entries.put(client_id, (events, tuple(fold(events))))

    def flush(self) -> None:
        self._entries.clear()
        self._generation += 1

    def confirm(self, version: int, sent_at: float) -> None:
        """A version read sent at ``sent_at`` (monotonic) answered ``version``."""
        if version != self._version:
            self.flush()
            self._version = version
        self._verified_at = max(self._verified_at, sent_at)

    def channel_up(self) -> None:
        self.flush()  # messages sent while the channel was down are lost: start again
        self._subscribed = True

    def channel_down(self) -> None:
        self._subscribed = False
        self.flush()


class CacheInvalidator:
    """The listener and poller tasks of one :class:`GrantCache` (a ``redis.asyncio`` client).

    ``read_version`` reads the store's version; ``on_subscribed`` runs on every
    (re)subscription before the cache goes live (the store's production checks): ``False``
    keeps the cache empty, and the server is checked again every few seconds.
    """

    def __init__(
        self, cache: GrantCache, client: Any, channel: str, *,
        read_version: Callable[[], Awaitable[int]],
        on_subscribed: Callable[[], Awaitable[bool]] | None = None,
        poll_interval: float = POLL_INTERVAL, location: str = "redis",
    ) -> None:
        self.cache = cache
        self._client = client
        self._channel = channel
        self._read_version = read_version
        self._on_subscribed = on_subscribed
        self._poll_interval = poll_interval
        self._location = location
        self._tasks: list[asyncio.Task[None]] = []
        self._down_since: float | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._listen(), name="micafence-grant-listener"),
                           loop.create_task(self._poll(), name="micafence-grant-poller")]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*(stop_task(task) for task in tasks))
        self.cache.channel_down()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = None
            try:
                await self._client.initialize()  # a Redis Cluster client learns its slots here
                pubsub = self._client.pubsub()
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # also after redis-py reconnected itself
                        if self._on_subscribed is not None and not await self._on_subscribed():
                            raise _Refused
                        self.cache.channel_up()
                        sent = time.monotonic()
                        self.cache.confirm(await self._read_version(), sent)
                        self._recovered()
                        delay = 0.05
                    elif message["type"] == "message":
                        self.cache.flush()
            except asyncio.CancelledError:
                raise
            except _Refused:
                self.cache.channel_down()
                await asyncio.sleep(_RECHECK_REFUSED)
            except Exception as exc:  # the driver's errors: count as down
                self.cache.channel_down()
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_CAP)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    async def _poll(self) -> None:
        failing = False
        while True:
            sent = time.monotonic()
            try:
                version = await self._read_version()
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    failing = True
                    self.cache.flush()
            else:
                if failing:  # a new connection: what happened meanwhile is unknown
                    failing = False
                    self.cache.flush()
                self.cache.confirm(version, sent)
            await asyncio.sleep(self._poll_interval)

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log_event(logging.ERROR, "store.outage",
                      f"micafence: grant store {self._location} unreachable ({exc}): grant "
                      "checks go to the store and fail closed until it answers",
                      location=self._location, detail=str(exc))

    def _recovered(self) -> None:
        if self._down_since is not None:
            seconds = time.monotonic() - self._down_since
            self._down_since = None
            log_event(logging.WARNING, "store.recovered",
                      f"micafence: grant store {self._location} answers again after "
                      f"{seconds:.1f} s; local grant cache flushed and live",
                      location=self._location, seconds=round(seconds, 3))

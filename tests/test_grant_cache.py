"""The Redis store's local grant cache: served only while invalidation works, and bounded.

First the cache's own rules with a clock the test moves, then the listener and poller against a
private redis-server: a missed pub/sub message is caught by the version poll, a dead server
empties the cache (checks go to Redis and fail closed), a restarted one is trusted again only
after a flush.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from micafence.errors import StoreError
from micafence.grants.cache import GrantCache
from micafence.grants.signing import GrantKey
from micafence.records import Revocation
from micafence.store.redis_store import RedisStore
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

KEY = GrantKey.from_text("grant-cache-test-key-" + "0" * 20)
NOW = dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.UTC)
REVOKED = (Revocation("grt_1", "alice", NOW, "ops", "r"),)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def live_cache() -> tuple[GrantCache, Clock]:
    clock = Clock()
    cache = GrantCache(max_staleness=0.75, clock=clock)
    cache.channel_up()
    cache.confirm(1, clock.now)
    return cache, clock


def test_entries_are_served_only_while_channel_and_version_vouch_for_them() -> None:
    clock = Clock()
    cache = GrantCache(max_staleness=0.75, clock=clock)
    cache.put("alice", REVOKED, cache.generation)
    assert cache.get("alice") is None  # nothing is kept before the channel is up
    cache.channel_up()
    cache.put("alice", REVOKED, cache.generation)
    assert cache.get("alice") is None  # ... nor served before a version read confirms it,
    cache.confirm(7, clock.now)
    assert (cache.get("alice"), cache.live) == (None, True)  # which flushes what it predates
    cache.put("alice", REVOKED, cache.generation)
    assert cache.get("alice") == REVOKED
    clock.now += 0.74
    assert cache.get("alice") == REVOKED
    clock.now += 0.02  # no confirmation for max_staleness: the cache counts as empty
    assert (cache.get("alice"), cache.live) == (None, False)
    cache.confirm(7, clock.now)  # the same version again: the entry is still good
    assert cache.get("alice") == REVOKED


@pytest.mark.parametrize(("event", "kept"), [
    pytest.param(lambda c, clock: c.confirm(2, clock.now), False, id="version-changed"),
    pytest.param(lambda c, clock: c.confirm(1, clock.now), True, id="version-same"),
    pytest.param(lambda c, clock: c.flush(), False, id="message"),
    pytest.param(lambda c, clock: c.channel_up(), False, id="resubscribed"),
    pytest.param(lambda c, clock: c.channel_down(), False, id="channel-down"),
])
def test_what_empties_the_cache(event: Callable[[GrantCache, Clock], None], kept: bool) -> None:
    cache, clock = live_cache()
    cache.put("alice", REVOKED, cache.generation)
    event(cache, clock)
    cache.confirm(cache._version or 0, clock.now)  # keep it otherwise live
    assert (cache.get("alice") is not None) is kept


def test_a_load_that_raced_a_flush_is_not_kept() -> None:
    cache, _ = live_cache()
    generation = cache.generation  # a load from Redis starts ...
    cache.flush()  # ... a revocation is announced meanwhile ...
    cache.put("alice", (), generation)  # ... and the old answer arrives
    assert cache.get("alice") is None


# -- with a real redis-server ------------------------------------------------------------------


async def eventually(check: Callable[[], bool], within: float = 3.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def raw(url: str, action: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await action(client)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_invalidation_by_message_and_by_version_poll(redis_url: str) -> None:  # noqa: F811
    store = RedisStore(redis_url, key=KEY, poll_interval=0.25)
    await store.start()
    await eventually(lambda: store.cache.live)
    await store.holdings("alice")
    assert store.cache.get("alice") == ()  # "no grants" is cached too
    # A message on the channel (as every grant write publishes) flushes at once.
    await raw(redis_url, lambda r: r.publish(store.keys.channel, "alice"))
    assert await eventually(lambda: store.cache.get("alice") is None) < 0.25
    # A change whose message never arrived is caught by the version poll.
    await store.holdings("alice")
    await raw(redis_url, lambda r: r.incr(store.keys.version))
    assert await eventually(lambda: store.cache.get("alice") is None) < 0.6
    await store.close()


@pytest.mark.redis
async def test_a_dead_redis_empties_the_cache_and_a_restarted_one_is_trusted_again(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    store = RedisStore(redis_server.url, key=KEY, poll_interval=0.05, max_staleness=0.3)
    await store.start()
    await eventually(lambda: store.cache.live)
    await store.holdings("alice")
    assert store.cache.get("alice") == ()
    redis_server.stop()
    took = await eventually(lambda: store.cache.get("alice") is None)
    # Never served beyond max_staleness (0.3 s) without a confirmation; the slack is the test
    # loop's own wake-up delay, which reached 50 ms once on a loaded 2-core machine.
    assert took < 0.45
    with pytest.raises(StoreError):  # the check goes to Redis, which is not there: closed
        await store.holdings("alice")
    restarted = RedisServer(tmp_path, port=redis_server.port)
    try:
        await eventually(lambda: store.cache.live, within=5)
        assert store.cache.get("alice") is None  # flushed on reconnection
        # An idle pooled connection to the old process may still fail one read closed
        # (StoreError, never a stale answer); the next reads get fresh connections.
        for attempt in range(3):
            try:
                held = await store.holdings("alice")
                break
            except StoreError:
                assert attempt < 2, "grant reads still failing after the restart"
        assert held == []
        assert store.cache.get("alice") == ()
    finally:
        await store.close()
        restarted.stop()

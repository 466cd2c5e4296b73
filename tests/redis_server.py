"""A private, throw-away redis-server for tests: never the machine's Redis on 6379.

    from tests.redis_server import redis_url  # noqa: F401  (a pytest fixture)

    async def test_records_land_in_the_stream(redis_url: str) -> None:  # as test_audit_redis
        log = AuditLog(open_sink(f"{redis_url}#{STREAM}"), key=KEY)  # this test's own server

The server (:class:`micafence_tools.bench.redis_server.RedisServer`) listens on a free port on
127.0.0.1, keeps nothing on disk and is killed at teardown. Tests using it fail, never skip,
when ``redis-server`` is not installed (``bash tests/run`` installs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from micafence_tools.bench.redis_server import RedisServer

__all__ = ["RedisServer", "redis_server", "redis_url"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test."""
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a fresh redis-server (``redis://127.0.0.1:PORT/0``)."""
    return redis_server.url

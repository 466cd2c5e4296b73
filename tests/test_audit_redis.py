"""The Redis Stream sink against a real, private redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import redis.asyncio as redis

from micafence.audit.log import AuditLog
from micafence.audit.reader import load_log
from micafence.audit.sinks import RedisStreamSink, open_sink
from micafence.cli import main
from tests.audit_support import KEY, KEY_TEXT, SE, client, guarded
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.redis
STREAM = "exchange:audit"


async def test_records_land_in_the_stream_and_verify(redis_url: str) -> None:  # noqa: F811
    log = AuditLog(open_sink(f"{redis_url}#{STREAM}"), key=KEY)
    assert isinstance(log.sink, RedisStreamSink)
    async with client(guarded(log)) as http:
        await http.post("/api/accounts", headers={"X-Forwarded-For": SE})
        await http.post("/api/withdrawals", headers={"X-Forwarded-For": SE, "X-Client-Id": "c"})
    assert log.record_event("onboarding.token_used", {"token": "t-1"})
    await log.aclose()

    connection = redis.Redis.from_url(redis_url)
    entries = await connection.xrange(STREAM)
    await connection.aclose()
    kinds = [json.loads(fields[b"record"])["kind"] for _, fields in entries]
    assert kinds == ["open", "decision", "decision", "event", "checkpoint", "close"]
    assert {fields[b"writer"].decode() for _, fields in entries} == {log.writer}

    loaded = await asyncio.to_thread(load_log, [f"{redis_url}#{STREAM}"], KEY,
                                     require_closed=True)
    assert loaded.ok, loaded.problems
    assert [r.get("reason") for r in loaded.entries()] == [
        "eu.account_creation", "eu.wind_down", None]


async def test_a_deleted_stream_entry_is_caught(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    log = AuditLog(f"{redis_url}#{STREAM}", key=KEY)
    for n in range(4):
        assert log.record_event("onboarding.token_used", {"token": f"t{n}"})
    await log.aclose()
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    target = f"{redis_url}#{STREAM}"
    assert await asyncio.to_thread(main, ["audit", "verify", target]) == 0
    connection = redis.Redis.from_url(redis_url)
    entries = await connection.xrange(STREAM)
    deleted = entries[2][0].decode()
    await connection.xdel(STREAM, deleted)
    await connection.aclose()
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["audit", "verify", target]) == 1
    out = capsys.readouterr().out
    assert f"{target}@{entries[3][0].decode()}: seq 3 where 2 was expected" in out


async def test_an_outage_keeps_records_queued_until_redis_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)
    url = f"{server.url}#{STREAM}"
    log = AuditLog(url, key=KEY, flush_interval=0.02)
    caplog.set_level(logging.WARNING, logger="micafence")
    try:
        assert log.record_event("grant.recorded", {"id": "g-1"})
        await log.flush()
        port = server.port
        server.stop()  # Redis goes away
        assert log.record_event("grant.recorded", {"id": "g-2"})
        await asyncio.sleep(0.3)
        assert log.backlog == 1 and log.write_errors >= 1
        assert "audit.sink_failed" in {getattr(r, "event", None) for r in caplog.records}
        server = RedisServer(tmp_path, port)
        await asyncio.sleep(0.5)
        await log.aclose()
    finally:
        server.stop()
    assert "audit.sink_recovered" in {getattr(r, "event", None) for r in caplog.records}
    # The restarted server keeps nothing on disk: only what was written after the outage is
    # there, chained after records this store no longer has.
    assert log.backlog == 0 and log.written == 2


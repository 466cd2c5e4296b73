"""The readiness endpoint: what the worker enforces, and 503 when it should not serve."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from micafence import MicafenceMiddleware, StoreError, load_policy_text
from micafence.live.breakglass import throw
from micafence.store.base import MemoryStore
from tests.conftest import MAXMIND, ServerThread
from tests.live import (
    TEST_DB_EPOCH,
    Clock,
    build_country_db,
    client_for,
    copy_country_db,
    decision_app,
    replace_file,
)

BUILT = dt.datetime.fromtimestamp(TEST_DB_EPOCH, dt.UTC)
POLICY = """\
policy: 1
name: health-test
zones:
  eu: {countries: [SE, DE]}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
rules:
  - {id: no-new-accounts, zones: [eu], class: account_creation, outcome: block}
  - id: later
    zones: [eu]
    class: neutral
    outcome: block
    effective_from: 2030-01-01T00:00:00Z
database:
  max_age: P14D
"""


class PingingStore(MemoryStore):
    """The memory store with a ``ping`` that answers or fails, as a networked store's does."""

    def __init__(self, reachable: bool) -> None:
        super().__init__()
        self.reachable = reachable

    async def ping(self) -> None:
        if not self.reachable:
            raise StoreError("redis://10.0.0.9:6379: connection refused")


def guarded_app(database: Path | None = None, **options: Any) -> MicafenceMiddleware:
    inner = decision_app()
    guarded = MicafenceMiddleware(
        inner, policy=load_policy_text(POLICY, "health.yaml"),
        geoip_db=database or MAXMIND / "GeoIP2-Country-Test.mmdb", **options,
    )
    inner.router.routes.insert(0, Route("/healthz", guarded.health_app()))
    return guarded


async def health(guarded: MicafenceMiddleware, method: str = "GET") -> httpx.Response:
    async with client_for(guarded) as client:
        return await client.request(method, "/healthz")


async def test_ready_worker_reports_what_it_enforces(tmp_path: Path) -> None:
    throw(tmp_path, on=True, by="alice", why="INC-3")
    guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=3, hours=2)), watch=False,
                          anonymizer_db=MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb",
                          breakglass_dir=tmp_path)
    response = await health(guarded)
    assert response.status_code == 200
    report = response.json()
    assert (report["ready"], report["problems"]) == (True, [])
    assert report["database"] == {
        "type": "GeoIP2-Country", "path": str(MAXMIND / "GeoIP2-Country-Test.mmdb"),
        "built_at": "2026-02-04T22:49:29+00:00", "age": "P3DT2H", "max_age": "P14D",
        "loaded_at": "2026-02-08T00:49:29+00:00",
    }
    assert report["policy"]["name"] == "health-test"
    assert report["policy"]["revision"] == guarded.enforcer.policy.revision
    assert report["policy"]["next_change"] == "2030-01-01T00:00:00+00:00"
    assert report["anonymizer"]["type"] == "GeoIP2-Anonymous-IP"
    assert report["breakglass"]["active"] is True
    assert report["breakglass"]["switches"][0]["by"] == "alice"
    assert report["store"] == {"status": "not configured", "kind": "MemoryStore"}
    assert report["reload"]["last_refused"] is None


async def test_a_database_older_than_max_age_is_not_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="micafence"):
        guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=14, seconds=1)), watch=False)
    response = await health(guarded)
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "GeoIP database built 2026-02-04 is older than database.max_age (P14D)"]
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "database.stale"]
    assert warning.levelno == logging.WARNING


async def test_exactly_max_age_is_still_ready() -> None:
    guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=14)), watch=False)
    assert (await health(guarded)).status_code == 200


@pytest.mark.parametrize(
    ("reachable", "status", "store"),
    [
        (True, 200, {"status": "ok", "kind": "PingingStore"}),
        (False, 503, {"status": "unreachable", "kind": "PingingStore",
                      "detail": "redis://10.0.0.9:6379: connection refused"}),
    ],
)
async def test_store_reachability(reachable: bool, status: int, store: dict[str, str]) -> None:
    guarded = guarded_app(clock=Clock(BUILT), watch=False, store=PingingStore(reachable))
    response = await health(guarded)
    assert response.status_code == status
    assert response.json()["store"] == store
    if not reachable:
        assert response.json()["problems"] == [
            "store unreachable: redis://10.0.0.9:6379: connection refused"]


async def test_head_answers_without_a_body() -> None:
    response = await health(guarded_app(clock=Clock(BUILT), watch=False), "HEAD")
    assert (response.status_code, response.content) == (200, b"")


async def test_never_stored_by_caches() -> None:
    endpoint = guarded_app(clock=Clock(BUILT), watch=False).health_app()
    async with client_for(endpoint) as client:  # the endpoint on its own, outside the app
        response = await client.get("/")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.server
async def test_follows_reloads_under_a_real_server(tmp_path: Path) -> None:
    database = copy_country_db(tmp_path)
    guarded = guarded_app(database, reload_interval=0.05)
    newer = build_country_db(tmp_path / "newer.mmdb", {"89.160.20.112/28": "SE"},
                             TEST_DB_EPOCH + 86400)

    async def poll(predicate: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(300):
                report: dict[str, Any] = (await client.get("/healthz")).json()
                if predicate(report):
                    return report
                await asyncio.sleep(0.02)
        raise AssertionError("health never showed the change")

    with ServerThread(guarded) as server:
        first = await poll(lambda r: True)
        assert first["ready"] is False  # MaxMind's test database is older than 14 days
        replace_file(MAXMIND / "bad-data" / "cyclic-data-structure.mmdb", database)
        refused = await poll(lambda r: r["reload"]["last_refused"] is not None)
        replace_file(newer, database)
        loaded = await poll(lambda r: r["database"]["built_at"] != first["database"]["built_at"])
    assert refused["reload"]["last_refused"]["kind"] == "geoip"
    assert "not a valid MaxMind database" in refused["reload"]["last_refused"]["problem"]
    # The refused file changed nothing: same database (its age alone moves with the clock).
    assert {k: v for k, v in refused["database"].items() if k != "age"} == {
        k: v for k, v in first["database"].items() if k != "age"}
    assert loaded["database"]["built_at"] == "2026-02-05T22:49:29+00:00"

"""Liveness and readiness: what the worker enforces, ``degraded`` or 503 by the policy's
``health`` section, and probes and scrapes that micafence answers without deciding them."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from micafence import MicafenceMiddleware, PolicyError, StoreError, load_policy_text
from micafence.audit.log import AuditLog
from micafence.audit.report import build_report
from micafence.audit.sinks import FileSink
from micafence.live.breakglass import throw
from micafence.metrics import Metrics
from micafence.policy.audit import DEFAULT_REPORTING
from micafence.policy.health import HealthSettings, Posture
from micafence.store.memory import MemoryStore
from tests.audit_support import KEY as AUDIT_KEY
from tests.audit_support import read_records
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, MAXMIND, ServerThread
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
    """The memory store with a ``check`` that answers or fails, as a networked store's does."""

    def __init__(self, reachable: bool) -> None:
        super().__init__()
        self.reachable = reachable

    async def check(self) -> bool:
        if not self.reachable:
            raise StoreError("redis://10.0.0.9:6379: connection refused")
        return True


def guarded_app(
    database: Path | None = None, policy_text: str = POLICY, **options: Any
) -> MicafenceMiddleware:
    inner = decision_app()
    guarded = MicafenceMiddleware(
        inner, policy=load_policy_text(policy_text, "health.yaml"),
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


@pytest.mark.parametrize(
    ("health_section", "status", "posture"),
    [("", 200, "degraded"), ("health: {database_stale: degraded}\n", 200, "degraded"),
     ("health: {database_stale: not_ready}\n", 503, "not_ready")],
    ids=["default", "degraded", "not_ready"],
)
async def test_a_database_older_than_max_age_is_degraded_or_not_ready(
    caplog: pytest.LogCaptureFixture, health_section: str, status: int, posture: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="micafence"):
        guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=14, seconds=1)), watch=False,
                              policy_text=POLICY + health_section)
    response = await health(guarded)
    assert response.status_code == status
    report = response.json()
    assert (report["status"], report["ready"]) == (posture, posture == "degraded")
    assert report["problems"] == [
        "GeoIP database built 2026-02-04 is older than database.max_age (P14D)"]
    assert report["faults"] == {"database_stale": posture}
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "database.stale"]
    assert warning.levelno == logging.WARNING


async def test_exactly_max_age_is_still_ready() -> None:
    guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=14)), watch=False)
    response = await health(guarded)
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["faults"]) == ("ready", {})


UNREACHABLE = {"status": "unreachable", "kind": "PingingStore",
               "detail": "redis://10.0.0.9:6379: connection refused"}


@pytest.mark.parametrize(
    ("reachable", "health_section", "status", "store", "posture"),
    [
        (True, "health: {store_unreachable: not_ready}\n", 200,
         {"status": "ok", "kind": "PingingStore"}, "ready"),
        (False, "", 200, UNREACHABLE, "degraded"),
        (False, "health: {store_unreachable: not_ready}\n", 503, UNREACHABLE, "not_ready"),
    ],
    ids=["reachable", "unreachable-default", "unreachable-not_ready"],
)
async def test_store_reachability(
    reachable: bool, health_section: str, status: int, store: dict[str, str], posture: str
) -> None:
    guarded = guarded_app(clock=Clock(BUILT), watch=False, store=PingingStore(reachable),
                          policy_text=POLICY + health_section)
    response = await health(guarded)
    assert response.status_code == status
    assert response.json()["store"] == store
    assert response.json()["status"] == posture
    if not reachable:
        assert response.json()["problems"] == [
            "store unreachable: redis://10.0.0.9:6379: connection refused"]
        assert response.json()["faults"] == {"store_unreachable": posture}


async def test_one_not_ready_fault_outweighs_degraded_ones() -> None:
    guarded = guarded_app(clock=Clock(BUILT + dt.timedelta(days=15)), watch=False,
                          store=PingingStore(False),
                          policy_text=POLICY + "health: {store_unreachable: not_ready}\n")
    response = await health(guarded)
    assert response.status_code == 503
    assert response.json()["faults"] == {"database_stale": "degraded",
                                         "store_unreachable": "not_ready"}


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
        # MaxMind's test database is older than 14 days: serving, with the problem reported.
        assert (first["status"], first["faults"]) == ("degraded", {"database_stale": "degraded"})
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


# -- liveness ----------------------------------------------------------------------------------


async def test_liveness_looks_at_nothing_shared() -> None:
    # Every shared fault set to not_ready: readiness says 503, liveness still 200, so an
    # orchestrator never restarts every pod for a Redis outage.
    guarded = guarded_app(
        clock=Clock(BUILT + dt.timedelta(days=30)), watch=False, store=PingingStore(False),
        health_path="/healthz",
        policy_text=POLICY + "health: {store_unreachable: not_ready, database_stale: not_ready}\n")
    async with client_for(guarded) as client:
        live = await client.get("/healthz/live")
        ready = await client.get("/healthz/ready")
    assert (live.status_code, live.json()) == (200, {"status": "live"})
    assert live.headers["cache-control"] == "no-store"
    assert ready.status_code == 503


# -- health_path= and metrics_path=: answered by micafence, never decided -----------------------


#: Where an orchestrator's probes come from: a private address, in no country, so a request
#: from there is of unknown country (restricted: recorded and counted when decided).
KUBELET = "10.1.2.3"


def probe_app(tmp_path: Path, **options: Any) -> tuple[MicafenceMiddleware, AuditLog, Metrics]:
    """The default policy with a decision log and metrics."""
    log = AuditLog(FileSink(tmp_path / "audit"), key=AUDIT_KEY)
    metrics = Metrics(sample_interval=0)
    app = MicafenceMiddleware(decision_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                              watch=False, audit=log, metrics=metrics, **options)
    return app, log, metrics


def decided(metrics_text: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples if sample.name == "micafence_decisions_total")


async def test_probes_and_scrapes_are_not_decided_recorded_or_counted(tmp_path: Path) -> None:
    app, log, _ = probe_app(tmp_path, health_path="/healthz", metrics_path="/metrics")
    async with client_for(app, KUBELET) as client:
        probes = [await client.request(method, path) for method, path in [
            ("GET", "/healthz/live"), ("GET", "/healthz/ready"), ("HEAD", "/healthz/live"),
            ("HEAD", "/healthz/ready"), ("GET", "/healthz/ready")]]
        scrapes = [await client.get("/metrics") for _ in range(5)]
        await log.flush()
        quiet = [r for r in read_records(tmp_path / "audit") if r["kind"] == "decision"]
        page = await client.get("/")  # an ordinary page from the same visitor is decided
        after = await client.get("/metrics")
    await log.aclose()
    assert [p.status_code for p in probes + scrapes] == [200] * 10
    assert probes[2].content == b""
    assert probes[1].json()["faults"] == {"database_stale": "degraded"}  # MaxMind's test data
    assert all("decision" not in p.headers.get("content-type", "") for p in probes)
    assert quiet == []
    assert [decided(s.text) for s in scrapes] == [0] * 5
    records = read_records(tmp_path / "audit")
    exposure = build_report(records, [], DEFAULT_REPORTING, now=dt.datetime.now(dt.UTC))
    assert exposure.suppressed_promotion_pages == 1  # the page, none of the probes
    assert (page.json()["zones"], page.json()["restricted"]) == (["unknown_country"], True)
    assert [r["route_class"] for r in records if r["kind"] == "decision"] == ["neutral"]
    assert decided(after.text) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/healthz/ready"), ("DELETE", "/healthz/live"), ("GET", "/healthz"),
     ("GET", "/healthz/ready/"), ("GET", "/healthz/readyz"), ("GET", "/metrics/"),
     ("PUT", "/metrics")],
)
async def test_only_those_paths_and_get_or_head_are_answered_by_micafence(
    tmp_path: Path, method: str, path: str
) -> None:
    app, log, _ = probe_app(tmp_path, health_path="/healthz/", metrics_path="metrics")
    async with client_for(app, KUBELET) as client:
        response = await client.request(method, path)
        await log.flush()
    await log.aclose()
    # This request was decided like any other: a decision recorded, and the answer it gives.
    (record,) = [r for r in read_records(tmp_path / "audit") if r["kind"] == "decision"]
    if method == "GET":  # the app answered with micafence's decision
        assert (response.json()["zones"], response.json()["restricted"]) == (
            ["unknown_country"], True)
    else:  # an unsafe method on a path no entry names: the default policy's unlisted class
        assert response.status_code == 451
        assert (record["route"], record["route_class"]) == ("unlisted", "service")


async def test_metrics_path_without_metrics_makes_them(tmp_path: Path) -> None:
    app = MicafenceMiddleware(decision_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                              watch=False, metrics_path="/metrics")
    async with client_for(app) as client:
        await client.post("/api/accounts", headers={"X-Forwarded-For": "89.160.20.112"})
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert decided(scrape.text) == 1


async def test_without_the_options_those_paths_are_the_apps(tmp_path: Path) -> None:
    app, log, _ = probe_app(tmp_path)
    async with client_for(app, KUBELET) as client:
        response = await client.get("/healthz/live")
    await log.aclose()
    assert response.json()["zones"] == ["unknown_country"]  # the app's answer: decided


# -- the policy's health section ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("health: {store_unreachable: down}\n", 16,
         "health.store_unreachable: 'down' is not one of: degraded, not_ready"),
        ("health:\n  database_stale: 503\n", 17,
         "health.database_stale: expected a non-empty string, got int 503"),
        ("health:\n  store_unreachable: degraded\n  redis_down: not_ready\n", 18,
         "health.redis_down: unknown key 'redis_down' (allowed: database_stale, "
         "store_unreachable)"),
        ("health: not_ready\n", 16, "health: expected a mapping, got string 'not_ready'"),
    ],
)
def test_a_bad_health_section_names_file_key_and_line(
    section: str, line: int, message: str
) -> None:
    assert POLICY.count("\n") == 15  # the section starts on line 16
    with pytest.raises(PolicyError) as caught:
        load_policy_text(POLICY + section, "health.yaml")
    assert str(caught.value) == f"health.yaml:{line}: {message}"


def test_the_default_policy_keeps_shared_faults_degraded() -> None:
    packaged = DEFAULT_POLICY.read_bytes()
    assert (Path(__file__).parent.parent / "policies" / "default.yaml").read_bytes() == packaged
    assert load_policy_text(packaged.decode(), "default.yaml").health == HealthSettings(
        store_unreachable=Posture.DEGRADED, database_stale=Posture.DEGRADED)

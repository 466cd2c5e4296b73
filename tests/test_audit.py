"""The decision log as a supervisor reads it: which decisions are recorded, with which fields,
and the "nothing lost silently" contract when the log cannot keep up."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence.audit.chain import AuditKey
from micafence.audit.log import AuditLog
from micafence.audit.reader import load_log
from micafence.audit.sinks import FileSink
from micafence.errors import PolicyError
from micafence.grants.book import GrantBook
from micafence.records import AccountBinding, Approval, Revocation
from micafence.store.memory import MemoryStore
from micafence_tools.bench.ports import free_port
from tests.audit_support import (
    CH,
    DE6,
    KEY,
    KEY_TEXT,
    SE,
    US,
    client,
    decisions,
    guarded,
    policy_with,
    read_records,
)

SHADOW_SIGNUP = ("    class: account_creation\n    outcome: block\n",
                 "    class: account_creation\n    outcome: block\n    mode: shadow\n")

RECORD_TABLE = [
    # (policy edits, method, path, forwarded-for, client id, expected fields; None: no record)
    pytest.param((), "POST", "/api/accounts", SE, None, {
        "class": "block", "blocked": True, "outcome": "block", "reason": "eu.account_creation",
        "rule": "no-new-accounts", "mode": "enforce", "route": "accounts.api",
        "route_class": "account_creation", "method": "POST", "transport": "http",
        "country": "SE", "registered_country": "DE", "zone": "eu", "zones": ["eu"],
        "client_ip": "89.160.20.0/24", "client_id": None, "grant_id": None,
        "promotions": "forbidden", "anonymizer": [],
    }, id="eu-account-creation-block"),
    pytest.param((), "POST", "/api/orders", SE, "c-7", {
        "class": "block", "reason": "eu.no_grant", "rule": "services-need-grant",
        "route": "service.orders", "client_id": "c-7",
    }, id="eu-service-without-grant"),
    pytest.param((), "GET", "/r/FRIEND10", DE6, None, {
        "class": "block", "reason": "eu.promotion", "country": "DE",
        "client_ip": "2a02:d180::/48",
    }, id="eu-promotion-route-ipv6"),
    pytest.param((), "POST", "/api/withdrawals", SE, "c-7", {
        "class": "evidence", "blocked": False, "outcome": "allow", "reason": "eu.wind_down",
        "rule": "wind-down-existing-clients", "route": "wind-down.withdrawals",
        "client_id": "c-7",
    }, id="eu-wind-down-pass-is-evidence"),
    pytest.param((), "GET", "/prices", SE, None, {
        "class": "traffic", "blocked": False, "reason": "pass", "route": "unlisted",
        "route_class": "neutral", "promotions": "forbidden",
    }, id="eu-neutral-page-is-traffic"),
    # What no route entry names is the policy's `unlisted` default, and the log says so.
    pytest.param((), "POST", "/api/v2/orders", SE, None, {
        "class": "block", "blocked": True, "reason": "eu.no_grant",
        "rule": "services-need-grant", "route": "unlisted", "route_class": "service",
    }, id="eu-unlisted-post-falls-to-the-service-default"),
    pytest.param((SHADOW_SIGNUP,), "POST", "/api/accounts", SE, None, {
        "class": "evidence", "blocked": False, "outcome": "block", "mode": "shadow",
        "rule_mode": "shadow", "reason": "eu.account_creation",
    }, id="shadow-pass-of-a-block-is-evidence"),
    pytest.param((), "GET", "/", None, None, {
        "class": "traffic", "zone": None, "zones": ["unknown_country"], "country": None,
        "client_ip": "127.0.0.0/24",
    }, id="unknown-country"),
    pytest.param((), "POST", "/api/accounts", CH, None, None, id="swiss-pass-not-recorded"),
    pytest.param((), "GET", "/", US, None, {"class": "traffic", "zone": None, "zones": ["uk"]},
                 id="uk-visitor-is-restricted-too"),
    pytest.param((), "GET", "/", CH, None, None, id="swiss-neutral-not-recorded"),
]


@pytest.mark.parametrize(("edits", "method", "path", "forwarded", "client_id", "expected"),
                         RECORD_TABLE)
async def test_each_decision_kind_is_recorded_with_its_fields(
    tmp_path: Path, edits: tuple[tuple[str, str], ...], method: str, path: str,
    forwarded: str | None, client_id: str | None, expected: dict[str, Any] | None,
) -> None:
    log = AuditLog(FileSink(tmp_path), key=KEY)
    app = guarded(log, policy_with(*edits))
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    if client_id:
        headers["X-Client-Id"] = client_id
    async with client(app) as http:
        response = await http.request(method, path, headers=headers, json={})
    await log.aclose()
    records = decisions(tmp_path)
    if expected is None:
        assert response.status_code < 400
        assert records == []
        return
    assert len(records) == 1
    record = records[0]
    assert {key: record[key] for key in expected} == expected
    assert record["policy_revision"] == app.enforcer.policy.revision
    assert record["database_build"] == app.enforcer.geoip.build_epoch
    assert record["id"][14] == "7"  # a UUIDv7: ids sort like times
    assert abs(dt.datetime.fromisoformat(record["time"]).timestamp() - time.time()) < 60


async def test_in_scope_pass_names_its_grant(tmp_path: Path) -> None:
    store, policy = MemoryStore(), policy_with()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    grant = await GrantBook(store, policy, lambda: start + dt.timedelta(minutes=5)).add(
        client_id="alice", service="exchange_for_funds", asset="BTC", initiated_at=start,
        channel="email", evidence="ticket CS-1", verified_by="compliance", country="FR")
    from micafence_tools.demo.app import build_demo_app

    log = AuditLog(FileSink(tmp_path), key=KEY)
    app = guarded(log, policy, app=build_demo_app(), store=store)
    async with client(app) as http:
        response = await http.post(
            "/api/orders", json={"pair": "BTC-EUR", "side": "buy", "amount": "1"},
            headers={"X-Forwarded-For": SE, "X-Client-Id": "alice"})
    await log.aclose()
    assert response.status_code == 201
    [record] = decisions(tmp_path)
    assert (record["class"], record["grant_id"], record["route_class"]) == (
        "evidence", grant.id, "service")


async def test_each_grant_history_event_is_recorded_under_its_own_name(tmp_path: Path) -> None:
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    log = AuditLog(FileSink(tmp_path), key=KEY)
    for event in (Approval("g-1", "c-1", at, "b.checker"),
                  AccountBinding("g-1", "c-1", "acct-9", at),
                  Revocation("g-1", "c-1", at, "a.lind", "client asked")):
        assert log.record_grant(event)
    await log.aclose()
    events = [(r["event"], r["data"]["grant_id"]) for r in read_records(tmp_path)
              if r["kind"] == "event"]
    assert events == [("grant.approved", "g-1"), ("grant.bound", "g-1"), ("grant.revoked", "g-1")]


async def test_policy_can_hash_addresses_and_pseudonymise_client_ids(tmp_path: Path) -> None:
    policy = policy_with(("ip_truncation: {ipv4: 24, ipv6: 48}", "ip_truncation: hash"),
                         ("pseudonymise_client_ids: false", "pseudonymise_client_ids: true"))
    log = AuditLog(FileSink(tmp_path), key=KEY)
    async with client(guarded(log, policy)) as http:
        await http.post("/api/withdrawals", headers={"X-Forwarded-For": SE, "X-Client-Id": "c-7"})
    assert log.record_event("grant.revoked", {"client_id": "c-7", "grant_id": "g-1"})
    await log.aclose()
    records = read_records(tmp_path)
    [decision] = [r for r in records if r["kind"] == "decision"]
    [event] = [r for r in records if r["kind"] == "event"]
    assert decision["client_id"] == KEY.pseudonym("c-7") == event["data"]["client_id"]
    assert decision["client_ip"] == KEY.pseudonym("ip:" + SE)
    # Quoted: a random id or hash may well contain the characters "c-7" somewhere.
    assert '"c-7"' not in json.dumps(records) and SE not in json.dumps(records)


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("{ipv4: 24, ipv6: 48}", "{ipv4: 40, ipv6: 48}",
     "audit.ip_truncation.ipv4: a prefix length is at most 32"),
    ("{ipv4: 24, ipv6: 48}", "md5", "audit.ip_truncation: 'md5' is not one of: hash"),
    ("retention: P1825D", "retention: 5 years", "audit.retention: '5 years' is not an ISO 8601"),
    ("  pseudonymise_client_ids:", "  keep_forever: true\n  pseudonymise_client_ids:",
     "audit.keep_forever: unknown key"),
    ("max_active_grants: 25", "max_active_grants: -1",
     "reporting.max_active_grants: must be at least 0"),
    ("long_running_grant: P90D", "long_running_grant: P3M",
     "reporting.long_running_grant: 'P3M' is not"),
])
def test_bad_audit_and_reporting_sections_name_key_and_line(old: str, new: str,
                                                            problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_with((old, new))
    assert problem in str(caught.value)
    assert caught.value.line is not None and caught.value.line > 100


def test_default_policy_states_the_audit_and_reporting_defaults() -> None:
    policy = policy_with()
    assert policy.audit.retention == dt.timedelta(days=1825)
    assert (policy.audit.ipv4_prefix, policy.audit.ipv6_prefix) == (24, 48)
    assert policy.reporting.max_active_grants is not None


# -- nothing lost silently ---------------------------------------------------------------------


async def test_full_queue_refuses_evidence_and_aggregates_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The audit "directory" is a plain file: every write fails, as on a broken disk.
    target = tmp_path / "audit"
    target.write_text("not a directory")
    log = AuditLog(FileSink(target), key=KEY, capacity=10, flush_interval=0.01)
    app = guarded(log)
    statuses: dict[str, list[int]] = {"evidence": [], "block": []}
    caplog.set_level(logging.WARNING, logger="micafence")
    async with client(app) as http:
        for _ in range(12):
            response = await http.post("/api/accounts", headers={"X-Forwarded-For": SE})
            statuses["block"].append(response.status_code)
        for _ in range(4):
            response = await http.post(
                "/api/withdrawals", headers={"X-Forwarded-For": SE, "X-Client-Id": "c-7",
                                             "Accept": "application/json"})
            statuses["evidence"].append(response.status_code)
        refused = response
        await asyncio.sleep(0.1)  # the flusher tries, and fails
    # Blocks keep being answered 451; the first 8 are queued, the rest counted.
    assert statuses["block"] == [451] * 12
    # Evidence may use the last 20% of the queue, then the request is refused.
    assert statuses["evidence"] == [200, 200, 503, 503]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["cache-control"] == "no-store"
    assert refused.json()["reason"] == "audit_unavailable"
    assert (log.backlog, log.aggregated, log.refused) == (10, 4, 2)
    events = {getattr(r, "event", None) for r in caplog.records}
    assert {"audit.sink_failed", "audit.aggregating", "audit.refused"} <= events

    target.unlink()  # the disk is back: everything queued, and the counts, are written
    await log.aclose()
    records = read_records(target)
    assert [r["class"] for r in records if r["kind"] == "decision"] == \
        ["block"] * 8 + ["evidence"] * 2
    [aggregate] = [r for r in records if r["kind"] == "aggregate"]
    assert aggregate["counts"] == [{"reason": "eu.account_creation", "zone": "eu",
                                    "mode": "enforce", "count": 4}]
    assert "audit.sink_recovered" in {getattr(r, "event", None) for r in caplog.records}
    assert load_log([str(target)], KEY).ok


async def test_events_are_evidence_and_refused_when_the_queue_is_full(tmp_path: Path) -> None:
    target = tmp_path / "audit"
    target.write_text("not a directory")
    log = AuditLog(FileSink(target), key=KEY, capacity=10, flush_interval=60)
    accepted = [log.record_event("onboarding.token_used", {"token": f"t{n}"}) for n in range(11)]
    assert accepted == [True] * 10 + [False]
    with pytest.raises(ValueError, match="event kind"):
        log.record_event("Grant Recorded", {})
    with pytest.raises(TypeError):
        log.record_event("grant.recorded", {"at": object()})
    target.unlink()
    await log.aclose()
    events = [r for r in read_records(target) if r["kind"] == "event"]
    assert [e["data"]["token"] for e in events] == [f"t{n}" for n in range(10)]
    assert {e["class"] for e in events} == {"evidence"}


async def test_after_close_evidence_is_refused_not_dropped(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path), key=KEY)
    await log.aclose()
    assert log.record_event("grant.recorded", {"id": "g-1"}) is False
    assert load_log([str(tmp_path)], KEY, require_closed=True).ok


async def test_rotation_continues_one_chain_across_files(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path, rotate_bytes=2000), key=KEY, batch_size=3)
    for n in range(30):
        assert log.record_event("onboarding.token_used", {"token": f"t{n}"})
        await log.flush()
    await log.aclose()
    files = sorted(tmp_path.glob("audit.*.jsonl"))
    assert len(files) > 3
    assert all(f.stat().st_size <= 2000 for f in files)
    loaded = load_log([str(tmp_path)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert len([r for r in loaded.records if r["kind"] == "event"]) == 30


def test_missing_key_is_a_clear_start_up_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY", raising=False)
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY_FILE", raising=False)
    with pytest.raises(Exception, match="no audit key"):
        AuditLog(tmp_path)
    with pytest.raises(Exception, match="at least 16 bytes"):
        AuditLog(tmp_path, key="short")


# -- SIGTERM under load --------------------------------------------------------------------------


@pytest.mark.server
def test_sigterm_under_load_keeps_every_acknowledged_record(tmp_path: Path) -> None:

    port = free_port()
    audit_dir = tmp_path / "audit"
    env = {**os.environ, "MICAFENCE_AUDIT_KEY": KEY_TEXT}
    server = subprocess.Popen(
        [sys.executable, "-m", "micafence", "demo", "--port", str(port),
         "--audit-dir", str(audit_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    acknowledged: dict[str, int] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None:  # say why the demo could not start
                    reason = server.stderr.read().decode()[-2000:] if server.stderr else ""
                    raise AssertionError(f"demo exited: {reason}") from None
                assert time.monotonic() < deadline, "no demo server"
                time.sleep(0.05)
        acknowledged = _drive_load(base, server)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        _, stderr = server.communicate(timeout=30)
    # uvicorn re-raises SIGTERM once its graceful shutdown (and our lifespan flush) is done.
    assert server.returncode in (0, -signal.SIGTERM), stderr.decode()[-2000:]
    assert b"Application shutdown complete" in stderr
    statuses = set(acknowledged.values())
    assert {201, 451} <= statuses
    assert len(acknowledged) > 100
    loaded = load_log([str(audit_dir)], AuditKey.from_text(KEY_TEXT), require_closed=True)
    assert loaded.ok, loaded.problems
    on_disk = {r["client_id"] for r in loaded.records if r.get("kind") == "decision"}
    missing = set(acknowledged) - on_disk
    assert not missing, f"{len(missing)} acknowledged requests have no record"


def _drive_load(base: str, server: subprocess.Popen[bytes]) -> dict[str, int]:
    """Bounded concurrent load from an EU client; SIGTERM half-way; the responses received."""
    acknowledged: dict[str, int] = {}

    async def worker(number: int, http: httpx.AsyncClient, stop_at: float) -> None:
        for sequence in range(400):
            if time.monotonic() > stop_at:
                return
            client_id = f"w{number}-{sequence}"
            headers = {"X-Forwarded-For": SE, "X-Client-Id": client_id}
            try:
                if sequence % 2:
                    response = await http.post("/api/withdrawals", headers=headers, json={
                        "asset": "BTC", "amount": "1", "address": "addr-1"})
                else:
                    response = await http.get("/signup", headers=headers)
            except httpx.TransportError:
                return  # the server has stopped taking requests
            acknowledged[client_id] = response.status_code

    async def run() -> None:
        stop_at = time.monotonic() + 38
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=5) as http:
            workers = [asyncio.create_task(worker(n, http, stop_at)) for n in range(8)]
            await asyncio.sleep(1.5)
            # A loaded machine answers fewer per second: wait for 120 answers (up to 30 s).
            deadline = time.monotonic() + 30
            while len(acknowledged) < 120 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            server.send_signal(signal.SIGTERM)
            await asyncio.gather(*workers)

    asyncio.run(run())
    return acknowledged


def test_a_redis_audit_stream_without_the_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from micafence.audit.sinks import AuditSinkError, open_sink

    for module in ("redis", "redis.asyncio"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(AuditSinkError, match=r"pip install 'micafence\[redis\]'"):
        open_sink("redis://127.0.0.1:6379/0#audit")

"""The ``redis://`` grant store on a private redis-server: layout, trust, failures, checks, CLI.

The shared store suite (``tests/test_store.py``) runs on Redis too; here is what only Redis
has: its key layout and hash tags, a tampered or misfiled record in Redis, errors that name the
server without its password, the production checks, and the CLI and demo against Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from redis.crc import key_slot
from starlette.routing import Route

from micafence import MicafenceMiddleware
from micafence.cli import main
from micafence.errors import StoreError
from micafence.grants.book import GrantBook
from micafence.grants.onboarding import hash_token
from micafence.grants.signing import GrantKey, write_key_file
from micafence.metrics import Metrics
from micafence.policy.grant_store import StoreSettings
from micafence.policy.loader import load_policy
from micafence.records import AccountBinding, Grant, OnboardingTicket, SolicitationEvidence
from micafence.store.opener import open_store
from micafence.store.redis_store import RedisStore
from micafence_tools.bench.ports import free_port
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.redis

KEY = GrantKey.from_text("redis-store-test-key-" + "0" * 20)
SE = "89.160.20.112"
NOW = dt.datetime.now(dt.UTC)
MICAFENCE = str(Path(sys.executable).with_name("micafence"))


async def add(store: Any, client: str = "alice", asset: str = "BTC") -> Grant:
    book = GrantBook(store, load_policy(DEFAULT_POLICY))
    return await book.add(client_id=client, service="exchange_for_funds", asset=asset,
                          initiated_at=NOW - dt.timedelta(hours=1), channel="email",
                          evidence="ticket CS-1", verified_by="a.lind", country="FR")


def order(url: str, client: str, pair: str = "BTC-EUR") -> tuple[int, str]:
    response = httpx.post(url + "/api/orders", json={"pair": pair, "side": "buy", "amount": "1"},
                          headers={"X-Forwarded-For": SE, "X-Client-Id": client,
                                   "Accept": "application/json"}, timeout=5)
    return response.status_code, response.json().get("reason", "")


def demo_app(url: str, **kwargs: Any) -> MicafenceMiddleware:
    return MicafenceMiddleware(build_demo_app(), policy=kwargs.pop("policy", DEFAULT_POLICY),
                               geoip_db=COUNTRY_DB, store=url, grant_key=KEY, **kwargs)


# -- layout ------------------------------------------------------------------------------------


async def test_key_layout_and_hash_tags(redis_url: str) -> None:  # noqa: F811
    store = open_store(redis_url, grant_key=KEY)
    grant = await add(store)
    await store.append_grant_event(AccountBinding(grant.id, "alice", "acc_1", NOW))
    await store.record_solicitation(SolicitationEvidence("alice", NOW, "eu", "FR", None, "ref=X"))
    await store.put_onboarding_ticket(OnboardingTicket(
        hash_token("mot_t"), grant.id, "alice", NOW, NOW + dt.timedelta(minutes=30), "a.lind"))
    raw = aioredis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in await raw.keys("*"))
    assert keys == [
        "micafence:onboarding:" + hash_token("mot_t"),
        "micafence:{client:acc_1}:grants",
        "micafence:{client:alice}:grants",
        "micafence:{client:alice}:solicitations",
        "micafence:{grants}:ids",
        "micafence:{grants}:log",
        "micafence:{grants}:version",
    ]
    # A client's keys share a cluster slot; so do the global ones.
    assert key_slot(b"micafence:{client:alice}:grants") == key_slot(
        b"micafence:{client:alice}:solicitations")
    assert len({key_slot(k.encode()) for k in keys if "{grants}" in k}) == 1
    assert await raw.get("micafence:{grants}:version") == b"2"
    assert 0 < await raw.pttl("micafence:onboarding:" + hash_token("mot_t")) <= 30 * 60_000
    record = json.loads(await raw.lindex("micafence:{client:alice}:grants", 0))
    assert (record["id"], record["key_id"], KEY.problem(record)) == (grant.id, KEY.key_id, None)
    assert "mot_t" not in json.dumps([k for k in keys])  # only the token's hash is stored
    await raw.aclose()
    await store.close()


# -- opening and failing ---------------------------------------------------------------------


def test_redis_needs_a_key_and_a_usable_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICAFENCE_GRANT_KEY", raising=False)
    monkeypatch.delenv("MICAFENCE_GRANT_KEY_FILE", raising=False)
    with pytest.raises(StoreError, match=r"needs the grant key.*MICAFENCE_GRANT_KEY"):
        open_store("redis://127.0.0.1:6390/0")
    with pytest.raises(StoreError, match="not a usable Redis URL"):
        open_store("redis://127.0.0.1:port/0", grant_key=KEY)
    monkeypatch.setenv("MICAFENCE_GRANT_KEY", "e" * 40)
    assert isinstance(open_store("rediss://127.0.0.1:6390/0"), RedisStore)


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_unreachable_redis_raises_store_error_without_the_password(scheme: str) -> None:
    port = free_port()  # a port nobody listens on
    store = open_store(f"{scheme}://:s3cret@127.0.0.1:{port}/0", grant_key=KEY)
    for call in (store.grant_events("alice"), store.holdings("alice"), store.check(),
                 store.production_problems()):
        with pytest.raises(StoreError) as caught:
            await call
        assert f"{scheme}://:***@127.0.0.1:{port}/0" in str(caught.value)
        assert "s3cret" not in str(caught.value)
    await store.start()  # the app starts all the same; grant checks fail closed
    await store.close()


# -- trust ----------------------------------------------------------------------------------------


@pytest.mark.server
def test_tampered_and_misfiled_records_in_redis_are_ignored(
    redis_url: str, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    grant = asyncio.run(_add_and_close(redis_url, "alice"))
    with ServerThread(demo_app(redis_url)) as server:
        assert order(server.url, "alice") == (201, "")
        caplog.set_level(logging.ERROR, logger="micafence")

        async def tamper() -> None:
            raw = aioredis.Redis.from_url(redis_url)
            key = "micafence:{client:alice}:grants"
            record = json.loads(await raw.lindex(key, 0))
            # Widen alice's grant to ETH, and copy her signed record into mallory's history.
            await raw.lset(key, 0, json.dumps({**record, "asset": "ETH"}))
            await raw.rpush("micafence:{client:mallory}:grants", json.dumps(record))
            await raw.incr("micafence:{grants}:version")  # as a writer would
            await raw.aclose()

        asyncio.run(tamper())
        deadline = time.monotonic() + 2
        while order(server.url, "alice") != (451, "eu.no_grant") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert order(server.url, "alice", "ETH-EUR") == (451, "eu.no_grant")
        assert order(server.url, "alice") == (451, "eu.no_grant")
        assert order(server.url, "mallory") == (451, "eu.no_grant")
    problems = {r.fields["problem"] for r in caplog.records  # type: ignore[attr-defined]
                if getattr(r, "event", None) == "grant.record_rejected"}
    assert problems == {"signature does not match: the record was altered",
                        "a record of alice filed under mallory"}
    assert grant.id


async def _add_and_close(url: str, client: str) -> Grant:
    store = open_store(url, grant_key=KEY)
    try:
        return await add(store, client)
    finally:
        await store.close()


async def test_a_record_that_cannot_be_read_fails_closed(redis_url: str) -> None:  # noqa: F811
    await _add_and_close(redis_url, "alice")
    raw = aioredis.Redis.from_url(redis_url)
    await raw.rpush("micafence:{client:alice}:grants", b"{not json")
    await raw.aclose()
    app = demo_app(redis_url)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
        answer = await http.post("/api/orders", json={"pair": "BTC-EUR"},
                                 headers={"X-Forwarded-For": SE, "X-Client-Id": "alice"})
    assert (answer.status_code, answer.headers["micafence-reason"]) == (
        451, "eu.store_unavailable")
    await app.store.close()


# -- production checks ----------------------------------------------------------------------


@pytest.mark.parametrize(("config", "problems"), [
    pytest.param({}, ["neither AOF (appendonly) nor RDB snapshots"], id="no-persistence"),
    pytest.param({"appendonly": "yes"}, [], id="aof"),
    pytest.param({"save": "3600 1"}, [], id="rdb"),
    pytest.param({"appendonly": "yes", "maxmemory-policy": "allkeys-lru"},
                 ["maxmemory-policy is allkeys-lru"], id="evicts"),
    pytest.param({"maxmemory-policy": "volatile-ttl"},
                 ["maxmemory-policy is volatile-ttl", "neither AOF"], id="both"),
])
async def test_production_checks(
    redis_url: str, config: dict[str, str], problems: list[str]  # noqa: F811
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    for name, value in config.items():
        await raw.config_set(name, value)
    await raw.aclose()
    store = RedisStore(redis_url, key=KEY)
    found = await store.production_problems()
    assert len(found) == len(problems)
    assert all(text in problem for text, problem in zip(problems, found, strict=True))
    await store.close()


async def test_checks_warn_loudly_or_refuse(
    redis_url: str, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.WARNING, logger="micafence")
    warn = RedisStore(redis_url, key=KEY)
    await warn.start(StoreSettings(redis_checks="warn"))  # starts, says so loudly
    assert await warn.holdings("alice") == []
    assert any("IS NOT SAFE FOR GRANT RECORDS" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    await warn.close()
    refuse = RedisStore(redis_url, key=KEY)
    with pytest.raises(StoreError, match=r"refused by scopes\.redis_checks: refuse: neither AOF"):
        await refuse.start(StoreSettings(redis_checks="refuse"))
    with pytest.raises(StoreError, match=r"refused by scopes\.redis_checks"):
        await refuse.holdings("alice")  # never serves grants from it
    await refuse.close()
    raw = aioredis.Redis.from_url(redis_url)
    await raw.config_set("appendonly", "yes")
    await raw.aclose()
    fixed = RedisStore(redis_url, key=KEY)
    await fixed.start(StoreSettings(redis_checks="refuse"))
    assert await fixed.holdings("alice") == []
    await fixed.close()


async def lifespan_startup(app: MicafenceMiddleware) -> dict[str, Any]:
    """What the app answers a server's lifespan startup (as uvicorn would send it)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "lifespan.startup"}
        await asyncio.sleep(3600)
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    with contextlib.suppress(Exception):
        await asyncio.wait_for(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                   receive, send), 5)
    await app.store.close()
    return sent[0]


async def test_redis_down_at_start_up_is_checked_when_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING, logger="micafence")
    store = RedisStore(f"redis://127.0.0.1:{port}/0", key=KEY)
    await store.start(StoreSettings(redis_checks="refuse"))  # the app starts: fails closed
    assert any("cannot check" in r.getMessage() for r in caplog.records)
    with pytest.raises(StoreError, match=r"Connection refused|Error 111"):
        await store.holdings("alice")
    server = RedisServer(tmp_path, port=port)  # no persistence: refused once it is seen
    try:
        deadline = time.monotonic() + 5
        while "refused by" not in await _holdings_error(store):
            assert time.monotonic() < deadline, "the late check did not run"
            await asyncio.sleep(0.05)
        assert not store.cache.live
        # Fixed on the server: trusted again at the next check (every 5 s), no restart.
        raw = aioredis.Redis.from_url(server.url)
        await raw.config_set("appendonly", "yes")
        await raw.aclose()
        deadline = time.monotonic() + 8
        while await _holdings_error(store) or not store.cache.live:
            assert time.monotonic() < deadline, "not trusted again after the fix"
            await asyncio.sleep(0.1)
    finally:
        await store.close()
        server.stop()


async def _holdings_error(store: RedisStore) -> str:
    try:
        await store.holdings("alice")
    except StoreError as exc:
        return str(exc)
    return ""


async def test_a_restricted_acl_user_works_and_the_checks_say_what_they_cannot_see(
    redis_url: str,  # noqa: F811
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    await raw.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["~*"],
                          channels=["*"], commands=["+@all", "-info", "-config", "-del"])
    await raw.aclose()
    store = RedisStore(redis_url.replace("redis://", "redis://app:pw@"), key=KEY)
    assert await store.production_problems() == [
        "INFO is refused (this user has no permissions to run the 'info' command): cannot tell "
        "whether Redis evicts keys or keeps grant records on disk"]
    await store.start()  # warn: the cache still goes live
    deadline = time.monotonic() + 3
    while not store.cache.live:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    grant = await add(store)
    assert [e.id for e in await store.holdings("alice") if isinstance(e, Grant)] == [grant.id]
    await store.close()


@pytest.mark.server
def test_refuse_stops_the_app_start_and_health_reports_the_store(
    redis_url: str, policy_variant: Any, redis_server: RedisServer,  # noqa: F811
) -> None:
    from micafence import load_policy_text

    refusing = load_policy_text(policy_variant("redis_checks: warn", "redis_checks: refuse"))
    assert asyncio.run(lifespan_startup(demo_app(redis_url, policy=refusing))) == {
        "type": "lifespan.startup.failed",
        "message": f"micafence: {redis_url} refused by scopes.redis_checks: refuse: neither AOF "
                   "(appendonly) nor RDB snapshots (save) are on: a restart loses every grant "
                   "record and revocation",
    }
    # uvicorn's default lifespan "auto" refuses to serve too (it does not take the failure for
    # an app without lifespan support).
    server = uvicorn.Server(uvicorn.Config(demo_app(redis_url, policy=refusing), port=0,
                                           log_level="critical", lifespan="auto"))
    with pytest.raises(SystemExit) as exited:
        asyncio.run(server.serve())
    assert exited.value.code == 3  # uvicorn's STARTUP_FAILURE

    inner = build_demo_app()
    app = MicafenceMiddleware(inner, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB, store=redis_url,
                              grant_key=KEY)
    inner.router.routes.insert(0, Route("/micafence/health", app.health_app()))
    with ServerThread(app) as server:
        up = httpx.get(server.url + "/micafence/health").json()
        assert up["store"] == {"status": "ok", "kind": "RedisStore"}
        redis_server.stop()
        down = httpx.get(server.url + "/micafence/health")
        # Every pod shares the Redis: by default readiness stays 200 and says degraded.
        assert (down.status_code, down.json()["status"]) == (200, "degraded")
        assert down.json()["faults"]["store_unreachable"] == "degraded"
        assert down.json()["store"]["status"] == "unreachable"
        assert redis_url in down.json()["store"]["detail"]


# -- the CLI and the demo on Redis ---------------------------------------------------------------


def test_grant_cli_on_redis(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = tmp_path / "grant.key"
    write_key_file(key_file)
    monkeypatch.setenv("MICAFENCE_OFFICER", "a.lind")
    monkeypatch.setenv("MICAFENCE_STORE", redis_url)
    monkeypatch.setenv("MICAFENCE_GRANT_KEY_FILE", str(key_file))
    initiated = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert main(["grant", "add", "--client", "carol", "--service", "exchange_for_funds",
                 "--asset", "ETH", "--initiated-at", initiated, "--channel", "email",
                 "--evidence", "ticket CS-3003", "--country", "FR", "--onboarding"]) == 0
    grant_id, token_line = capsys.readouterr().out.splitlines()
    assert token_line.startswith("onboarding token (shown once, valid until ")
    assert main(["grant", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(g["id"], g["status"]) for g in listed] == [(grant_id, "active")]
    monkeypatch.setenv("MICAFENCE_OFFICER", "b.ops")
    assert main(["grant", "revoke", grant_id, "--reason", "test"]) == 0
    capsys.readouterr()
    assert main(["grant", "history", grant_id, "--json"]) == 0
    assert [r["event"] for r in json.loads(capsys.readouterr().out)] == ["grant", "revocation"]


@pytest.mark.server
def test_demo_command_on_redis(redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICAFENCE_")}
    demo = subprocess.Popen(
        [MICAFENCE, "demo", "--store", redis_url, "--port", str(port), "--no-audit"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert demo.poll() is None and time.monotonic() < deadline, "demo did not start"
                time.sleep(0.1)
        assert order(url, "dave") == (451, "eu.no_grant")
        key_file = tmp_path / "micafence-demo-grants.key"
        added = subprocess.run(
            [MICAFENCE, "grant", "add", "--store", redis_url, "--client", "dave",
             "--service", "exchange_for_funds", "--asset", "BTC", "--initiated-at",
             (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(),
             "--channel", "email", "--evidence", "ticket CS-4", "--country", "FR"],
            env={**env, "MICAFENCE_OFFICER": "a.lind", "MICAFENCE_GRANT_KEY_FILE": str(key_file)},
            capture_output=True, text=True, check=True)
        assert added.stdout.startswith("grt_")
        assert order(url, "dave") == (201, "")  # the publish reached the demo's cache at once
    finally:
        demo.terminate()
        output, _ = demo.communicate(timeout=10)
    assert "grant records signed with the key in ./micafence-demo-grants.key" in output


# -- store errors in the metrics ------------------------------------------------------------------


async def test_every_failed_operation_counts_in_store_errors_total(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    metrics = Metrics()
    app = demo_app(redis_server.url, metrics=metrics, watch=False)
    addresses = iter(f"89.160.20.{host}" for host in range(113, 128))  # SE, one per request

    async def visit(method: str, path: str, **headers: str) -> httpx.Response:
        # A fresh client each time: one visitor, one request (no cookie carried over).
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://x.test") as http:
            return await http.request(method, path, headers={
                "X-Forwarded-For": next(addresses), "Accept": "application/json", **headers},
                json={"pair": "BTC-EUR", "side": "buy", "amount": "1"})

    async def round_of_requests(number: int) -> list[str]:
        answers = [
            await visit("POST", "/api/orders", **{"X-Client-Id": f"client-{number}"}),
            await visit("POST", "/api/accounts", **{"X-Micafence-Onboarding": f"tok-{number}"}),
            await visit("GET", f"/r/FRIEND{number}"),
        ]
        return [a.json().get("reason", "") for a in answers]

    async def store_errors() -> dict[str, float]:
        transport = httpx.ASGITransport(app=metrics.asgi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://x.test") as http:
            text = (await http.get("/metrics")).text
        return {s.labels["operation"]: s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "micafence_store_errors_total"}

    assert await round_of_requests(0) == ["eu.no_grant", "eu.onboarding.invalid_token",
                                          "eu.promotion"]
    await asyncio.sleep(0.3)  # the evidence write is not awaited past 0.25 s
    assert await store_errors() == {}  # Redis answered everything
    redis_server.stop()  # SIGKILL
    for number in (1, 2, 3):
        assert await round_of_requests(number) == [
            "eu.store_unavailable", "eu.store_unavailable", "eu.promotion"]
    await asyncio.sleep(0.3)
    assert await store_errors() == {  # an order: the client registry's read, the grant check's
        "grant_events": 6, "take_onboarding_ticket": 3, "record_solicitation": 3}
    await app.store.close()

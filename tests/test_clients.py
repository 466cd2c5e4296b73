"""A known EU client stays EU whatever its IP: the client registry, grants' countries and the
residence a sign-up declares, through the demo exchange behind micafence.

Requests come through the trusted local proxy (127.0.0.1) with the client's address in
X-Forwarded-For and the auth gateway's ``X-Client-Id``. ``50.114.0.1`` is a US address in the
test database (country and registered country US), ``89.160.20.112`` a Swedish one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import AuditLog, MicafenceMiddleware
from micafence.clients.registry import FRESH_SECONDS, ClientRegistry
from micafence.decision import STATE_KEY
from micafence.grants.book import GrantBook
from micafence.grants.signing import KEY_ENV, GrantKey
from micafence.policy.model import Policy
from micafence.records import Grant
from micafence.store.base import Store
from micafence.store.memory import MemoryStore
from micafence.store.opener import open_store
from micafence_tools.demo.app import build_demo_app
from tests.audit_support import policy_with as policy_of
from tests.conftest import COUNTRY_DB
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (a pytest fixture)

US, SE = "50.114.0.1", "89.160.20.112"
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
KEY = "k" * 40
MICAFENCE = str(Path(sys.executable).with_name("micafence"))


class Exchange:
    """The demo exchange behind micafence on ``store``, seen through the local proxy."""

    def __init__(self, store: Store | None = None, policy: Policy | None = None) -> None:
        self.store = store or MemoryStore()
        self.policy = policy or policy_of()
        self.seen: list[dict[str, Any]] = []
        demo = build_demo_app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":  # what the app was handed: the final decision
                self.seen.append(scope["state"][STATE_KEY]._asdict())
            await demo(scope, receive, send)

        self.fence = MicafenceMiddleware(app, policy=self.policy, geoip_db=COUNTRY_DB,
                                         store=self.store, clock=lambda: T0 + dt.timedelta(days=1))
        self.book = GrantBook(self.store, self.policy, lambda: T0 + dt.timedelta(hours=1))

    async def request(
        self, method: str, path: str, ip: str, client: str | None = None,
        body: Any = None, content: bytes | None = None, **headers: str,
    ) -> httpx.Response:
        sent = {"X-Forwarded-For": ip, "Accept": "application/json", **headers}
        if client is not None:
            sent["X-Client-Id"] = client
        transport = httpx.ASGITransport(app=self.fence, client=("127.0.0.1", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
            return await http.request(method, path, json=body, content=content, headers=sent)

    async def grant(self, client: str, asset: str, country: str | None) -> Grant:
        if country is None:  # recorded before grants named a country: the API refuses it now
            grant = dataclasses.replace(await GrantBook(MemoryStore(), self.book.policy,
                                                        self.book.clock).add(
                client_id=client, service="exchange_for_funds", asset=asset, initiated_at=T0,
                channel="email", evidence=f"ticket {client}-{asset}", verified_by="a.lind",
                country="FR"), country=None)
            await self.store.append_grant_event(grant)
            return grant
        return await self.book.add(
            client_id=client, service="exchange_for_funds", asset=asset, initiated_at=T0,
            channel="email", evidence=f"ticket {client}-{asset}", verified_by="a.lind",
            country=country)


def order(pair: str) -> dict[str, str]:
    return {"pair": pair, "side": "buy", "amount": "1"}


# -- (a) a grant holder on a US address --------------------------------------------------------


async def test_grant_holder_on_a_us_address_gets_what_an_eu_address_gets() -> None:
    exchange = Exchange()
    await exchange.grant("alice", "USDC", "FR")

    feed = await exchange.request("GET", "/api/promotions", US, "alice")
    assert feed.status_code == 200 and feed.json() == []
    referral = await exchange.request("GET", "/r/FRIEND10", US, "alice")
    assert referral.status_code == 451
    outside = await exchange.request("POST", "/api/orders", US, "alice", order("ETH-USD"))
    assert outside.status_code == 451
    assert outside.json()["reason"] == "eu.out_of_scope.asset_type"
    inside = await exchange.request("POST", "/api/orders", US, "alice", order("USDC-USD"))
    assert inside.status_code == 201
    assert exchange.seen[-1]["signals"] == ("grant:FR",)
    assert exchange.seen[-1]["zones"] == ("eu",)
    signup = await exchange.request("POST", "/api/accounts", US, "alice", {"email": "a@b.c"})
    assert signup.status_code == 451

    # The same address without the identity is a US visitor: nothing restricted.
    assert (await exchange.request("GET", "/r/FRIEND10", US)).status_code == 200


async def test_home_page_promotions_are_removed_for_the_identified_eu_client() -> None:
    exchange = Exchange()
    await exchange.grant("alice", "USDC", "FR")
    anonymous = await exchange.request("GET", "/", US, Accept="text/html")
    identified = await exchange.request("GET", "/", US, "alice", Accept="text/html")
    promotion = re.compile(r"<\w[^>]*\sdata-promo[\s>=]")  # a [data-promo] element
    assert promotion.search(anonymous.text)
    assert identified.status_code == 200 and not promotion.search(identified.text)


async def test_a_grant_recorded_without_a_country_puts_its_holder_in_every_grant_zone() -> None:
    exchange = Exchange()
    await exchange.grant("old", "BTC", None)  # recorded before grants named a country
    await exchange.request("GET", "/", US, "old")
    assert exchange.seen[-1]["zones"] == ("eu", "eea", "unknown_country")
    assert exchange.seen[-1]["signals"] == ("grant:unnamed",)


async def test_a_revoked_grant_no_longer_places_the_client() -> None:
    exchange = Exchange()
    grant = await exchange.grant("bert", "BTC", "DE")
    await exchange.book.revoke(grant.id, revoked_by="a.lind", reason="evidence was wrong")
    await asyncio.sleep(FRESH_SECONDS)
    assert (await exchange.request("GET", "/r/X", US, "bert")).status_code == 200


# -- the registry: officers and the host app record where a client is established ---------------


async def test_registry_residence_places_a_client_on_any_network() -> None:
    exchange = Exchange()
    await exchange.fence.clients.record_residence("dora", "FR", evidence="kyc/1", by="app:kyc")

    assert (await exchange.request("GET", "/r/FRIEND10", US, "dora")).status_code == 451
    assert exchange.seen == []  # answered by micafence
    await exchange.request("GET", "/", US, "dora")
    assert exchange.seen[-1]["signals"] == ("registry:FR",)
    no_grant = await exchange.request("POST", "/api/orders", US, "dora", order("BTC-USD"))
    assert (no_grant.status_code, no_grant.json()["reason"]) == (451, "eu.no_grant")


async def test_the_latest_residence_record_is_the_registrys_word() -> None:
    exchange = Exchange()
    await exchange.fence.clients.record_residence("emil", "FR", evidence="kyc/1", by="app:kyc")
    await exchange.fence.clients.record_residence("emil", "US", evidence="kyc/2", by="app:kyc")
    assert (await exchange.request("GET", "/r/X", US, "emil")).status_code == 200
    history = await exchange.fence.clients.history("emil")
    assert [e.country for e in history] == ["FR", "US"]  # append-only: both kept


async def test_us_resident_on_an_eu_address_stays_restricted_by_its_location() -> None:
    exchange = Exchange()
    await exchange.fence.clients.record_residence("finn", "US", evidence="kyc/1", by="app:kyc")
    page = await exchange.request("GET", "/", SE, "finn")
    assert page.status_code == 200  # a neutral page
    signup = await exchange.request("POST", "/api/accounts", SE, "finn", {"email": "f@x.se"})
    assert (signup.status_code, signup.json()["reason"]) == (451, "eu.account_creation")
    no_grant = await exchange.request("POST", "/api/orders", SE, "finn", order("BTC-EUR"))
    assert (no_grant.status_code, no_grant.json()["reason"]) == (451, "eu.no_grant")
    assert exchange.seen[0]["signals"] == ("country:SE", "registered_country:DE")


@pytest.mark.parametrize(("client", "country", "problem"), [
    ("a b", "FR", "not a client id"),
    ("gus", "France", "country code"),
    ("gus", "XX", "country code"),
])
async def test_registry_refuses_what_it_cannot_record(client: str, country: str,
                                                      problem: str) -> None:
    registry = ClientRegistry(MemoryStore())
    with pytest.raises(ValueError, match=problem):
        await registry.record_residence(client, country, evidence="kyc/1", by="app")


async def seen_within_a_second(worker: Exchange, client: str) -> None:
    """``worker`` (another process's middleware on the same store) sees ``client`` as EU
    within a second of the record being written."""
    loop = asyncio.get_running_loop()
    written = loop.time()
    while (await worker.request("GET", "/r/X", US, client)).status_code != 451:
        assert loop.time() - written < 1.0, "not seen within a second"
        await asyncio.sleep(0.02)


async def test_a_change_is_seen_by_another_worker_on_the_file_store(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store.jsonl'}"
    first = Exchange(open_store(url, grant_key=_key_file(tmp_path)))
    second = Exchange(open_store(url, grant_key=_key_file(tmp_path)))
    assert (await second.request("GET", "/r/X", US, "hana")).status_code == 200
    await first.fence.clients.record_residence("hana", "SE", evidence="kyc/9", by="app:kyc")
    await seen_within_a_second(second, "hana")
    # Signed like grant records: the line on disk carries the MAC.
    records = [json.loads(line) for line in (tmp_path / "store.jsonl").read_text().splitlines()]
    residence = next(record for record in records if record["event"] == "residence")
    assert residence["client_id"] == "hana" and "mac" in residence


async def test_redis_store_change_seen_within_a_second_and_outage_keeps_the_last_read(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    first = Exchange(open_store(redis_server.url, grant_key=GrantKey.from_text(KEY)))
    second = Exchange(open_store(redis_server.url, grant_key=GrantKey.from_text(KEY)))
    await first.store.start()
    await second.store.start()
    try:
        await second.request("GET", "/", US, "ivan")  # read once: no standing
        await first.fence.clients.record_residence("ivan", "IT", evidence="kyc/3", by="app")
        await seen_within_a_second(second, "ivan")

        redis_server.stop()
        await asyncio.sleep(FRESH_SECONDS)
        # Known before the outage: still EU. Never read: the unknown country (fail closed).
        assert (await second.request("GET", "/r/X", US, "ivan")).status_code == 451
        await second.request("GET", "/", US, "jana")
        assert second.seen[-1]["zones"] == ("unknown_country",)
        assert second.seen[-1]["signals"] == ("registry:unavailable",)
    finally:
        await first.store.stop()
        await second.store.stop()
        await first.store.close()
        await second.store.close()


# -- (b) what a sign-up declares ------------------------------------------------------------------


async def test_signup_declaring_an_eu_residence_is_blocked_on_a_us_address() -> None:
    exchange = Exchange()
    fr = await exchange.request("POST", "/api/accounts", US, body={"email": "a@b.c",
                                                                   "country": "FR"})
    assert (fr.status_code, fr.json()["reason"]) == (451, "eu.account_creation")
    us = await exchange.request("POST", "/api/accounts", US, body={"email": "a@b.c",
                                                                   "country": "US"})
    assert us.status_code == 201 and us.json()["email"] == "a@b.c"  # the body replayed
    assert exchange.seen[-1]["signals"] == ()
    missing = await exchange.request("POST", "/api/accounts", US, body={"email": "m@b.c"})
    assert missing.status_code == 201


async def test_a_non_restricted_declaration_never_lifts_a_block() -> None:
    exchange = Exchange()
    response = await exchange.request("POST", "/api/accounts", SE,
                                      body={"email": "a@b.c", "country": "US"})
    assert response.status_code == 451


@pytest.mark.parametrize("content", [
    b'{"email": "a@b.c", "country": "US", "country": "FR"}',  # parsers disagree on which wins
    b'{"email": "a@b.c", "country": "France"}',
    b'{"email": "a@b.c", "country": 250}',
    b'["country", "US"]',
    b'{"email": "a@b.c", "country": "US"',
    b'{"email": "' + b"x" * 70_000 + b'", "country": "US"}',  # over scopes.max_body_bytes
], ids=["repeated", "name", "number", "array", "cut", "too-large"])
async def test_an_unreadable_declaration_is_decided_as_the_unknown_country(
    content: bytes,
) -> None:
    exchange = Exchange()
    response = await exchange.request("POST", "/api/accounts", US, content=content,
                                      **{"Content-Type": "application/json"})
    assert (response.status_code, response.json()["reason"]) == (
        451, "unknown_country.account_creation")


async def test_utf16_json_declaration_is_read() -> None:
    exchange = Exchange()
    body = json.dumps({"email": "a@b.c", "country": "DE"}).encode("utf-16")
    response = await exchange.request("POST", "/api/accounts", US, content=body,
                                      **{"Content-Type": "application/json"})
    assert response.status_code == 451


@pytest.mark.parametrize(("source", "target", "content", "status"), [
    ("{from: form, name: country}", "/api/accounts", b"email=a%40b.c&country=FR", 451),
    ("{from: form, name: country}", "/api/accounts", b"email=a%40b.c&country=US", 400),
    ("{from: form, name: country}", "/api/accounts",
     b"email=a%40b.c&country=US&country=FR", 451),
    ("{from: query, name: cc}", "/api/accounts?cc=AT", b'{"email": "a@b.c"}', 451),
    ("{from: query, name: cc}", "/api/accounts?cc=US", b'{"email": "a@b.c"}', 201),
])
async def test_form_and_query_declarations(source: str, target: str, content: bytes,
                                           status: int) -> None:
    policy = policy_of(("residence: {from: body, name: country}", f"residence: {source}"))
    exchange = Exchange(policy=policy)
    response = await exchange.request("POST", target, US, content=content)
    # A form passes to the app, which wants JSON (400): it was not blocked.
    assert response.status_code == status


def test_only_an_account_creation_route_declares_a_residence() -> None:
    from micafence.errors import PolicyError

    with pytest.raises(PolicyError, match=r"routes\[\d+\]\.residence.*only an account_creation"):
        policy_of(("path: /api/promotions}", "path: /api/promotions, "
                   "residence: {from: body, name: country}}"))


# -- the commands ---------------------------------------------------------------------------------


def _key_file(tmp_path: Path) -> Path:
    key = tmp_path / "grant.key"
    if not key.exists():
        key.write_text(KEY)
        key.chmod(0o600)
    return key


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MICAFENCE_STORE": f"file://{tmp_path / 'store.jsonl'}",
           KEY_ENV: KEY, "MICAFENCE_OFFICER": "a.lind"}
    return subprocess.run([MICAFENCE, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_client_commands_record_show_and_list(tmp_path: Path) -> None:
    done = _cli("client", "set", "--client", "kai", "--residence", "fr", "--evidence", "kyc/7",
                tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kai is established in FR" in done.stdout
    shown = json.loads(_cli("client", "show", "--client", "kai", "--json",
                            tmp_path=tmp_path).stdout)
    assert shown["signals"] == ["registry:FR"]
    assert shown["records"][0]["recorded_by"] == "a.lind"
    listed = _cli("client", "list", tmp_path=tmp_path).stdout
    assert listed.strip() == "kai  registry:FR"

    refused = _cli("client", "set", "--client", "kai", "--residence", "XX", "--evidence", "k",
                   tmp_path=tmp_path)
    assert refused.returncode == 2 and "country code" in refused.stderr
    other = _cli("client", "set", "--client", "kai", "--residence", "US", "--evidence", "k",
                 "--by", "someone.else", tmp_path=tmp_path)
    assert other.returncode != 0 and "does not match" in other.stderr

    explained = _cli("explain", "--ip", US, "--path", "/r/FRIEND10", "--client", "kai",
                     "--store", f"file://{tmp_path / 'store.jsonl'}", "--json",
                     tmp_path=tmp_path)
    decision = json.loads(explained.stdout)
    assert decision["signals"] == ["registry:FR"] and decision["blocked"] is True
    text = _cli("explain", "--ip", US, "--path", "/", "--client", "kai", "--store",
                f"file://{tmp_path / 'store.jsonl'}", tmp_path=tmp_path).stdout
    assert "signals    registry:FR" in text


# -- what the records and the edge set-up say -----------------------------------------------------


async def test_the_decision_record_names_the_signals(tmp_path: Path) -> None:
    from micafence.audit.sinks import FileSink
    from tests.audit_support import KEY as AUDIT_KEY
    from tests.audit_support import decisions, read_records

    log = AuditLog(FileSink(tmp_path), key=AUDIT_KEY)
    store = MemoryStore()
    fence = MicafenceMiddleware(build_demo_app(), policy=policy_of(), geoip_db=COUNTRY_DB,
                                store=store, audit=log, watch=False)
    await fence.clients.record_residence("lena", "PT", evidence="kyc/5", by="app:kyc")
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        response = await http.get("/r/FRIEND10", headers={"X-Forwarded-For": US,
                                                          "X-Client-Id": "lena"})
    await log.aclose()
    assert response.status_code == 451
    [record] = decisions(tmp_path)
    assert (record["v"], record["reason"], record["signals"]) == (
        2, "eu.promotion", ["registry:PT"])
    [event] = [r for r in read_records(tmp_path) if r.get("event") == "client.residence"]
    assert (event["data"]["client_id"], event["data"]["country"]) == ("lena", "PT")


async def test_under_an_edge_set_up_client_signals_add_to_the_cdns_country() -> None:
    policy = policy_of(("setup: private", "setup: edge\n  edge_country_header: cf-ipcountry"))
    exchange = Exchange(policy=policy)
    await exchange.fence.clients.record_residence("mia", "NL", evidence="kyc/6", by="app:kyc")
    await exchange.request("GET", "/", US, "mia", **{"CF-IPCountry": "US"})
    assert exchange.seen[-1]["zones"] == ("eu",)
    assert exchange.seen[-1]["signals"] == ("registry:NL",)
    await exchange.request("GET", "/", US, "mia", **{"CF-IPCountry": "SE"})
    assert exchange.seen[-1]["signals"] == ("country:SE", "registry:NL")

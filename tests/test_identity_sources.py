"""Identity headers are believed from the auth gateway only (``client_identity.trusted_sources``),
not from every proxy trusted for ``X-Forwarded-For`` (issue 15.6).

The set-up of every case: a CDN / load balancer at 10.0.0.7 and the auth gateway at 10.9.0.5,
both trusted proxies; only the gateway is a trusted source. The CDN passes client headers on, so
a visitor who goes around the gateway can write ``X-Client-Id`` themselves. The app is the demo
exchange behind micafence; ``alice`` holds a grant for exchange for funds on BTC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, load_policy_text
from micafence.cli import main
from micafence.grants.book import GrantBook
from micafence.location.geo import GeoIPDatabase
from micafence.policy.model import Policy
from micafence.store.base import Store
from micafence.store.file_store import FileStore
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

SE = "89.160.20.112"  # the EU visitor
CDN = "10.0.0.7"  # trusted for X-Forwarded-For, not an auth gateway
GATEWAY = "10.9.0.5"  # the auth gateway: sets X-Client-Id after signing the client in
BTC_ORDER = {"pair": "BTC-EUR", "side": "buy", "amount": "1"}
GEOIP = GeoIPDatabase(COUNTRY_DB)


def policy(sources: str = f"[{GATEWAY}/32]") -> Policy:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for old, new in (
        ("trusted_proxies: [127.0.0.0/8, ::1/128]",
         f"trusted_proxies: [127.0.0.0/8, ::1/128, 10.0.0.0/16, {GATEWAY}/32]"),
        ("trusted_sources: [127.0.0.0/8, ::1/128]", f"trusted_sources: {sources}"),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_policy_text(text, "gateway.yaml")


async def with_alice_grant(store: Store, loaded: Policy) -> Store:
    await GrantBook(store, loaded).add(
        client_id="alice", service="exchange_for_funds", asset="BTC",
        initiated_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), channel="email",
        evidence="ticket CS-42", verified_by="compliance", country="FR",
    )
    return store


async def exchange(store: Store | None = None) -> MicafenceMiddleware:
    loaded = policy()
    return MicafenceMiddleware(
        build_demo_app(), policy=loaded, geoip_db=GEOIP, watch=False,
        store=await with_alice_grant(store or MemoryStore(), loaded),
    )


async def send(app: Any, peer: str, method: str, path: str, headers: dict[str, str],
               json_body: Any = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as http:
        return await http.request(method, path, headers={"Accept": "application/json", **headers},
                                  json=json_body)


def reason(response: httpx.Response) -> str | None:
    return response.headers.get("micafence-reason")


# -- the three cases of the review ---------------------------------------------------------------

@pytest.mark.parametrize(("peer", "status", "why"), [
    pytest.param(CDN, 451, "eu.no_grant", id="from-the-cdn-alice-is-not-believed"),
    pytest.param(GATEWAY, 201, None, id="from-the-gateway-alice-uses-her-grant"),
])
async def test_client_id_of_a_grant_holder(peer: str, status: int, why: str | None) -> None:
    response = await send(await exchange(), peer, "POST", "/api/orders",
                          {"X-Forwarded-For": SE, "X-Client-Id": "alice"}, BTC_ORDER)
    assert (response.status_code, reason(response)) == (status, why)


@pytest.mark.parametrize(("peer", "status", "why"), [
    pytest.param(CDN, 451, "eu.wind_down.unidentified", id="from-the-cdn"),
    pytest.param(GATEWAY, 201, None, id="from-the-gateway"),
])
async def test_any_client_id_on_a_withdrawal(peer: str, status: int, why: str | None) -> None:
    response = await send(await exchange(), peer, "POST", "/api/withdrawals",
                          {"X-Forwarded-For": SE, "X-Client-Id": "zzz"},
                          {"asset": "BTC", "amount": "1", "address": "bc1qexample"})
    assert (response.status_code, reason(response)) == (status, why)


@pytest.mark.parametrize(("peer", "grant_code"), [
    pytest.param(CDN, 0, id="planted-from-the-cdn-is-not-carols"),
    pytest.param(GATEWAY, 1, id="from-the-gateway-carol-was-solicited"),
])
def test_client_id_planted_on_a_marketing_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    peer: str, grant_code: int,
) -> None:
    store_path = tmp_path / "grants.jsonl"

    async def follow_the_link() -> httpx.Response:
        app = await exchange(FileStore(str(store_path)))
        return await send(app, peer, "GET", "/?utm_campaign=spring",
                          {"X-Forwarded-For": SE, "X-Client-Id": "carol"})

    assert asyncio.run(follow_the_link()).status_code == 200
    monkeypatch.setenv("MICAFENCE_OFFICER", "a.lind")
    initiated = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat(timespec="seconds")
    code = main(["grant", "add", "--client", "carol", "--service", "exchange_for_funds",
                 "--asset", "BTC", "--initiated-at", initiated, "--channel", "email",
                 "--evidence", "ticket CS-77", "--verified-by", "a.lind", "--country", "FR",
                 "--store", f"file://{store_path}"])
    err = capsys.readouterr().err
    assert code == grant_code, err
    assert ("was solicited within the look-back window" in err) is (grant_code == 1)


# -- which hop is asked: the gateway behind a trusted proxy -------------------------------------

@pytest.mark.parametrize(("peer", "chain", "status", "why"), [
    # client -> gateway -> load balancer -> micafence: the balancer names the gateway.
    pytest.param(CDN, f"{SE}, {GATEWAY}", 201, None, id="gateway-behind-the-balancer"),
    pytest.param(CDN, f"{SE}, {GATEWAY}, 10.0.0.8", 201, None, id="two-proxies-after-gateway"),
    # client -> load balancer, naming the gateway itself: the balancer appends the client.
    pytest.param(CDN, f"{GATEWAY}, {SE}", 451, "eu.no_grant", id="gateway-written-by-client"),
    pytest.param(CDN, SE, 451, "eu.no_grant", id="around-the-gateway"),
    pytest.param(CDN, f"{SE}, garbage, {GATEWAY}", 201, None, id="junk-left-of-gateway"),
    pytest.param(CDN, f"{GATEWAY}, garbage", 451, "unknown_country.no_grant", id="junk-hop"),
])
async def test_gateway_reached_through_trusted_proxies(
    peer: str, chain: str, status: int, why: str | None
) -> None:
    response = await send(await exchange(), peer, "POST", "/api/orders",
                          {"X-Forwarded-For": chain, "X-Client-Id": "alice"}, BTC_ORDER)
    assert (response.status_code, reason(response)) == (status, why)


async def test_residence_header_is_identity_too() -> None:
    # A Swiss visitor whose gateway says they live in Germany is EU; a residence header the
    # CDN passes on from the client is not believed either way.
    headers = {"X-Forwarded-For": "2a02:d000::1", "X-Client-Residence": "DE"}
    from_gateway = await send(await exchange(), GATEWAY, "POST", "/api/accounts", headers,
                              {"email": "a@b.ch"})
    from_cdn = await send(await exchange(), CDN, "POST", "/api/accounts", headers,
                          {"email": "a@b.ch"})
    assert (from_gateway.status_code, reason(from_gateway)) == (451, "eu.account_creation")
    assert from_cdn.status_code == 201

"""The middleware as an app sees it: 451 answers, pass-through, scope state, lifespan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware

SE = "89.160.20.112"
US = "216.160.83.56"  # registered GB: in the uk zone, which may open accounts
CH = "2a02:d000::1"
PROXY = "127.0.0.1"


def client_for(app: Any, peer: str | None = SE, port: int = 40000) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, port) if peer else None)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://exchange.test")


async def test_eu_account_creation_gets_451_problem_json(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app()) as client:
        response = await client.post(
            "/api/accounts", json={"email": "a@b.c"}, headers={"Accept": "application/json"}
        )
    assert response.status_code == 451
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == 451
    assert body["reason"] == "eu.account_creation"
    assert body["rule"] == "no-new-accounts"
    assert body["policy_revision"].startswith("sha256:")
    assert body["type"] == "urn:micafence:reason:eu.account_creation"
    assert "SE" not in body["detail"]


async def test_browser_gets_451_html_page(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/signup", headers={"Accept": "text/html"})
    assert response.status_code == 451
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "New accounts cannot be opened" in response.text
    assert "eu.account_creation" in response.text


@pytest.mark.parametrize(("accept", "problem_json"), [
    ("application/json", True),
    ("text/html, application/problem+json;q=0.5", True),
    ("text/html, application/json;q=0", False),  # q=0: the client refuses JSON
    ("text/html, application/json; q=0.000", False),
    ("text/html, application/json;q=zero", True),  # a malformed q refuses nothing
    ("text/html", False),
])
async def test_the_451_body_follows_accept_and_its_refusals(
    make_app: Callable[..., Any], accept: str, problem_json: bool
) -> None:
    async with client_for(make_app()) as client:
        response = await client.post("/api/accounts", json={}, headers={"Accept": accept})
    assert response.status_code == 451
    kind = response.headers["content-type"]
    assert (kind == "application/problem+json") is problem_json, kind


async def test_head_gets_451_without_body(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app()) as client:
        response = await client.head("/signup")
    assert response.status_code == 451
    assert response.content == b""


@pytest.mark.parametrize("peer", [US, CH])
async def test_non_eu_visitor_can_create_account(make_app: Callable[..., Any], peer: str) -> None:
    async with client_for(make_app(), peer) as client:
        response = await client.post("/api/accounts", json={})
    assert response.status_code == 201
    assert response.text == "created"


async def test_blocked_request_never_reaches_app() -> None:
    reached = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

    guarded = MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB)
    async with client_for(guarded) as client:
        assert (await client.post("/api/accounts")).status_code == 451
        assert (await client.get("/markets")).status_code == 200
    assert reached == ["/markets"]


async def test_decision_is_in_scope_state_for_the_app(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app(), SE) as client:
        eu = (await client.get("/markets")).json()
    async with client_for(make_app(), US) as client:
        us = (await client.get("/markets")).json()
    assert eu == {"path": "/markets", "reason": "pass", "zones": ["eu"],
                  "promotions_allowed": False, "client_id": None}
    assert us["zones"] == ["uk"]  # registered GB
    assert us["promotions_allowed"] is False  # uk: approved promotions only


async def test_forwarded_client_from_trusted_proxy(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app(), PROXY) as client:
        blocked = await client.post("/api/accounts", headers={"X-Forwarded-For": SE})
        passed = await client.post("/api/accounts", headers={"X-Forwarded-For": CH})
    assert blocked.status_code == 451
    assert passed.status_code == 201


async def test_spoofed_forwarded_header_from_untrusted_peer_is_ignored(
    make_app: Callable[..., Any],
) -> None:
    async with client_for(make_app(), SE) as client:
        response = await client.post("/api/accounts", headers={"X-Forwarded-For": CH})
    assert response.status_code == 451


async def test_malformed_forwarded_chain_is_unknown_country_not_a_crash(
    make_app: Callable[..., Any],
) -> None:
    async with client_for(make_app(), PROXY) as client:
        response = await client.post(
            "/api/accounts", headers={"X-Forwarded-For": "not-an-ip", "Accept": "application/json"}
        )
        neutral = await client.get("/markets", headers={"X-Forwarded-For": b"\xff\xfe,,,"})
    assert response.status_code == 451
    assert response.json()["reason"] == "unknown_country.account_creation"
    assert neutral.status_code == 200
    assert neutral.json()["zones"] == ["unknown_country"]


async def test_missing_client_is_unknown_country(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app(), None) as client:
        signup = await client.post("/api/accounts", headers={"Accept": "application/json"})
        page = await client.get("/")
    assert signup.json()["reason"] == "unknown_country.account_creation"
    assert page.status_code == 200


async def test_identity_header_only_trusted_from_proxies(make_app: Callable[..., Any]) -> None:
    headers = {"X-Client-Id": "client-7", "Accept": "application/json"}
    async with client_for(make_app(), PROXY) as client:
        via_proxy = await client.post(
            "/api/withdrawals", headers={**headers, "X-Forwarded-For": SE}, json={}
        )
    async with client_for(make_app(), SE) as client:
        direct = await client.post("/api/withdrawals", headers=headers, json={})
    assert via_proxy.status_code == 200
    assert via_proxy.json()["client_id"] == "client-7"
    assert direct.status_code == 451
    assert direct.json()["reason"] == "eu.wind_down.unidentified"


async def test_residence_header_makes_a_swiss_ip_an_eu_client(make_app: Callable[..., Any]) -> None:
    headers = {"X-Forwarded-For": CH, "X-Client-Id": "c1", "X-Client-Residence": "FR"}
    async with client_for(make_app(), PROXY) as client:
        response = await client.post("/api/accounts", headers=headers)
    assert response.status_code == 451


async def test_service_route_without_grant_is_blocked(make_app: Callable[..., Any]) -> None:
    async with client_for(make_app()) as client:
        response = await client.post(
            "/api/orders", json={"pair": "BTC-EUR"}, headers={"Accept": "application/json"}
        )
    assert response.status_code == 451
    assert response.json()["reason"] == "eu.no_grant"


async def test_shadow_rule_lets_request_through(
    make_app: Callable[..., Any], policy_variant: Callable[[str, str], str]
) -> None:
    text = policy_variant(
        "    class: account_creation\n    outcome: block\n",
        "    class: account_creation\n    outcome: block\n    mode: shadow\n",
    )
    async with client_for(make_app(text)) as client:
        response = await client.post("/api/accounts")
    assert response.status_code == 201


async def test_lifespan_events_pass_through_and_run_hooks() -> None:
    from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append("app:" + message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    guarded = MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB)

    async def started() -> None:
        events.append("micafence:start")

    async def stopped() -> None:
        events.append("micafence:stop")

    guarded.on_lifespan(started, stopped)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return inbox.pop(0)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    await guarded({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert events == ["micafence:start", "app:lifespan.startup", "app:lifespan.shutdown",
                      "micafence:stop"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_blocked_by_link_header(
    make_app: Callable[..., Any], policy_variant: Callable[[str, str], str]
) -> None:
    text = policy_variant("mode: enforce", "mode: enforce\nblocked_by: https://exchange.example/legal")
    async with client_for(make_app(text)) as client:
        response = await client.post("/api/accounts")
    assert response.status_code == 451
    assert response.headers["link"] == '<https://exchange.example/legal>; rel="blocked-by"'

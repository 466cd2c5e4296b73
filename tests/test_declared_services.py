"""Grants are usable on the routes the firm maps to each service, and only there.

A staking grant covers its asset, not every asset staked under ``/earn``; a route may declare
its service next to a trading pair (an order route of a broker is order execution or
transmission, not an exchange), and then both the declared service and the pair's assets are
checked; a grant for any of the ten MiCA services passes on the routes mapped to it and on no
other. Every request goes over HTTP to a real uvicorn, from a Swedish address through the
trusted local proxy, with the client named by ``X-Client-Id``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, load_policy_text
from micafence.grants.book import GrantBook
from micafence.policy.catalogue import MICA_SERVICES
from micafence.policy.loader import load_policy
from micafence.policy.model import Policy
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread
from tests.live import decision_app

pytestmark = pytest.mark.server

SE = "89.160.20.112"


def record(store: MemoryStore, policy: Policy, client: str, service: str, asset: str) -> None:
    """A grant the client initiated an hour ago (by email), verified by compliance."""
    now = dt.datetime.now(dt.UTC)

    async def add() -> None:
        await GrantBook(store, policy).add(
            client_id=client, service=service, asset=asset,
            initiated_at=now - dt.timedelta(hours=1), channel="email",
            evidence=f"ticket {client}", verified_by="compliance", country="SE",
        )

    asyncio.run(add())


def ask(url: str, client: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """What a Swedish client gets: the status, and the reason of a 451."""
    headers = {"X-Forwarded-For": SE, "X-Client-Id": client, "Accept": "application/json"}
    response = httpx.request(method, url + path, json=body, headers=headers, timeout=10)
    reason = response.json()["reason"] if response.status_code == 451 else ""
    return response.status_code, reason


# -- staking names its asset ---------------------------------------------------------------------


def test_a_btc_staking_grant_stakes_btc_and_nothing_else() -> None:
    """The default policy's staking routes name their asset: a BTC staking grant no longer
    lets an ETH stake through (the demo app itself would accept it: 201)."""
    policy, store = load_policy(DEFAULT_POLICY), MemoryStore()
    record(store, policy, "carol", "staking", "BTC")
    record(store, policy, "gina", "exchange_for_funds", "BTC")
    guarded = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  store=store, watch=False)
    with ServerThread(guarded) as server:
        assert ask(server.url, "carol", "POST", "/earn/stake", {"asset": "ETH", "amount": "1"}) \
            == (451, "eu.out_of_scope.asset_type")
        assert ask(server.url, "carol", "POST", "/earn/stake", {"asset": "BTC", "amount": "1"}) \
            == (201, "")
        # The body must name the asset: a stake that does not is not in any scope.
        assert ask(server.url, "carol", "POST", "/earn/stake", {"amount": "1"}) \
            == (451, "eu.scope_unreadable")
        # The overview names no asset: any staking grant opens it.
        assert ask(server.url, "carol", "GET", "/earn") == (200, "")
        # A client without a grant, and a BTC trading grant, stake nothing.
        assert ask(server.url, "dave", "POST", "/earn/stake", {"asset": "BTC", "amount": "1"}) \
            == (451, "eu.no_grant")
        assert ask(server.url, "gina", "POST", "/earn/stake", {"asset": "BTC", "amount": "1"}) \
            == (451, "eu.out_of_scope.service")


def test_a_page_per_asset_names_it_in_the_path() -> None:
    policy, store = load_policy(DEFAULT_POLICY), MemoryStore()
    record(store, policy, "carol", "staking", "BTC")
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  store=store, watch=False)
    with ServerThread(guarded) as server:
        assert ask(server.url, "carol", "GET", "/earn/btc") == (200, "")
        assert ask(server.url, "carol", "GET", "/earn/BTC/rewards") == (200, "")
        assert ask(server.url, "carol", "GET", "/earn/eth/rewards") \
            == (451, "eu.out_of_scope.asset_type")
        # Any change under /earn reads the body, whatever the path says.
        assert ask(server.url, "carol", "DELETE", "/earn/btc/position", {"asset": "ETH"}) \
            == (451, "eu.out_of_scope.asset_type")
        assert ask(server.url, "carol", "DELETE", "/earn/btc/position", {"asset": "BTC"}) \
            == (200, "")


# -- a declared service with a pair --------------------------------------------------------------

BROKER = """\
  - {id: service.broker-orders, class: service, methods: [POST], path: /api/broker/orders,
     service: order_transmission, pair: {from: body, name: pair}}
"""


def with_routes(routes: str) -> Policy:
    """The default policy with ``routes`` in front of its wind-down routes."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    anchor = "  - {id: wind-down.withdrawals,"
    assert anchor in text
    return load_policy_text(text.replace(anchor, routes + anchor), "exchange.yaml")


def test_a_route_with_service_and_pair_checks_both() -> None:
    """The declared service replaces the pair's guess (exchange for funds); the pair still
    names the assets, every crypto leg of which must be in scope."""
    policy, store = with_routes(BROKER), MemoryStore()
    record(store, policy, "erin", "order_transmission", "BTC")
    record(store, policy, "frank", "exchange_for_funds", "BTC")  # what the pair would guess
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  store=store, watch=False)
    with ServerThread(guarded) as server:
        def order(client: str, pair: str) -> tuple[int, str]:
            return ask(server.url, client, "POST", "/api/broker/orders", {"pair": pair})

        assert order("erin", "BTC-EUR") == (200, "")
        assert order("erin", "ETH-EUR") == (451, "eu.out_of_scope.asset_type")
        assert order("erin", "BTC-ETH") == (451, "eu.out_of_scope.asset_type")  # ETH leg
        assert order("erin", "EUR-USD") == (451, "eu.scope_unreadable")  # no crypto-asset
        assert order("frank", "BTC-EUR") == (451, "eu.out_of_scope.service")
        # The exchange's own order route still guesses from the pair.
        assert ask(server.url, "frank", "POST", "/api/orders", {"pair": "BTC-EUR"}) == (200, "")
        assert ask(server.url, "erin", "POST", "/api/orders", {"pair": "BTC-EUR"}) \
            == (451, "eu.out_of_scope.service")


def test_a_declared_service_needs_no_exchange_services_in_the_catalogue() -> None:
    """A pair route that names its service does not depend on the pair's guesses."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for line in ("  exchange_for_funds: {mica: c}\n", "  exchange_for_crypto: {mica: d}\n",
                 "  related_services:        # come with a grant for the SAME asset only "
                 "(no cross-selling)\n",
                 "    exchange_for_funds: [transfer]    # withdrawing the asset bought\n",
                 "    exchange_for_crypto: [transfer]\n"):
        assert line in text
        text = text.replace(line, "")
    text = text.replace("     pair: {from: body, name: pair}}",
                        "     service: order_execution, pair: {from: body, name: pair}}")
    text = text.replace("     service: exchange_for_crypto, asset:",
                        "     service: custody, asset:")
    route = load_policy_text(text, "broker.yaml").catalogue.routes["service.orders"]
    assert (route.service, route.pair is not None) == ("order_execution", True)


# -- the ten services ----------------------------------------------------------------------------

# Each MiCA service on a route of its own, its asset named every way a route can name one.
# (route id, method, path, JSON body) of a request for BTC on each.
TEN_ROUTES = """\
  - {id: mica.a, class: service, methods: [POST], path: /api/custody/deposits,
     service: custody, asset: {from: body, name: asset}}
  - {id: mica.b, class: service, methods: [POST], path: /api/platform/orders,
     service: trading_platform, pair: {from: body, name: market}}
  - {id: mica.d, class: service, methods: [POST], path: "/api/convert/{asset}",
     service: exchange_for_crypto, asset: {from: path, name: asset}}
  - {id: mica.e, class: service, methods: [POST], path: /api/broker/execute,
     service: order_execution, pair: {from: body, name: pair}}
  - {id: mica.f, class: service, methods: [POST], path: "/api/launchpad/{token}/subscribe",
     service: placing, asset: {from: path, name: token}}
  - {id: mica.g, class: service, methods: [POST], path: /api/broker/orders,
     service: order_transmission, pair: {from: query, name: pair}}
  - {id: mica.h, class: service, methods: [GET], path: /api/advice,
     service: advice, asset: {from: query, name: asset}}
  - {id: mica.i, class: service, path: /api/portfolio/**, service: portfolio_management}
  - {id: mica.j, class: service, methods: [POST], path: /api/transfers,
     service: transfer, asset: {from: body, name: asset}}
"""
REQUESTS: dict[str, tuple[str, str, Any]] = {
    "custody": ("POST", "/api/custody/deposits", {"asset": "BTC"}),
    "trading_platform": ("POST", "/api/platform/orders", {"market": "BTC-EUR"}),
    # (c): the default policy's own order route, its service guessed from a fiat quote.
    "exchange_for_funds": ("POST", "/api/orders", {"pair": "BTC-EUR"}),
    "exchange_for_crypto": ("POST", "/api/convert/btc", None),
    "order_execution": ("POST", "/api/broker/execute", {"pair": "BTC-USD"}),
    "placing": ("POST", "/api/launchpad/BTC/subscribe", None),
    "order_transmission": ("POST", "/api/broker/orders?pair=BTC-EUR", None),
    "advice": ("GET", "/api/advice?asset=BTC", None),
    "portfolio_management": ("GET", "/api/portfolio/summary", None),
    "transfer": ("POST", "/api/transfers", {"asset": "BTC"}),
}


def test_a_grant_for_each_of_the_ten_services_opens_its_routes_and_no_other() -> None:
    """A BTC grant for each Art. 3(1)(16) service, one client each: every client's request
    on its own service's route passes; on any other route it is out of scope, except where
    ``scopes.related_services`` brings a service along for the same asset (the default
    policy: a transfer comes with exchanging)."""
    assert set(REQUESTS) == set(MICA_SERVICES)
    policy, store = with_routes(TEN_ROUTES), MemoryStore()
    for service in MICA_SERVICES:
        record(store, policy, f"client-{service}", service, "BTC")
    catalogue = policy.catalogue
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  store=store, watch=False)
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    expected: dict[tuple[str, str], tuple[int, str]] = {}
    with ServerThread(guarded) as server:
        for granted in MICA_SERVICES:
            for asked, (method, path, body) in REQUESTS.items():
                seen[granted, asked] = ask(server.url, f"client-{granted}", method, path, body)
                covered = asked == granted or catalogue.related(granted, asked)
                expected[granted, asked] = (200, "") if covered else (
                    451, "eu.out_of_scope.service")
    assert seen == expected
    # Both kinds of outcome occur (the related services are exactly the default policy's).
    assert sum(1 for answer in seen.values() if answer[0] == 200) == 12


def test_without_a_grant_every_service_route_is_closed() -> None:
    policy = with_routes(TEN_ROUTES)
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  store=MemoryStore(), watch=False)
    with ServerThread(guarded) as server:
        for method, path, body in REQUESTS.values():
            assert ask(server.url, "nobody", method, path, body) == (451, "eu.no_grant"), path

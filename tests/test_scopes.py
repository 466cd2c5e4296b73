"""Client-initiated scopes as a client sees them: which service requests pass inside a grant.

The demo exchange (a real Starlette app that parses every body) sits behind micafence, with a
memory store and a clock the tests move. An EU visitor (Sweden) comes through the trusted
local proxy with an ``X-Client-Id``, as behind the exchange's own load balancer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from micafence import MicafenceMiddleware, load_policy_text
from micafence.errors import StoreError
from micafence.grants.book import GrantBook
from micafence.policy.loader import load_policy
from micafence.policy.model import Policy
from micafence.store.base import Store
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread, echo_app

SE, CH, PROXY = "89.160.20.112", "2a02:d000::1", "127.0.0.1"
T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)  # when the client approached the firm
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


Request_ = tuple[str, str, Any]  # method, path, JSON body


def order(pair: str) -> Request_:
    return ("POST", "/api/orders", {"pair": pair, "side": "buy", "amount": "1"})


def swap(src: str, dst: str) -> Request_:
    return ("POST", "/api/swaps", {"from": src, "to": dst, "amount": "1"})


def withdraw(asset: str) -> Request_:
    return ("POST", "/api/withdrawals", {"asset": asset, "amount": "1", "address": "addr-1"})


EARN: Request_ = ("GET", "/earn", None)
WITHDRAWALS_AS_SERVICE = (
    "class: wind_down, methods: [POST], path: /api/withdrawals/**,",
    "class: service, methods: [POST], path: /api/withdrawals/**,",
)


def policy_of(*edits: tuple[str, str]) -> Policy:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return load_policy_text(text, "test-policy.yaml") if edits else load_policy(DEFAULT_POLICY)


async def grant(
    store: Store, policy: Policy, service: str, asset: str, client: str = "alice",
    initiated_at: dt.datetime = T0, **bounds: Any,
) -> str:
    book = GrantBook(store, policy, Clock(initiated_at + HOUR))
    recorded = await book.add(
        client_id=client, service=service, asset=asset, initiated_at=initiated_at,
        channel="email", evidence="ticket CS-1", verified_by="compliance", country="FR",
        **bounds,
    )
    return recorded.id


def guard(
    policy: Policy, store: Store, clock: Clock, app: Any = None
) -> MicafenceMiddleware:
    return MicafenceMiddleware(app or build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                               store=store, clock=clock)


async def send(
    app: Any, request: Request_, client: str | None = "alice", ip: str = SE,
    content: bytes | None = None,
) -> httpx.Response:
    method, path, body = request
    headers = {"X-Forwarded-For": ip, "Accept": "application/json"}
    if client:
        headers["X-Client-Id"] = client
    transport = httpx.ASGITransport(app=app, client=(PROXY, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as http:
        if content is not None:
            return await http.request(method, path, content=content, headers=headers)
        return await http.request(method, path, json=body, headers=headers)


def outcome(response: httpx.Response) -> tuple[int, str]:
    if response.status_code == 451:
        return 451, response.json()["reason"]
    return response.status_code, ""


# -- the scope tables of RULES.md rules 6-9 ------------------------------------------------------

SCOPE_TABLE = [
    # (grants as (service, asset), request, policy edits, expected status, expected reason)
    pytest.param([("exchange_for_funds", "BTC")], order("BTC-EUR"), (), 201, "",
                 id="btc-grant/btc-eur-order-passes"),
    # micafence reads "btc/eur" as BTC-EUR and lets it through; the demo app itself refuses it.
    pytest.param([("exchange_for_funds", "BTC")], order("btc/eur"), (), 400, "",
                 id="btc-grant/pair-spelling-reaches-the-app"),
    pytest.param([("exchange_for_funds", "BTC")], order("ETH-EUR"), (), 451,
                 "eu.out_of_scope.asset_type", id="btc-grant/eth-other-network-blocked"),
    pytest.param([("exchange_for_funds", "BTC")], order("BTC-ETH"), (), 451,
                 "eu.out_of_scope.service", id="btc-grant/crypto-quote-other-service-blocked"),
    pytest.param([("exchange_for_funds", "BTC")], swap("BTC", "ETH"), (), 451,
                 "eu.out_of_scope.service", id="btc-grant/swap-other-service-blocked"),
    pytest.param([("exchange_for_funds", "BTC")], EARN, (), 451, "eu.out_of_scope.service",
                 id="btc-grant/staking-blocked"),
    pytest.param([("exchange_for_funds", "BTC")], withdraw("BTC"), (WITHDRAWALS_AS_SERVICE,),
                 201, "", id="btc-grant/withdraw-btc-related-service"),
    pytest.param([("exchange_for_funds", "BTC")], withdraw("ETH"), (WITHDRAWALS_AS_SERVICE,),
                 451, "eu.out_of_scope.service", id="btc-grant/withdraw-eth-not-related"),
    pytest.param([("exchange_for_funds", "BTC")], withdraw("BTC"), (
        WITHDRAWALS_AS_SERVICE,
        ("    exchange_for_funds: [transfer]    # withdrawing the asset bought\n", ""),
    ), 451, "eu.out_of_scope.service", id="btc-grant/withdraw-without-related-setting"),
    pytest.param([("exchange_for_funds", "USDC")], order("PYUSD-EUR"), (), 201, "",
                 id="usd-emt/other-usd-emt-same-type"),
    pytest.param([("exchange_for_funds", "USDC")], order("EURC-EUR"), (), 451,
                 "eu.out_of_scope.asset_type", id="usd-emt/eur-emt-other-peg"),
    pytest.param([("exchange_for_funds", "NWT")], order("FUEL-USD"), (), 201, "",
                 id="utility/other-liquid-utility-same-type"),
    pytest.param([("exchange_for_funds", "NWT")], order("GOLDX-USD"), (), 451,
                 "eu.out_of_scope.asset_type", id="utility/art-not-same-type"),
    pytest.param([("exchange_for_funds", "NWT")], order("ACME-USD"), (), 451,
                 "eu.out_of_scope.asset_type", id="liquid/illiquid-not-same-type"),
    pytest.param([("exchange_for_funds", "BTC")], order("DOGE-EUR"), (), 451,
                 "eu.out_of_scope.asset_type", id="asset-not-in-catalogue"),
    pytest.param([("exchange_for_crypto", "ETH")], swap("ETH", "BTC"), (), 451,
                 "eu.out_of_scope.asset_type", id="swap/every-crypto-leg-must-be-in-scope"),
    pytest.param([("exchange_for_crypto", "ETH"), ("exchange_for_crypto", "BTC")],
                 swap("ETH", "BTC"), (), 201, "", id="swap/both-legs-granted"),
    pytest.param([("exchange_for_crypto", "ETH"), ("exchange_for_crypto", "BTC")],
                 order("BTC-ETH"), (), 201, "", id="crypto-pair/both-legs-granted"),
    pytest.param([("staking", "ETH")], EARN, (), 200, "",
                 id="staking-granted-by-name"),
    pytest.param([("staking", "ETH")], order("ETH-EUR"), (), 451, "eu.out_of_scope.service",
                 id="staking-grant-is-not-trading"),
]


@pytest.mark.parametrize(("grants", "request_", "edits", "status", "reason"), SCOPE_TABLE)
async def test_scope_table(
    grants: list[tuple[str, str]], request_: Request_, edits: tuple[tuple[str, str], ...],
    status: int, reason: str,
) -> None:
    policy, store = policy_of(*edits), MemoryStore()
    for service, asset in grants:
        await grant(store, policy, service, asset)
    app = guard(policy, store, Clock(T0 + 2 * HOUR))
    assert outcome(await send(app, request_)) == (status, reason)


async def test_other_clients_grants_do_not_count() -> None:
    policy, store = policy_of(), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC", client="alice")
    app = guard(policy, store, Clock(T0 + HOUR))
    assert outcome(await send(app, order("BTC-EUR"), client="bob")) == (451, "eu.no_grant")
    assert outcome(await send(app, order("BTC-EUR"), client=None)) == (451, "eu.no_grant")


# -- time bounds (rule 10) -----------------------------------------------------------------------

TIME_TABLE = [
    # (grant bounds, policy edits, elapsed since initiative, request, status, reason)
    pytest.param({}, (), 23 * HOUR, order("PYUSD-EUR"), 201, "", id="same-type-inside-window"),
    pytest.param({}, (), 25 * HOUR, order("PYUSD-EUR"), 451, "eu.grant_expired",
                 id="same-type-after-window"),
    pytest.param({}, (), 25 * HOUR, order("USDC-EUR"), 201, "", id="exact-asset-after-window"),
    pytest.param({}, (), 30 * DAY - dt.timedelta(seconds=1), order("USDC-EUR"), 201, "",
                 id="exact-asset-last-second-of-term"),
    pytest.param({}, (), 30 * DAY, order("USDC-EUR"), 451, "eu.grant_expired",
                 id="exact-asset-term-over"),
    pytest.param({"term": 7 * DAY}, (), 8 * DAY, order("USDC-EUR"), 451, "eu.grant_expired",
                 id="grant-with-shorter-term"),
    pytest.param({}, (("term: P30D ", "term: P7D  "),), 8 * DAY, order("USDC-EUR"), 451,
                 "eu.grant_expired", id="policy-tightened-after-recording"),
    pytest.param({}, (("same_type_window: PT24H", "same_type_window: PT6H "),), 7 * HOUR,
                 order("PYUSD-EUR"), 451, "eu.grant_expired", id="policy-window-setting"),
]


@pytest.mark.parametrize(("bounds", "edits", "elapsed", "request_", "status", "reason"),
                         TIME_TABLE)
async def test_time_bounds(
    bounds: dict[str, dt.timedelta], edits: tuple[tuple[str, str], ...],
    elapsed: dt.timedelta, request_: Request_, status: int, reason: str,
) -> None:
    store = MemoryStore()
    await grant(store, policy_of(), "exchange_for_funds", "USDC", **bounds)
    app = guard(policy_of(*edits), store, Clock(T0 + elapsed))
    assert outcome(await send(app, request_)) == (status, reason)


async def test_a_clients_repeated_orders_meet_each_bound_the_moment_it_passes() -> None:
    # One app, one client, one address: micafence remembers the settled order between
    # requests, and the clock walking over the window and the term must still end it.
    policy, store, clock = policy_of(), MemoryStore(), Clock(T0 + HOUR)
    await grant(store, policy, "exchange_for_funds", "USDC")
    app = guard(policy, store, clock)
    just = dt.timedelta(microseconds=1)
    walk = [  # (elapsed since the initiative, status of a USDC order, of a PYUSD order)
        (HOUR, 201, 201),
        (DAY - just, 201, 201),
        (DAY, 201, 451),  # the same-type window is over; the exact asset's term is not
        (30 * DAY - just, 201, 451),
        (30 * DAY, 451, 451),
        (HOUR, 201, 201),  # a clock set back (a corrected time source) is believed too
    ]
    for elapsed, usdc, pyusd in walk:
        clock.now = T0 + elapsed
        for request, status in ((order("USDC-EUR"), usdc), (order("PYUSD-EUR"), pyusd)):
            for _ in range(2):
                assert (await send(app, request)).status_code == status, (elapsed, request)


# -- revocation and wind-down --------------------------------------------------------------------


async def test_revocation_is_immediate_and_keeps_history() -> None:
    policy, store, clock = policy_of(), MemoryStore(), Clock(T0 + HOUR)
    grant_id = await grant(store, policy, "exchange_for_funds", "BTC")
    app = guard(policy, store, clock)
    assert outcome(await send(app, order("BTC-EUR"))) == (201, "")
    await GrantBook(store, policy, clock).revoke(grant_id, revoked_by="compliance",
                                                 reason="evidence withdrawn")
    assert outcome(await send(app, order("BTC-EUR"))) == (451, "eu.no_grant")
    kinds = [type(e).__name__ for e in await store.grant_events("alice")]
    assert kinds == ["Grant", "Revocation"]


async def test_revoking_one_grant_leaves_the_others() -> None:
    policy, store, clock = policy_of(), MemoryStore(), Clock(T0 + HOUR)
    btc = await grant(store, policy, "exchange_for_funds", "BTC")
    await grant(store, policy, "staking", "ETH")
    await GrantBook(store, policy, clock).revoke(btc, revoked_by="c", reason="r")
    app = guard(policy, store, clock)
    assert outcome(await send(app, order("BTC-EUR"))) == (451, "eu.out_of_scope.service")
    assert outcome(await send(app, EARN)) == (200, "")


WIND_DOWN_TABLE = [
    pytest.param(withdraw("BTC"), "alice", 200, "eu.wind_down", id="withdrawal-open"),
    pytest.param(("POST", "/api/account/close", None), "alice", 200, "eu.wind_down",
                 id="close-account-open"),
    pytest.param(("GET", "/api/account/export", None), "alice", 200, "eu.wind_down",
                 id="export-open"),
    pytest.param(withdraw("BTC"), None, 451, "eu.wind_down.unidentified",
                 id="unidentified-withdrawal-refused"),
    pytest.param(order("BTC-EUR"), "alice", 451, "eu.no_grant", id="new-purchase-closed"),
    pytest.param(swap("BTC", "ETH"), "alice", 451, "eu.no_grant", id="new-swap-closed"),
    pytest.param(EARN, "alice", 451, "eu.no_grant", id="staking-closed"),
]


@pytest.mark.parametrize(("request_", "client", "status", "reason"), WIND_DOWN_TABLE)
async def test_wind_down_open_to_existing_clients_purchases_closed(
    request_: Request_, client: str | None, status: int, reason: str
) -> None:
    # An existing client with no grant at all: off-boarding works, nothing new can be bought.
    app = guard(policy_of(), MemoryStore(), Clock(T0), echo_app())
    response = await send(app, request_, client=client)
    assert (response.status_code, response.json()["reason"]) == (status, reason)


# -- what the app is told ------------------------------------------------------------------------


async def test_in_scope_decision_names_grant_and_keeps_promotions_off() -> None:
    policy, store = policy_of(), MemoryStore()
    grant_id = await grant(store, policy, "exchange_for_funds", "BTC")
    seen: list[Any] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append(request.state.micafence)
        return JSONResponse({})

    app = Starlette(routes=[Route("/api/orders", endpoint, methods=["POST"])])
    await send(guard(policy, store, Clock(T0 + HOUR), app), order("BTC-EUR"))
    decision = seen[0]
    assert (decision.reason, decision.grant_id, decision.blocked) == ("eu.in_scope", grant_id,
                                                                      False)
    assert decision.promotions_allowed is False
    assert decision.as_dict()["grant_id"] == grant_id


async def test_shadow_rule_passes_out_of_scope_requests() -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8").replace(
        "    class: service\n    outcome: require_grant\n",
        "    class: service\n    outcome: require_grant\n    mode: shadow\n",
    )
    policy, store = load_policy_text(text, "shadow.yaml"), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    app = guard(policy, store, Clock(T0 + HOUR))
    response = await send(app, order("BTC-ETH"))
    assert response.status_code == 201  # the demo app took the order
    assert outcome(await send(app, order("BTC-EUR"))) == (201, "")


class BrokenStore(MemoryStore):
    """A store whose grant reads fail, as an unreachable Redis would."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def grant_events(self, client_id: str | None = None) -> list[Any]:
        self.reads += 1
        raise StoreError("connection refused")


async def test_store_failure_fails_closed_and_anonymous_traffic_never_touches_it() -> None:
    store = BrokenStore()
    app = guard(policy_of(), store, Clock(T0))
    home = await send(app, ("GET", "/", None), client=None)
    swiss = await send(app, order("BTC-EUR"), ip=CH, client=None)
    unidentified = await send(app, order("BTC-EUR"), client=None)
    assert (home.status_code, swiss.status_code) == (200, 201)
    assert outcome(unidentified) == (451, "eu.no_grant")
    assert store.reads == 0
    assert outcome(await send(app, order("BTC-EUR"))) == (451, "eu.store_unavailable")
    assert store.reads == 2  # the client registry's look-up, then the grant check
    # An identified client the registry never read cannot be placed: the unknown country's
    # rules apply (RULES.md: when micafence cannot tell), even on a Swiss address.
    swiss_client = await send(app, order("BTC-EUR"), ip=CH)
    assert outcome(swiss_client) == (451, "unknown_country.store_unavailable")


# -- reading the request: path, query, malformed and oversized bodies ----------------------------

PATH_AND_QUERY = (
    "  - {id: wind-down.export,",
    "  - {id: custody.asset, class: service, path: '/api/custody/{asset}', service: custody,\n"
    "     asset: {from: path, name: asset}}\n"
    "  - {id: advice.asset, class: service, path: /api/advice, service: advice,\n"
    "     asset: {from: query, name: asset}}\n"
    "  - {id: wind-down.export,",
)


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/api/custody/btc", 200, "eu.in_scope"),
    ("/API//Custody/BTC/", 200, "eu.in_scope"),
    ("/api/custody/ETH", 451, "eu.out_of_scope.asset_type"),
    ("/api/advice?asset=BTC", 200, "eu.in_scope"),
    ("/api/advice?asset=ETH", 451, "eu.out_of_scope.asset_type"),
    ("/api/advice?asset=BTC&asset=ETH", 451, "eu.scope_unreadable"),
    ("/api/advice?asset=BTC&asset=BTC", 200, "eu.in_scope"),
    ("/api/advice", 451, "eu.scope_unreadable"),
    ("/api/advice?asset=B%20TC", 451, "eu.scope_unreadable"),
])
async def test_assets_from_path_and_query(path: str, status: int, reason: str) -> None:
    policy, store = policy_of(PATH_AND_QUERY), MemoryStore()
    await grant(store, policy, "custody", "BTC")
    await grant(store, policy, "advice", "BTC")
    app = guard(policy, store, Clock(T0 + HOUR), echo_app())
    response = await send(app, ("GET", path, None))
    got = response.json()["reason"]
    assert (response.status_code, got) == (status, reason)


BIG = 64 * 1024
MALFORMED = [
    pytest.param(b'{"pair": "BTC-EUR"', id="truncated-json"),
    pytest.param(b'["BTC-EUR"]', id="json-array"),
    pytest.param(b'{"side": "buy"}', id="field-missing"),
    pytest.param(b'{"pair": 42}', id="field-not-a-string"),
    pytest.param(b'{"pair": "ETH-EUR", "pair": "BTC-EUR"}', id="duplicate-key"),
    pytest.param(b'{"pair": "ETH-EUR", "\\u0070air": "BTC-EUR"}', id="duplicate-key-escaped"),
    pytest.param('{"pair": "ETH-EUR", "pair": "BTC-EUR"}'.encode("utf-16"),
                 id="duplicate-key-utf16"),
    pytest.param(b'{"x": {"pair": "ETH-EUR"}, "pair": "BTC-EUR", "pair": "BTC-EUR"}',
                 id="duplicate-key-nested-too"),
    pytest.param(b'{"pair": "BTC-EUR", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                 id="deep-nesting"),
    pytest.param(b'{"pair": "BTC-EUR", "x": "\xff\xfe"}', id="not-utf8"),
    pytest.param(b'{"pair": "EUR-USD"}', id="fiat-only-pair"),
    pytest.param(b'{"pair": "BTC-EUR; drop"}', id="pair-with-junk"),
    pytest.param(b'{"pair": "BTC-EUR", "pad": "' + b"x" * BIG + b'"}', id="oversized"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_or_oversized_body_is_out_of_scope(body: bytes) -> None:
    policy, store = policy_of(), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    app = guard(policy, store, Clock(T0 + HOUR))
    response = await send(app, ("POST", "/api/orders", None), content=body)
    assert outcome(response) == (451, "eu.scope_unreadable")


@pytest.mark.parametrize("body", [
    pytest.param(b'{"pair": "BTC-EUR", "side": "buy", "side": "buy"}', id="other-key-repeated"),
    pytest.param(b'{"note": "pair", "pair": "BTC-EUR"}', id="key-name-as-a-value"),
    pytest.param('{"pair": "BTC-EUR"}'.encode("utf-16"), id="utf16"),
    pytest.param('{"pair": "BTC-EUR"}'.encode("utf-8-sig"), id="utf8-bom"),
    pytest.param(' \n{"pair": "BTC-EUR", "memo": "caf\u00e9"}\n'.encode(), id="utf8-whitespace"),
    pytest.param(b'{"pair": " btc/eur' + b" " * 5000 + b'"}', id="padded-pair"),
])
async def test_a_readable_body_is_in_scope(body: bytes) -> None:
    """Only the keys micafence reads must be unambiguous; how they are spelt does not matter."""
    policy, store = policy_of(), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    app = guard(policy, store, Clock(T0 + HOUR), echo_app())
    response = await send(app, ("POST", "/api/orders", None), content=body)
    assert (response.status_code, response.json()["reason"]) == (200, "eu.in_scope")


async def test_a_long_pair_value_is_read_but_its_scope_not_kept() -> None:
    """A pair value can be as long as the body: the scope of a long one is not remembered (1024
    of them would hold 1024 bodies), and its verdict is the same as a short one's, each time."""
    from micafence.grants import gate

    policy, store = policy_of(), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    app = guard(policy, store, Clock(T0 + HOUR), echo_app())
    before = gate._pair_scope.cache_info()
    for body in (b'{"pair": "BTC-EUR' + b" " * 5000 + b'"}',
                 b'{"pair": "BTC-EUR' + b" " * 5000 + b'"}',
                 b'{"pair": "ETH-EUR' + b" " * 5000 + b'"}'):
        response = await send(app, ("POST", "/api/orders", None), content=body)
        assert outcome(response) == ((451, "eu.out_of_scope.asset_type") if b"ETH" in body
                                     else (200, ""))
    after = gate._pair_scope.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    response = await send(app, order("btc-eur"))
    assert (response.status_code, response.json()["reason"]) == (200, "eu.in_scope")
    response = await send(app, order("ETH-EUR"))
    assert outcome(response) == (451, "eu.out_of_scope.asset_type")


async def test_chunked_oversized_body_without_length_is_out_of_scope() -> None:
    policy, store = policy_of(), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    reached: list[int] = []

    async def app(scope: Any, receive: Any, send_: Any) -> None:
        reached.append(1)

    guarded = guard(policy, store, Clock(T0 + HOUR), app)
    head = b'{"pair": "BTC-EUR", "pad": "'
    chunks = [head] + [b"x" * 16384] * 8 + [b'"}']
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/api/orders", "root_path": "",
        "query_string": b"", "client": (PROXY, 1), "headers": [
            (b"x-forwarded-for", SE.encode()), (b"x-client-id", b"alice"),
            (b"accept", b"application/json"),
        ],
    }
    await guarded(scope, receive, collect)
    assert reached == []
    assert sent[0]["status"] == 451
    assert json.loads(sent[1]["body"])["reason"] == "eu.scope_unreadable"
    assert len(messages) == len(chunks) - 5  # reading stopped just past the limit


# -- the body reaches the app intact (real uvicorn) ----------------------------------------------


def body_echo_app() -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                             "reason": request.state.micafence.reason})

    return Starlette(routes=[Route("/api/orders", endpoint, methods=["POST"])])


@pytest.mark.server
@pytest.mark.parametrize(("size", "mode", "reason"), [
    pytest.param(40_000, "enforce", "eu.in_scope", id="read-whole-then-replayed"),
    pytest.param(300_000, "shadow", "eu.scope_unreadable", id="read-in-part-then-replayed"),
])
async def test_app_receives_the_full_body_after_micafence_read_it(
    size: int, mode: str, reason: str
) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8").replace(
        "    class: service\n    outcome: require_grant\n",
        f"    class: service\n    outcome: require_grant\n    mode: {mode}\n",
    )
    policy, store = load_policy_text(text, "replay.yaml"), MemoryStore()
    await grant(store, policy, "exchange_for_funds", "BTC")
    body = b'{"pair": "BTC-EUR", "pad": "' + b"y" * (size - 30) + b'"}'

    async def chunked() -> Any:  # no Content-Length: the server streams it in pieces
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    with ServerThread(guard(policy, store, Clock(T0 + HOUR), body_echo_app())) as server:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                server.url + "/api/orders", content=chunked(),
                headers={"X-Forwarded-For": SE, "X-Client-Id": "alice"},
            )
    assert response.status_code == 200
    assert response.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                               "reason": reason}

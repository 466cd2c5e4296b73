"""Blocked websocket handshakes are refused before accept; allowed ones reach the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from micafence import Enforcer, GeoIPDatabase, load_policy
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

pytestmark = pytest.mark.server

# The default policy with the /ws price stream classed as a service (needs a grant).
WS_IS_A_SERVICE = (
    "  - {id: wind-down.export,",
    "  - {id: stream.prices, class: service, path: /ws}\n  - {id: wind-down.export,",
)


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_blocked_websocket_gets_451_under_uvicorn(
    make_app: Callable[..., Any], policy_variant: Callable[[str, str], str], ws: str
) -> None:
    text = policy_variant(*WS_IS_A_SERVICE)
    with ServerThread(make_app(text), ws=ws) as server:
        url = server.url.replace("http", "ws") + "/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"X-Forwarded-For": "89.160.20.112"}, open_timeout=5)
        assert refused.value.response.status_code == 451
        assert refused.value.response.headers["micafence-reason"] == "eu.no_grant"
        # A Swiss visitor is not restricted: the handshake completes and the app answers.
        with connect(url, additional_headers={"X-Forwarded-For": "2a02:d000::1"},
                     open_timeout=5) as socket:
            assert socket.recv(timeout=5) == "hello"


async def test_blocked_websocket_without_extension_is_closed_before_accept(
    make_app: Callable[..., Any], policy_variant: Callable[[str, str], str]
) -> None:
    text = policy_variant(*WS_IS_A_SERVICE)
    app = make_app(text)
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("89.160.20.112", 1),
             "query_string": b"", "root_path": ""}
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "eu.no_grant"}]


# A handshake has no method of its own: a route limited by `methods:` must still match it
# (issue 15.8). Here the stream at /ws takes orders, a POST-only service route.
ORDERS_OVER_WS = (
    "  - {id: wind-down.export,",
    "  - {id: stream.orders, class: service, methods: [POST, PUT, PATCH], path: /ws}\n"
    "  - {id: wind-down.export,",
)


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_methods_limited_route_matches_the_handshake(
    make_app: Callable[..., Any], policy_variant: Callable[[str, str], str], ws: str
) -> None:
    with ServerThread(make_app(policy_variant(*ORDERS_OVER_WS)), ws=ws) as server:
        url = server.url.replace("http", "ws") + "/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"X-Forwarded-For": "89.160.20.112"}, open_timeout=5)
        assert refused.value.response.status_code == 451
        assert refused.value.response.headers["micafence-reason"] == "eu.no_grant"
        with connect(url, additional_headers={"X-Forwarded-For": "2a02:d000::1"},
                     open_timeout=5) as socket:
            assert socket.recv(timeout=5) == "hello"


@pytest.mark.parametrize(("path", "route_class", "reason"), [
    pytest.param("/api/orders", "service", "eu.service", id="post-put-patch-service"),
    pytest.param("/api/accounts", "account_creation", "eu.account_creation",
                 id="post-put-account-creation"),
    pytest.param("/api/withdrawals", "wind_down", "eu.wind_down.unidentified",
                 id="post-wind-down"),
    # A path no entry names: the policy's unlisted defaults, the stricter of the two (a
    # websocket nobody listed fails closed like an unsafe method).
    pytest.param("/markets", "service", "eu.service", id="no-route"),
    pytest.param("/ws/prices", "neutral", "pass", id="listed-market-data-stream"),
])
def test_handshake_takes_the_strictest_class_of_its_path(
    path: str, route_class: str, reason: str
) -> None:
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB))
    scope = {"type": "websocket", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"x-forwarded-for", b"89.160.20.112")],
             "client": ("127.0.0.1", 40000)}
    decision = enforcer.decide(scope)
    assert (decision.route_class, decision.reason) == (route_class, reason)
    # The same path as a plain GET stays what its GET routes say (none: neutral).
    get = enforcer.decide({**scope, "type": "http", "method": "GET"})
    assert (get.route_class, get.reason) == ("neutral", "pass")

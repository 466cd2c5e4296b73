"""Blocked websocket handshakes are refused before accept; allowed ones reach the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import ServerThread

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

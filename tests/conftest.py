"""Shared fixtures: test databases, policies, and fresh apps behind micafence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from micafence import MicafenceMiddleware, default_policy_path, load_policy_text
from micafence_tools.bench.ports import free_port

DATA = Path(__file__).parent / "data"
MAXMIND = DATA / "maxmind"
COUNTRY_DB = MAXMIND / "GeoIP2-Country-Test.mmdb"
CITY_DB = MAXMIND / "GeoIP2-City-Test.mmdb"
REGIONS_DB = DATA / "micafence-regions-Test.mmdb"
DEFAULT_POLICY = default_policy_path()


def echo_app() -> Starlette:
    """A tiny app that says what micafence told it, for asserting pass-through behaviour."""

    async def endpoint(request: Request) -> JSONResponse:
        decision = request.state.micafence
        return JSONResponse({
            "path": request.url.path,
            "reason": decision.reason,
            "zones": list(decision.zones),
            "promotions_allowed": decision.promotions_allowed,
            "client_id": decision.client_id,
        })

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("created", status_code=201)

    return Starlette(routes=[
        Route("/api/accounts", plain, methods=["POST", "PUT"]),
        Route("/{path:path}", endpoint, methods=["GET", "POST", "HEAD", "PUT", "DELETE"]),
        WebSocketRoute("/ws", ws_endpoint),
    ])


@pytest.fixture
def policy_variant() -> Callable[[str, str], str]:
    """The default policy text with one piece replaced (fails if the piece is not there)."""

    def variant(old: str, new: str) -> str:
        text = DEFAULT_POLICY.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in the default policy"
        return text.replace(old, new)

    return variant


@pytest.fixture
def make_app() -> Callable[..., MicafenceMiddleware]:
    """A fresh echo app behind micafence (default policy and the official Country test DB)."""

    def make(policy_text: str | None = None, **kwargs: object) -> MicafenceMiddleware:
        policy = (
            load_policy_text(policy_text, "test-policy.yaml") if policy_text else DEFAULT_POLICY
        )
        db = kwargs.pop("geoip_db", COUNTRY_DB)
        return MicafenceMiddleware(echo_app(), policy=policy, geoip_db=db, **kwargs)  # type: ignore[arg-type]

    return make


class ServerThread:
    """A real uvicorn server for ``app`` on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app: object, **config: object) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", proxy_headers=False,
            lifespan="on", **config,  # type: ignore[arg-type]
        ))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

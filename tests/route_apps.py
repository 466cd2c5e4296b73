"""Small Starlette apps for ``micafence routes`` (tests/test_app_routes.py): every kind of route
the command walks, and apps it must refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

STATIC = Path(__file__).resolve().parents[1] / "examples" / "static"


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


class Orders(HTTPEndpoint):
    async def get(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("orders")

    async def post(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("placed")


async def raw_asgi(scope: Any, receive: Any, send: Any) -> None:
    """An app mounted whole: the command cannot see what it serves (it answers 404 to all)."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


admin = Starlette(routes=[Route("/users/{user_id:int}", ok, methods=["DELETE"])],
                  middleware=[Middleware(GZipMiddleware)])

app = Starlette(routes=[
    Route("/", ok),
    Route("/api/accounts", ok, methods=["POST"]),
    Route("/api/orders", Orders),
    Route("/files/{name}.txt", ok),
    WebSocketRoute("/ws/prices", stream),
    WebSocketRoute("/ws/orders", stream),
    Mount("/v2", routes=[
        Route("/orders", ok, methods=["POST", "PATCH"]),
        Mount("/{tenant}", routes=[Route("/withdrawals", ok, methods=["POST"])]),
    ]),
    Mount("/admin", app=admin),
    Mount("/static", app=StaticFiles(directory=STATIC)),
    Mount("/legacy", app=raw_asgi),
    Host("api.example.test", app=Router(routes=[Route("/ping", ok, methods=["PUT"])])),
    Route("/docs/{page:path}", ok),
])

# The app behind its middleware, as a deployment mounts it: the command finds its routes.
wrapped = GZipMiddleware(app)

not_an_app = object()

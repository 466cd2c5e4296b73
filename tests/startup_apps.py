"""The three documented ways to mount micafence, as factories for a real server process
(``uvicorn --factory tests.startup_apps:<name>``, ``gunicorn 'tests.startup_apps:<name>()'``).

Configured by environment, since a server calls a factory without arguments: ``STARTUP_POLICY``
(the policy file), ``STARTUP_GEOIP_DB`` (default: MaxMind's Country test database),
``STARTUP_STORE`` (default ``memory://``). Every mounting serves micafence's probes at
``/healthz/live`` and ``/healthz/ready``, and the app answers ``/`` with ``home`` and
``/api/accounts`` with 201.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from micafence import MicafenceMiddleware
from tests.conftest import COUNTRY_DB


def _options() -> dict[str, Any]:
    return {
        "policy": os.environ["STARTUP_POLICY"],
        "geoip_db": os.environ.get("STARTUP_GEOIP_DB", str(COUNTRY_DB)),
        "store": os.environ.get("STARTUP_STORE", "memory://"),
        "health_path": "/healthz",
    }


async def _home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("home")


async def _create_account(request: Request) -> PlainTextResponse:
    return PlainTextResponse("created", status_code=201)


_ROUTES = [Route("/", _home), Route("/api/accounts", _create_account, methods=["POST"])]


def starlette_app() -> Starlette:
    """``Starlette(middleware=[Middleware(MicafenceMiddleware, ...)])`` (built lazily)."""
    return Starlette(routes=_ROUTES, middleware=[Middleware(MicafenceMiddleware, **_options())])


def fastapi_app() -> FastAPI:
    """FastAPI with ``app.add_middleware(MicafenceMiddleware, ...)`` (built lazily)."""
    app = FastAPI()
    app.router.routes.extend(_ROUTES)
    app.add_middleware(MicafenceMiddleware, **_options())
    return app


def wrapped_app() -> MicafenceMiddleware:
    """``MicafenceMiddleware(app, ...)``: built at once, when the server loads the app."""
    return MicafenceMiddleware(Starlette(routes=_ROUTES), **_options())


async def _http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app without lifespan support, as Django's ASGI handler is: it raises on anything but
    ``http`` (Django: "Django can only handle ASGI/HTTP connections, not lifespan.")."""
    if scope["type"] != "http":
        raise ValueError(f"can only handle ASGI/HTTP connections, not {scope['type']}")
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"created"})


def http_only_app() -> MicafenceMiddleware:
    """``MicafenceMiddleware(app, ...)`` around an app that has no lifespan (Django), with the
    decision log in ``$STARTUP_AUDIT_DIR`` (key: ``$MICAFENCE_AUDIT_KEY``)."""
    from micafence import AuditLog

    return MicafenceMiddleware(_http_only, audit=AuditLog(os.environ["STARTUP_AUDIT_DIR"]),
                               **_options())

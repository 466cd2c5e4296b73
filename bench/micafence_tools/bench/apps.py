"""The apps every benchmark compares, and the middlewares put in front of them.

In-process, every figure is taken against a **trivial** Starlette app (each route answers
``PlainTextResponse("ok")``): the bare route's own time in the same run is the unit every
overhead is a fraction of. Over HTTP the servers run the demo exchange.

In front of an app: micafence; the **floor**, a pure-ASGI middleware that only passes ``send``
on (the least any middleware touching responses can cost); and the **naive peer**, what a team
would write without micafence: Starlette's ``BaseHTTPMiddleware`` calling ``geoip2``'s
``Reader.country()`` on every request. This is the only place in the package allowed to use
``BaseHTTPMiddleware``, as the thing to beat. The HTTP factories (no arguments) read their files
from the environment so ``uvicorn --factory`` can start them.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from micafence.middleware import MicafenceMiddleware
from micafence.policy.loader import default_policy_path
from micafence_tools.demo.app import build_demo_app

POLICY_ENV = "MICAFENCE_BENCH_POLICY"
DATABASE_ENV = "MICAFENCE_BENCH_DB"

# The naive peer's idea of "the EU": the 27 member states, nothing else (it is the baseline).
_NAIVE_EU = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})
_SIGNUP_PATHS = frozenset({"/signup", "/api/accounts"})


def policy_path() -> str:
    return os.environ.get(POLICY_ENV) or str(default_policy_path())


def database_path() -> str:
    from micafence.cli import bundled_test_database

    return os.environ.get(DATABASE_ENV) or str(bundled_test_database())


def trivial_app() -> Starlette:
    """The in-process unit: a neutral route, the sign-up and the order route, each answering
    ``PlainTextResponse("ok")`` without reading the request."""

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/healthz", ok, methods=["GET"]),
        Route("/api/accounts", ok, methods=["POST"]),
        Route("/api/orders", ok, methods=["POST"]),
    ])


def guarded(app: Any, **options: Any) -> MicafenceMiddleware:
    """``app`` behind micafence, on the benchmark's policy and database."""
    return MicafenceMiddleware(app, policy=policy_path(), geoip_db=database_path(), **options)


def naive(app: Any) -> Any:
    """``app`` behind a ``BaseHTTPMiddleware`` doing a geoip2 lookup per request."""
    import geoip2.database
    import geoip2.errors
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.responses import JSONResponse, Response

    reader = geoip2.database.Reader(database_path())

    class NaiveGeoBlock(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            forwarded = request.headers.get("x-forwarded-for", "")
            ip = forwarded.split(",")[-1].strip() or (request.client.host if request.client else "")
            try:
                country = reader.country(ip).country.iso_code
            except (geoip2.errors.AddressNotFoundError, ValueError):
                country = None
            if country in _NAIVE_EU and request.url.path in _SIGNUP_PATHS:
                return JSONResponse({"error": "unavailable"}, status_code=451)
            return await call_next(request)

    return NaiveGeoBlock(app)


def floor(inner: Any) -> Any:
    """``inner`` behind the thinnest middleware that touches responses: a pure-ASGI wrapper of
    ``send`` doing nothing else. What it costs is the floor any such middleware (micafence's
    cache-safety wrapper among them) can reach on this machine."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return

        async def passing_send(message: Any) -> None:
            await send(message)

        await inner(scope, receive, passing_send)

    return app


# The HTTP servers' factories (uvicorn --factory): the demo exchange, bare or behind each.

def bare_app() -> Starlette:
    """The demo exchange with nothing in front."""
    return build_demo_app()


def micafence_app() -> MicafenceMiddleware:
    """The demo exchange behind micafence."""
    return guarded(build_demo_app())


def naive_app() -> Any:
    """The demo exchange behind the naive peer."""
    return naive(build_demo_app())


def floor_app() -> Any:
    """The demo exchange behind the send-only floor."""
    return floor(build_demo_app())

"""Meridian Exchange: a sample FastAPI app shaped like a real exchange's public API, for
``micafence routes`` and the tests (``tests/test_exchange_app.py``).

The shape follows Coinbase Exchange's REST API (unversioned resource paths: ``/products/{id}/book``,
``/orders``, ``/withdrawals``, ``/reports``), with the product lines a large exchange adds on top
(margin, futures, convert, earn and staking, launchpad, lending, copy trading) as Binance and OKX
offer them, an auth router, OAuth callbacks, a webhooks sub-app, static files and a market-data
websocket: 51 routes. The default policy classes every one of them::

    micafence routes exchange_app:app --app-dir examples --strict

The app knows nothing about geography: micafence goes in front of it, as in any deployment::

    from micafence import MicafenceMiddleware
    app.add_middleware(MicafenceMiddleware, policy="policies/default.yaml",
                       geoip_db="/var/lib/GeoIP/GeoIP2-Country.mmdb")

Handlers answer with what they were asked (no storage, no validation): what matters here is
which requests reach them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def _echo(request: Request) -> dict[str, Any]:
    """What every handler answers: the route it is, and the path parameters it was given."""
    return {"route": request.scope["route"].name, "params": dict(request.path_params)}


def _routes(router: APIRouter, table: list[tuple[str, str, str]]) -> None:
    for method, path, name in table:
        router.add_api_route(path, _echo, methods=[method], name=name)


# -- public market data and status (neutral) ---------------------------------------------------
public = APIRouter(prefix="/api")
_routes(public, [
    ("GET", "/time", "time"),
    ("GET", "/status", "status"),
    ("GET", "/products", "products"),
    ("GET", "/products/{product_id}/book", "product-book"),
    ("GET", "/products/{product_id}/ticker", "product-ticker"),
    ("GET", "/products/{product_id}/candles", "product-candles"),
])

# -- signing in and out (neutral: an existing client needs them to wind down) -----------------
auth = APIRouter(prefix="/api/auth")
_routes(auth, [
    ("POST", "/login", "login"),
    ("POST", "/logout", "logout"),
    ("POST", "/token/refresh", "token-refresh"),
    ("POST", "/password/reset", "password-reset"),
])

# -- the signed-in client's own data (neutral reads) ---------------------------------------------
account = APIRouter(prefix="/api")
_routes(account, [
    ("GET", "/accounts", "balances"),
    ("GET", "/orders", "open-orders"),
])

# -- account creation --------------------------------------------------------------------------
signup = APIRouter()
_routes(signup, [
    ("GET", "/signup", "signup-page"),
    ("POST", "/api/accounts", "create-account"),
    ("POST", "/api/users", "create-user"),
    ("POST", "/api/kyc/start", "kyc-start"),
    ("POST", "/api/invitations/{code}/accept", "accept-invitation"),
    ("GET", "/oauth/{provider}/signup/callback", "oauth-signup"),
    ("GET", "/oauth/{provider}/login/callback", "oauth-login"),  # neutral: signing in
])

# -- promotion -----------------------------------------------------------------------------------
promotion = APIRouter()
_routes(promotion, [
    ("GET", "/api/promotions", "promotion-feed"),
    ("GET", "/api/referral", "referral-program"),
    ("GET", "/api/campaigns", "campaigns"),
    ("GET", "/api/rewards", "rewards"),
    ("GET", "/r/{code}", "referral-link"),
    ("GET", "/launch/{project}", "launch-page"),
])

# -- services ------------------------------------------------------------------------------------
service = APIRouter()
_routes(service, [
    ("POST", "/api/orders", "place-order"),
    ("POST", "/api/orders/batch", "place-orders"),
    ("PATCH", "/api/orders/{order_id}", "amend-order"),
    ("POST", "/api/margin/orders", "margin-order"),
    ("POST", "/api/futures/orders", "futures-order"),
    ("POST", "/api/convert/quote", "convert-quote"),
    ("POST", "/api/convert/trade", "convert-trade"),
    ("POST", "/api/swaps", "swap"),
    ("GET", "/earn", "earn-page"),
    ("GET", "/earn/{asset}", "earn-asset-page"),
    ("POST", "/earn/stake", "stake"),
    ("POST", "/api/launchpad/{project}/subscribe", "launchpad-subscribe"),
    ("POST", "/api/lending/offers", "lending-offer"),
    ("POST", "/api/copy-trading/{trader_id}/follow", "copy-trader"),
    ("POST", "/api/transfers", "transfer"),
    ("POST", "/api/deposits/addresses", "deposit-address"),
])

# -- winding down --------------------------------------------------------------------------------
wind_down = APIRouter()
_routes(wind_down, [
    ("POST", "/api/withdrawals", "withdraw"),
    ("DELETE", "/api/orders/{order_id}", "cancel-order"),
    ("POST", "/api/futures/positions/{position_id}/close", "close-position"),
    ("POST", "/api/account/close", "close-account"),
    ("GET", "/api/account/export", "export-data"),
    ("POST", "/api/reports", "request-statement"),
])

# -- webhooks the exchange receives: a sub-app of its own -----------------------------------------
webhooks = FastAPI(openapi_url=None)
webhooks.add_api_route("/kyc", _echo, methods=["POST"], name="kyc-webhook")
webhooks.add_api_route("/payments", _echo, methods=["POST"], name="payments-webhook")

app = FastAPI(title="Meridian Exchange", docs_url=None, redoc_url=None, openapi_url=None)
for router in (public, auth, account, signup, promotion, service, wind_down):
    app.include_router(router)
app.mount("/webhooks", webhooks, name="webhooks")
app.mount("/static", StaticFiles(directory=STATIC), name="static")


@app.websocket("/ws/prices", name="price-stream")
async def prices(websocket: WebSocket) -> None:
    """Market data: one tick, then close."""
    await websocket.accept()
    await websocket.send_json({"product_id": "BTC-USD", "price": "61250.00"})
    await websocket.close()

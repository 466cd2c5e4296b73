"""Northwind Exchange: a fake non-EU crypto exchange that ``micafence demo`` protects.

The app knows nothing about geography. Its only hook is the home page template, which renders
each promotion only when ``micafence.promotions.templating.promotion_allowed`` says the visitor
may see it
(all of them where promotions are allowed, approved non-incentive ones in the UK, none in the EU).
The signed-in client is named by the ``X-Client-Id`` header (stand-in for an auth layer).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from micafence.promotions.templating import promotion_allowed

PRICES: dict[str, str] = {"BTC": "61250.00", "ETH": "3105.40", "USDC": "1.00", "EURC": "1.08"}
PROMOTIONS: list[dict[str, str]] = [
    {"id": "p1", "title": "Trade BTC with zero fees this week", "kind": "banner"},
    {"id": "p2", "title": "Invite a friend, both get 20 USDT", "kind": "incentive"},
]
_SYMBOL = re.compile(r"^[A-Z0-9]{1,12}$")
_PAIR = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")

# (html, zones it is approved for, incentive?): the same marks the rewriter reads.
_PROMOS: list[tuple[str, tuple[str, ...], bool]] = [
    ('<div id="promo-banner" class="promo" data-promo>0% fees on your first trade</div>\n',
     (), False),
    ('<div id="promo-referral" class="promo" data-promo data-promo-kind="incentive">\n'
     '  Refer a friend and you both get 20 USDT: <a href="/r/FRIEND10">/r/FRIEND10</a>\n</div>\n',
     (), True),
    ('<div id="promo-uk-approved" class="promo" data-promo data-promo-approved="uk">\n'
     "  New: GBP deposits with instant settlement\n</div>\n", ("uk",), False),
]

_FEED_SCRIPT = """<script>
(function () {
  var slot = document.getElementById("promo-feed");
  fetch("/api/promotions", {headers: {"Accept": "application/json"}})
    .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
    .then(function (items) {
      if (!Array.isArray(items)) { throw new Error("unexpected payload"); }
      items.forEach(function (p) {
        var d = document.createElement("div");
        d.className = "promo-feed-item";
        d.setAttribute("data-promo", "");
        d.id = "feed-" + p.id;
        d.textContent = p.title;
        if (slot) { slot.appendChild(d); }
      });
      document.body.dataset.promoFeed = "loaded";
    })
    .catch(function () { document.body.dataset.promoFeed = "failed"; });
})();
</script>"""

_SIGNUP_SCRIPT = """<script>
document.getElementById("signup-form").addEventListener("submit", function (ev) {
  ev.preventDefault();
  var out = document.getElementById("signup-result");
  fetch("/api/accounts", {method: "POST",
    headers: {"Content-Type": "application/json", "Accept": "application/json"},
    body: JSON.stringify({email: document.getElementById("email").value})})
    .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
    .then(function (sb) {
      out.textContent = sb[0] === 201 ? "Account " + sb[1].account_id + " created"
                                      : "Sign-up refused (" + sb[0] + ")";
      out.dataset.status = String(sb[0]);
    })
    .catch(function () { out.textContent = "Sign-up failed"; out.dataset.status = "error"; });
});
</script>"""


def _page(title: str, body: str) -> str:
    """Wrap ``body`` in the common page layout."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - Northwind Exchange</title></head>\n<body>\n"
        '<header><a href="/">Northwind Exchange</a> | <a href="/signup">Sign up</a> | '
        '<a href="/earn">Earn</a></header>\n'
        f"<main>\n{body}\n</main>\n</body></html>\n"
    )


def _home_html(shown: Callable[[tuple[str, ...], bool], bool]) -> str:
    """Render the home page with the promotions ``shown(approved_for, incentive)`` allows."""
    rows = "\n".join(
        f"<tr><td>{escape(sym)}</td><td>{escape(px)}</td></tr>" for sym, px in PRICES.items()
    )
    body = (
        "<h1>Northwind Exchange</h1>\n"
        + "".join(html for html, approved, incentive in _PROMOS if shown(approved, incentive))
        + '<section id="markets"><h2>Market prices (USD)</h2>\n<table id="prices">'
        f"<thead><tr><th>Asset</th><th>Price</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
        "</section>\n"
        '<p><a href="/signup">Open an account</a> | <a href="/earn">Staking</a></p>\n'
        '<div id="promo-feed" data-promo-slot></div>\n' + _FEED_SCRIPT
    )
    return _page("Home", body)


def _error(message: str) -> JSONResponse:
    """A 400 JSON error."""
    return JSONResponse({"error": message}, status_code=400)


async def _json_object(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is not one."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _amount(value: object) -> str | None:
    """A positive finite decimal amount given as a string, else None."""
    if not isinstance(value, str):
        return None
    try:
        dec = Decimal(value)
    except InvalidOperation:
        return None
    return value if dec.is_finite() and dec > 0 else None


def _symbol(value: object) -> str | None:
    """An uppercase asset symbol, else None."""
    return value if isinstance(value, str) and _SYMBOL.match(value) else None


def _created(request: Request, payload: dict[str, str], status: str) -> JSONResponse:
    """A 201 answer echoing the signed-in client named by ``X-Client-Id`` (None if absent)."""
    client_id = request.headers.get("x-client-id")
    return JSONResponse({**payload, "status": status, "client_id": client_id}, status_code=201)


def build_demo_app() -> Starlette:
    """Return a fresh demo exchange app with its own in-memory state."""
    accounts: dict[str, str] = {}
    ids = {k: itertools.count(1) for k in ("acc", "ord", "swp", "wdr", "stk")}

    def next_id(kind: str) -> str:
        return f"{kind}_{next(ids[kind])}"

    async def home(request: Request) -> Response:
        return HTMLResponse(_home_html(
            lambda approved, incentive: promotion_allowed(request, *approved, incentive=incentive)
        ))

    async def signup(request: Request) -> Response:
        form = (
            '<h1>Open an account</h1>\n<form id="signup-form" method="post">'
            '<label>Email <input id="email" name="email" type="email" required></label>'
            '<button type="submit">Sign up</button></form>\n<p id="signup-result"></p>\n'
        )
        return HTMLResponse(_page("Sign up", form + _SIGNUP_SCRIPT))

    async def create_account(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error("body must be a JSON object")
        email = body.get("email")
        if not isinstance(email, str) or "@" not in email:
            return _error("email is required")
        account_id = next_id("acc")
        accounts[account_id] = email
        return JSONResponse(
            {"account_id": account_id, "email": email},
            status_code=201,
            headers={"X-Account-Id": account_id},
        )

    async def promotions(request: Request) -> Response:
        return JSONResponse(PROMOTIONS)

    async def orders(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error("body must be a JSON object")
        pair, side, amount = body.get("pair"), body.get("side"), _amount(body.get("amount"))
        if not isinstance(pair, str) or not _PAIR.match(pair):
            return _error("pair must look like BASE-QUOTE, e.g. BTC-EUR")
        if side not in ("buy", "sell"):
            return _error("side must be 'buy' or 'sell'")
        if amount is None:
            return _error("amount must be a positive decimal string")
        order = {"order_id": next_id("ord"), "pair": pair, "side": side, "amount": amount}
        return _created(request, order, "accepted")

    async def swaps(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error("body must be a JSON object")
        src, dst = _symbol(body.get("from")), _symbol(body.get("to"))
        amount = _amount(body.get("amount"))
        if src is None or dst is None or src == dst:
            return _error("from and to must be two different asset symbols")
        if amount is None:
            return _error("amount must be a positive decimal string")
        swap = {"swap_id": next_id("swp"), "from": src, "to": dst, "amount": amount}
        return _created(request, swap, "accepted")

    async def withdrawals(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error("body must be a JSON object")
        asset, amount = _symbol(body.get("asset")), _amount(body.get("amount"))
        address = body.get("address")
        if asset is None or amount is None:
            return _error("asset and a positive decimal amount are required")
        if not isinstance(address, str) or not address.strip():
            return _error("address is required")
        wdr = {"withdrawal_id": next_id("wdr"), "asset": asset, "amount": amount}
        return _created(request, {**wdr, "address": address}, "pending")

    async def earn(request: Request) -> Response:
        body = (
            '<h1>Earn</h1>\n<section id="staking" data-service="staking">'
            "<h2>Earn 5% APY staking ETH</h2><p>Stake ETH and receive daily rewards.</p>"
            "</section>"
        )
        return HTMLResponse(_page("Earn", body))

    async def stake(request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return _error("body must be a JSON object")
        asset, amount = _symbol(body.get("asset")), _amount(body.get("amount"))
        if asset is None or amount is None:
            return _error("asset and a positive decimal amount are required")
        position = {"stake_id": next_id("stk"), "asset": asset, "amount": amount}
        return _created(request, position, "staked")

    async def referral(request: Request) -> Response:
        code = escape(str(request.path_params["code"]))
        body = (
            f'<h1>Welcome!</h1>\n<div id="referral-offer" data-promo data-promo-kind="incentive">'
            f"You were invited with code <strong>{code}</strong>, get 20 USDT when you sign up."
            '</div>\n<p><a href="/signup">Sign up</a></p>'
        )
        return HTMLResponse(_page("Invitation", body))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ws_prices(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(PRICES)
        await websocket.close()

    return Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/signup", signup, methods=["GET"]),
            Route("/api/accounts", create_account, methods=["POST"]),
            Route("/api/promotions", promotions, methods=["GET"]),
            Route("/api/orders", orders, methods=["POST"]),
            Route("/api/swaps", swaps, methods=["POST"]),
            Route("/api/withdrawals", withdrawals, methods=["POST"]),
            Route("/earn", earn, methods=["GET"]),
            Route("/earn/stake", stake, methods=["POST"]),
            Route("/r/{code}", referral, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            WebSocketRoute("/ws/prices", ws_prices),
        ]
    )

"""The tutorial exchange (docs/tutorial.md): a small FastAPI app behind micafence.

The policy ships with the app, reviewed and tested with it in CI (ci.yml); the MaxMind
database is the server's, kept up to date by geoipupdate (docs/maxmind.md). Served by
gunicorn with gunicorn.conf.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request
from pydantic import BaseModel

from micafence import MicafenceMiddleware

POLICY = os.environ.get("MICAFENCE_POLICY", str(Path(__file__).with_name("policy.yaml")))
GEOIP_DB = os.environ.get("MICAFENCE_GEOIP_DB", "/var/lib/GeoIP/GeoLite2-Country.mmdb")

app = FastAPI(title="Tutorial exchange")
# Decides every request before the app sees it; answers /healthz/live and /healthz/ready.
app.add_middleware(MicafenceMiddleware, policy=POLICY, geoip_db=GEOIP_DB,
                   health_path="/healthz")

PROMOTIONS = [{"id": "welcome", "text": "0% trading fees for your first month"}]


class NewAccount(BaseModel):
    email: str
    country: str | None = None  # the residence the sign-up declares (policy.yaml reads it)


class Order(BaseModel):
    pair: str
    side: str
    amount: str


@app.get("/")
async def home(request: Request) -> dict[str, object]:
    # micafence's decision for this request: leave promotions out where they are not allowed.
    decision = request.state.micafence
    return {"exchange": "tutorial",
            "promotions": PROMOTIONS if decision.promotions_allowed else []}


@app.get("/api/markets/{pair}")
async def market(pair: str) -> dict[str, str]:
    return {"pair": pair, "price": "64000.00"}


@app.post("/api/accounts", status_code=201)
async def open_account(account: NewAccount) -> dict[str, str]:
    return {"account_id": "acc_1", "email": account.email}


@app.get("/api/promotions")
async def promotions() -> list[dict[str, str]]:
    return PROMOTIONS


@app.post("/api/orders", status_code=201)
async def place_order(order: Order) -> dict[str, str]:
    return {"order_id": "ord_1", "pair": order.pair}

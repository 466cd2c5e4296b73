"""``micafence demo`` end to end: the real command, a real uvicorn, answered over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.demo_server import running_demo

pytestmark = pytest.mark.server

MICAFENCE = str(Path(sys.executable).with_name("micafence"))


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with running_demo() as url:
        yield url


def visitor(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip, "Accept": "application/json"}


def test_swedish_visitor_cannot_open_an_account(demo_url: str) -> None:
    response = httpx.post(demo_url + "/api/accounts", json={"email": "a@b.se"},
                          headers=visitor("89.160.20.112"))
    assert response.status_code == 451
    assert response.json()["reason"] == "eu.account_creation"
    assert response.headers["cache-control"] == "no-store"


def test_swiss_visitor_opens_an_account(demo_url: str) -> None:
    response = httpx.post(demo_url + "/api/accounts", json={"email": "a@b.ch"},
                          headers=visitor("2a02:d000::1"))
    assert response.status_code == 201
    assert response.headers["x-account-id"].startswith("acc_")


def test_plain_local_request_is_unknown_country(demo_url: str) -> None:
    signup = httpx.post(demo_url + "/api/accounts", json={"email": "a@b.c"},
                        headers={"Accept": "application/json"})
    home = httpx.get(demo_url + "/")
    assert signup.status_code == 451
    assert signup.json()["reason"] == "unknown_country.account_creation"
    assert home.status_code == 200
    assert "Northwind" in home.text


def test_eu_home_page_renders_without_promotions_via_template_hook(demo_url: str) -> None:
    eu = httpx.get(demo_url + "/", headers={"X-Forwarded-For": "89.160.20.112"})
    swiss = httpx.get(demo_url + "/", headers={"X-Forwarded-For": "2a02:d000::1"})
    assert eu.status_code == swiss.status_code == 200
    assert 'id="promo-banner"' in swiss.text
    assert 'id="promo-banner"' not in eu.text


def test_orders_need_a_grant_and_staking_is_blocked(demo_url: str) -> None:
    order = httpx.post(demo_url + "/api/orders", json={"pair": "BTC-EUR", "side": "buy",
                       "amount": "0.1"}, headers=visitor("2a02:d180::1"))
    earn = httpx.get(demo_url + "/earn", headers=visitor("89.160.20.112"))
    us_order = httpx.post(demo_url + "/api/orders", json={"pair": "BTC-EUR", "side": "buy",
                          "amount": "0.1"}, headers=visitor("2a02:d000::1"))
    assert order.status_code == 451 and order.json()["reason"] == "eu.no_grant"
    assert earn.status_code == 451
    assert us_order.status_code == 201


def test_promotion_feed_is_empty_for_eu_and_served_to_others(demo_url: str) -> None:
    eu = httpx.get(demo_url + "/api/promotions", headers=visitor("89.160.20.112"))
    swiss = httpx.get(demo_url + "/api/promotions", headers=visitor("2a02:d000::1"))
    assert (eu.status_code, eu.json()) == (200, [])  # the page's script still works
    assert eu.headers["micafence-reason"] == "eu.promotion"
    assert swiss.status_code == 200
    assert [p["id"] for p in swiss.json()] == ["p1", "p2"]


@pytest.mark.parametrize("port", ["99999", "65536", "-5", "eighty"])
def test_a_port_out_of_range_is_a_usage_error_not_another_port(port: str) -> None:
    # Under uvloop, --port 99999 used to listen on 34463 (99999 mod 65536) while the banner
    # said 99999; without uvloop it was an OverflowError traceback.
    result = subprocess.run(
        [MICAFENCE, "demo", "--port", port, "--no-audit"],
        capture_output=True, text=True, timeout=10,
    )
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "1 to 65535" in result.stderr or "eighty" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr

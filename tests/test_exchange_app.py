"""The sample exchange (examples/exchange_app.py) under the default policy: ``micafence routes
--strict`` passes, and under uvicorn a Swedish visitor gets 451 on every service, sign-up and
promotion route while the wind-down routes (for a signed-in client) and neutral routes pass."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from micafence import MicafenceMiddleware
from micafence.app_routes import Row, app_routes, load_app, route_rows
from micafence.cli import main
from micafence.policy.loader import load_policy
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SE, CH = "89.160.20.112", "2a02:d000::1"
CLIENT = {"X-Client-Id": "client-1001"}
# A value for each path parameter of the app, and the file its static mount serves.
VALUES = {"product_id": "BTC-USD", "code": "FRIEND10", "provider": "google", "project": "acme",
          "order_id": "o-1", "asset": "eth", "trader_id": "t-1", "position_id": "p-1",
          "path": "robots.txt"}


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    app = load_app("exchange_app:app", str(EXAMPLES))
    return route_rows(load_policy(DEFAULT_POLICY), app_routes(app))


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: VALUES[m.group(1)], template)


def test_routes_strict_passes_on_the_sample_exchange(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["routes", "exchange_app:app", "--app-dir", str(EXAMPLES), "--strict",
                 "--policy", str(DEFAULT_POLICY), "--format", "json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["ok"] is True and report["falls_through"] == 0
    listed = report["routes"]
    assert len({(r["path"]) for r in listed}) >= 40
    assert Counter(r["class"] for r in listed) == {
        "neutral": 17, "account_creation": 6, "promotion": 6, "service": 16, "wind_down": 6}
    # Every unsafe route is named by an entry; only safe reads fall to the unlisted default.
    assert {r["method"] for r in listed if r["route"] == "unlisted"} == {"GET"}


def test_a_swedish_visitor_gets_451_on_every_service_sign_up_and_promotion_route(
    rows: list[Row],
) -> None:
    app: Any = load_app("exchange_app:app", str(EXAMPLES))
    fence = MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB, watch=False)
    seen: Counter[str] = Counter()
    with ServerThread(fence) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        for row in rows:
            path = concrete(row.route.path)
            if row.method == "WEBSOCKET":  # the market-data stream is neutral: it opens
                url = server.url.replace("http", "ws") + path
                with connect(url, additional_headers={"X-Forwarded-For": SE},
                             open_timeout=5) as socket:
                    assert json.loads(socket.recv(timeout=5))["product_id"] == "BTC-USD"
                seen[row.route_class] += 1
                continue

            def send(ip: str, headers: dict[str, str] | None = None,
                     path: str = path, method: str = row.method) -> httpx.Response:
                return http.request(method, path, json={},
                                    headers={"X-Forwarded-For": ip, **(headers or {})})

            where = f"{row.method} {path} ({row.route_class}, {row.route_id})"
            assert send(CH).status_code == 200, where  # the app itself answers everyone
            answer = send(SE, CLIENT)  # even a signed-in client
            reason = answer.headers.get("micafence-reason")
            if row.route_class == "account_creation":
                assert (answer.status_code, reason) == (451, "eu.account_creation"), where
            elif row.route_class == "service":
                assert (answer.status_code, reason) == (451, "eu.no_grant"), where
            elif row.route_class == "promotion":
                if row.route_id == "promotions.feed":  # the page's script gets an empty list
                    assert (answer.status_code, answer.json()) == (200, []), where
                else:
                    assert answer.status_code == 451, where
                assert reason == "eu.promotion", where
            elif row.route_class == "wind_down":
                assert answer.status_code == 200, where
                assert answer.json()["route"] == row.route.name, where
                unidentified = send(SE)
                assert (unidentified.status_code, unidentified.headers["micafence-reason"]) \
                    == (451, "eu.wind_down.unidentified"), where
            else:
                assert row.route_class == "neutral"
                assert send(SE).status_code == 200, where  # no sign-in needed
            seen[row.route_class] += 1
    assert set(seen) == {"neutral", "account_creation", "promotion", "service", "wind_down"}


def test_an_eu_client_logs_in_then_withdraws() -> None:
    app: Any = load_app("exchange_app:app", str(EXAMPLES))
    fence = MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB, watch=False)
    with ServerThread(fence) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        visitor = {"X-Forwarded-For": SE}
        login = http.post("/api/auth/login", json={"email": "a@b.se"}, headers=visitor)
        assert login.status_code == 200 and login.json()["route"] == "login"
        refresh = http.post("/api/auth/token/refresh", headers={**visitor, **CLIENT})
        assert refresh.status_code == 200
        withdrawal = http.post("/api/withdrawals", json={"asset": "BTC"},
                               headers={**visitor, **CLIENT})
        assert withdrawal.status_code == 200 and withdrawal.json()["route"] == "withdraw"
        # An endpoint added in the next sprint and not yet in the policy fails closed.
        added = http.post("/api/v2/orders", json={}, headers={**visitor, **CLIENT})
        assert (added.status_code, added.headers["micafence-reason"]) == (451, "eu.no_grant")


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md"])
def test_the_documented_routes_output_is_what_the_command_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    text = (EXAMPLES.parent / page).read_text(encoding="utf-8")
    block = text.split("$ micafence routes exchange_app:app", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    monkeypatch.chdir(EXAMPLES.parent)  # the paths as the page writes them
    code = main(["routes", "exchange_app:app", *command.split()])
    out, _ = capsys.readouterr()
    assert code == 0
    printed = re.sub(r"sha256:[0-9a-f]{16}", "sha256:…", out).splitlines()
    assert [line for line in shown if line != "…"] == [
        line for line in printed if line in shown]

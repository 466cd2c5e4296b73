"""Outside attacks on issue 18 (route precedence, the unlisted default, the routes command): each
test is a request or a file that got through, or a bound that did not hold, before its fix."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from micafence import MicafenceMiddleware
from micafence.app_routes import load_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SE = "89.160.20.112"


def raw_request(port: int, method: str, target: str) -> tuple[int, dict[str, Any] | None]:
    """Send ``target`` byte for byte (HTTP clients resolve ``..`` before sending): the status
    and, when the app answered, its JSON (the route that served the request)."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: exchange\r\nX-Forwarded-For: {SE}\r\n"
            "X-Client-Id: client-1001\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode("utf-8"))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return int(status_line.split()[1]), answer if isinstance(answer, dict) else None


@pytest.fixture(scope="module")
def exchange() -> Any:
    app: Any = load_app("exchange_app:app", str(EXAMPLES))
    fence = MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB, watch=False)
    with ServerThread(fence) as server:
        yield server


@pytest.mark.parametrize(("target", "route"), [
    ("/earn/..", "earn-asset-page"),              # normalised: /  (unlisted GET: neutral)
    ("/earn/%2e%2e", "earn-asset-page"),
    ("/earn/%E2%80%A5", "earn-asset-page"),       # U+2025 folds to '..'
    ("/r/..", "referral-link"),
    ("/r/.", "referral-link"),                    # normalised: /r (no entry)
    ("/r/%20", "referral-link"),
    ("/r/;x", "referral-link"),                   # a matrix parameter only
    ("/r/x%5C..", "referral-link"),               # a backslash splits only for the policy
    ("/r/x%EF%BC%8F..", "referral-link"),         # so does a fullwidth solidus
    ("/launch/..", "launch-page"),
    ("/oauth/;x/signup/callback", "oauth-signup"),  # normalised: /oauth/signup/callback
])
def test_a_segment_the_policy_folds_away_is_still_the_apps_parameter(
    exchange: ServerThread, target: str, route: str,
) -> None:
    """Starlette serves ``/r/..`` from ``/r/{code}`` (code ``..``); the policy must class it as
    that route, not as the path its normalisation leaves."""
    status, answer = raw_request(exchange.port, "GET", target)
    assert status == 451, (target, answer)
    assert answer is None or answer.get("route") != route


def test_ordinary_spellings_still_reach_wind_down_and_neutral_routes(
    exchange: ServerThread,
) -> None:
    """The router's spelling only adds candidates: a client's usual requests are unchanged."""
    assert raw_request(exchange.port, "POST", "/api/withdrawals")[0] == 200
    assert raw_request(exchange.port, "POST", "/api/withdrawals/")[0] in (200, 307)
    assert raw_request(exchange.port, "POST", "/api/auth/login")[0] == 200
    assert raw_request(exchange.port, "DELETE", "/api/orders/o-1")[0] == 200
    assert raw_request(exchange.port, "GET", "/api/products/BTC-USD/book")[0] == 200


# -- micafence routes --strict ---------------------------------------------------------------


def _partial_path_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def amend(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["rest"])

    # A path parameter inside a segment still matches slashes: Starlette serves
    # PUT /api/orders/o1/legs/2 from this route.
    return Starlette(routes=[Route("/api/orders/o{rest:path}", amend, methods=["PUT"])])


PARTIAL_PATH_APP = _partial_path_app()


def test_strict_sees_a_path_parameter_inside_a_segment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``/api/orders/o{rest:path}`` serves every path below /api/orders/o…, which the default
    policy does not name for PUT: --strict must fail, not read it as one segment (covered by
    /api/orders/{order_id})."""
    from micafence.cli import main

    root = str(Path(__file__).resolve().parents[1])
    code = main(["routes", "tests.test_attack18:PARTIAL_PATH_APP", "--app-dir", root,
                 "--strict", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False, report
    (row,) = report["routes"]
    assert row["falls_through"] is True


# -- winding down under the default policy ----------------------------------------------------


def _wind_down_app() -> Any:
    """Coinbase Exchange's withdrawal endpoints (the sample app's model) and a two-step log-in."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"route": request.scope["route"].name})

    return Starlette(routes=[
        Route("/api/auth/login", echo, methods=["POST"], name="login"),
        Route("/api/auth/2fa/verify", echo, methods=["POST"], name="second-factor"),
        Route("/api/withdrawals/crypto", echo, methods=["POST"], name="withdraw-crypto"),
        Route("/api/withdrawals/payment-method", echo, methods=["POST"], name="withdraw-fiat"),
        Route("/api/withdrawals/{withdrawal_id}/confirm", echo, methods=["POST"],
              name="confirm-withdrawal"),
    ])


def test_an_eu_client_logs_in_with_a_second_factor_and_withdraws() -> None:
    import httpx

    fence = MicafenceMiddleware(_wind_down_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                                watch=False)
    client = {"X-Forwarded-For": SE, "X-Client-Id": "client-1001"}
    with ServerThread(fence) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        for path, route in [("/api/auth/login", "login"),
                            ("/api/auth/2fa/verify", "second-factor"),
                            ("/api/withdrawals/crypto", "withdraw-crypto"),
                            ("/api/withdrawals/payment-method", "withdraw-fiat"),
                            ("/api/withdrawals/w-1/confirm", "confirm-withdrawal")]:
            answer = http.post(path, json={"asset": "BTC"}, headers=client)
            assert answer.status_code == 200, (path, answer.headers.get("micafence-reason"))
            assert answer.json() == {"route": route}
        # Withdrawing stays for identified clients only.
        anonymous = http.post("/api/withdrawals/crypto", json={"asset": "BTC"},
                              headers={"X-Forwarded-For": SE})
        assert (anonymous.status_code, anonymous.headers["micafence-reason"]) == (
            451, "eu.wind_down.unidentified")

"""``micafence routes APP``: every route of a Starlette app (routes, mounts, sub-apps, hosts,
websockets, static files), with the class the policy gives it and the entry that decides it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from micafence.cli import main

REPO = Path(__file__).resolve().parents[1]
APP_DIR = ("--app-dir", str(REPO))

POLICY = """policy: 2
zones:
  eu: {countries: [SE]}
unlisted: {safe: neutral, unsafe: service}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: orders, class: service, methods: [POST, PATCH], path: /v2/orders}
  - {id: withdrawals, class: wind_down, methods: [POST], path: "/v2/{tenant}/withdrawals"}
  - {id: prices, class: neutral, path: /ws/prices}
  - {id: static, class: neutral, path: /static/**}
  - {id: admin, class: wind_down, methods: [DELETE], path: /admin/users/*}
  - {id: docs-promo, class: promotion, path: /docs/promo/**}
rules:
  - {id: no-accounts, zones: [eu], class: account_creation, outcome: block}
  - {id: no-promotions, zones: [eu], class: promotion, outcome: block}
  - {id: grants, zones: [eu], class: service, outcome: require_grant}
  - {id: wind-down, zones: [eu], class: wind_down, outcome: allow_identified}
"""
# What the unsafe routes the policy above leaves out need, to pass --strict.
NAMING_THE_REST = """  - {id: orders.api, class: service, methods: [POST], path: /api/orders}
  - {id: order-stream, class: service, path: /ws/orders}
  - {id: legacy, class: neutral, path: /legacy/**}
  - {id: ping, class: neutral, methods: [PUT], path: /ping}
rules:
"""

# (method, path, class, deciding entry, falls to the unlisted default)
EXPECTED = [
    ("GET", "/", "neutral", "unlisted", False),
    ("POST", "/api/accounts", "account_creation", "accounts", False),
    ("GET", "/api/orders", "neutral", "unlisted", False),  # an HTTPEndpoint's handlers
    ("POST", "/api/orders", "service", "unlisted", True),
    ("GET", "/files/{name}.txt", "neutral", "unlisted", False),
    ("WEBSOCKET", "/ws/prices", "neutral", "prices", False),
    ("WEBSOCKET", "/ws/orders", "service", "unlisted", True),
    ("POST", "/v2/orders", "service", "orders", False),
    ("PATCH", "/v2/orders", "service", "orders", False),
    ("POST", "/v2/{tenant}/withdrawals", "wind_down", "withdrawals", False),
    ("DELETE", "/admin/users/{user_id:int}", "wind_down", "admin", False),  # sub-app
    ("GET", "/static/{path:path}", "neutral", "static", False),  # StaticFiles: GET, HEAD
    ("*", "/legacy/{path:path}", "service", "unlisted", True),  # an ASGI app mounted whole
    ("PUT", "/ping", "service", "unlisted", True),  # under a Host
    ("GET", "/docs/{page:path}", "neutral", "unlisted", False),
]


def routes(capsys: pytest.CaptureFixture[str], tmp_path: Path, app: str, *args: str,
           policy: str = POLICY) -> tuple[int, str, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(policy, encoding="utf-8")
    code = main(["routes", app, *APP_DIR, "--policy", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[tuple[Any, ...]]:
    report = json.loads(out)
    return [(r["method"], r["path"], r["class"], r["route"], r["falls_through"])
            for r in report["routes"]]


@pytest.mark.parametrize("app", ["tests.route_apps:app", "tests.route_apps:wrapped"])
def test_every_route_mount_and_sub_app_with_its_class(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, app: str
) -> None:
    code, out, err = routes(capsys, tmp_path, app, "--format", "json")
    assert (code, err) == (0, "")
    assert rows(out) == EXPECTED
    report = json.loads(out)
    assert report["falls_through"] == 4 and report["ok"] is True  # not --strict
    assert report["policy"]["version"] == 2
    assert report["policy"]["unlisted"] == {"safe": "neutral", "unsafe": "service"}
    # A parameter the policy tells apart shows the other entries, with a path that reaches them.
    (docs,) = [r for r in report["routes"] if r["path"] == "/docs/{page:path}"]
    assert docs["also"] == [{"route": "docs-promo", "class": "promotion", "path": "/docs/promo"}]


def test_strict_fails_on_unsafe_routes_falling_to_the_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = routes(capsys, tmp_path, "tests.route_apps:app", "--strict")
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("tests.route_apps:app: 13 routes; policy policy sha256:")
    assert lines[0].endswith("format version 2, unlisted safe: neutral, unsafe: service")
    assert lines[1].split() == ["METHOD", "PATH", "CLASS", "ROUTE"]
    assert lines[5].split() == ["POST", "/api/orders", "service", "unlisted", "<-", "unsafe,",
                                "unlisted"]
    assert lines[-2].split()[:4] == ["GET", "/docs/{page:path}", "neutral", "unlisted;"]
    assert lines[-2].endswith("for some values: docs-promo (promotion: /docs/promo)")
    assert lines[-1] == ("4 unsafe route methods fall to the unlisted default (service): "
                         "name them in the policy's routes")
    code, out, _ = routes(capsys, tmp_path, "tests.route_apps:app", "--strict", "--format",
                          "json")
    assert code == 1 and json.loads(out)["ok"] is False
    # Named in the policy, every route passes.
    complete = POLICY.replace("rules:\n", NAMING_THE_REST, 1)
    code, out, _ = routes(capsys, tmp_path, "tests.route_apps:app", "--strict", policy=complete)
    assert code == 0
    assert out.splitlines()[-1] == "every unsafe route method is named by a policy entry"


def test_a_version_1_policy_is_read_as_version_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The most severe match: /v2/{tenant}/withdrawals under a service catch-all stays service.
    policy = POLICY.replace("policy: 2", "policy: 1").replace(
        "rules:\n", "  - {id: v2-all, class: service, path: /v2/**}\nrules:\n", 1)
    code, out, _ = routes(capsys, tmp_path, "tests.route_apps:app", "--format", "json")
    assert code == 0
    code, out, _ = routes(capsys, tmp_path, "tests.route_apps:app", "--format", "json",
                          policy=policy)
    withdrawals = [r for r in json.loads(out)["routes"] if r["path"].endswith("/withdrawals")]
    assert [(r["class"], r["route"]) for r in withdrawals] == [("service", "v2-all")]


@pytest.mark.parametrize(("app", "code", "message"), [
    pytest.param("no-colon", 2, "APP must be 'package.module:attribute', not 'no-colon'",
                 id="usage"),
    pytest.param("tests.no_such_module:app", 1,
                 "cannot import 'tests.no_such_module'", id="missing-module"),
    pytest.param("tests.route_apps:nothing", 1,
                 "'tests.route_apps' has no attribute 'nothing'", id="missing-attribute"),
    pytest.param("tests.route_apps:not_an_app", 1,
                 "builtins.object is not a Starlette or FastAPI app: no routes found",
                 id="not-an-app"),
])
def test_an_app_it_cannot_read_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, app: str, code: int, message: str
) -> None:
    got, out, err = routes(capsys, tmp_path, app)
    assert (got, out) == (code, "")
    assert err.startswith("micafence: ") and message in err

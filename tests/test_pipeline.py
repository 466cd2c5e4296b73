"""One pipeline: ``micafence explain`` decides every request of the ops cases file exactly as the
middleware does under uvicorn, and settles against the store it is given, without side effects."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from micafence import MicafenceMiddleware
from micafence.asgi import Receive, Scope, Send
from micafence.cli import main
from micafence.decision import STATE_KEY
from micafence.grants.onboarding import hash_token
from micafence.policy.casefile import Case, load_cases
from micafence.store.opener import open_store
from tests.conftest import COUNTRY_DB, ServerThread
from tests.live import decision_app

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "default.yaml"
CASES = REPO / "policies" / "cases" / "default.yaml"
DB = ("--geoip-db", str(COUNTRY_DB))
# What explain prints beyond the decision: where it decided from, and what it did.
_EXPLAIN_ONLY = {"database_type", "policy_source", "at", "breakglass_switches", "action", "status"}


class AsPeer:
    """Between uvicorn and micafence: the request comes from the peer its ``x-test-peer``
    header names (a test cannot connect from 89.160.20.112, nor without an address), and the
    decision micafence put in the scope is kept per ``x-test-case``."""

    def __init__(self, app: MicafenceMiddleware) -> None:
        self.app = app
        self.decisions: dict[str, dict[str, object]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        case, peer, kept = None, None, []
        for name, value in scope["headers"]:
            if name == b"x-test-case":
                case = value.decode("ascii")
            elif name == b"x-test-peer":
                peer = value.decode("ascii")
            else:
                kept.append((name, value))
        scope = {**scope, "headers": kept, "client": (peer, 50000) if peer else None}
        await self.app(scope, receive, send)
        assert case is not None
        self.decisions[case] = scope["state"][STATE_KEY].as_dict()


async def _request(port: int, index: int, case: Case) -> int:
    """Send the case's request as written (raw HTTP/1.1: no client normalises its path)."""
    request = case.scope
    target = request["raw_path"].decode("latin-1")
    if request["query_string"]:
        target += "?" + request["query_string"].decode("latin-1")
    lines = [f"{request['method']} {target} HTTP/1.1", "host: exchange.test",
             f"x-test-case: {index}", "content-length: 0", "connection: close"]
    if request["client"] is not None:
        lines.append(f"x-test-peer: {request['client'][0]}")
    lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}"
              for name, value in request["headers"]]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return int(answer.split(b" ", 2)[1])


def _explain(capsys: pytest.CaptureFixture[str], case: Case, *extra: str) -> dict[str, Any]:
    request = case.scope
    target = request["raw_path"].decode("latin-1")
    if request["query_string"]:
        target += "?" + request["query_string"].decode("latin-1")
    argv = ["explain", "--json", "--policy", str(POLICY), *DB, "--method", request["method"],
            "--path", target, *extra]
    if request["client"] is not None:
        argv += ["--ip", request["client"][0]]
    for name, value in request["headers"]:
        argv += ["--header", f"{name.decode('latin-1')}: {value.decode('latin-1')}"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_explain_and_the_middleware_decide_every_case_alike(
    capsys: pytest.CaptureFixture[str]
) -> None:
    cases = load_cases(str(CASES))
    assert len(cases) >= 20
    middleware = MicafenceMiddleware(decision_app(), policy=POLICY, geoip_db=COUNTRY_DB,
                                     watch=False)
    front = AsPeer(middleware)
    with ServerThread(front) as server:

        async def send_all() -> list[int]:
            return [await _request(server.port, i, case) for i, case in enumerate(cases)]

        statuses = asyncio.run(send_all())
    for index, case in enumerate(cases):
        explained = _explain(capsys, case)
        decided = {k: v for k, v in explained.items() if k not in _EXPLAIN_ONLY}
        assert decided == front.decisions[str(index)], case.name
        # What explain says micafence does is what the server did.
        if explained["action"] == "answer":
            assert statuses[index] == explained["status"], case.name
        else:
            assert explained["status"] is None
            assert statuses[index] in (200, 201), case.name  # the app's own answer


def test_explain_reports_the_action(capsys: pytest.CaptureFixture[str]) -> None:
    """A blocked sign-up is answered 451; a restricted visitor's promotion feed is answered
    here with its empty result; a Swiss visitor's page goes to the app."""
    sign_up = Case("sign-up", None, _scope("89.160.20.112", "POST", "/api/accounts"), {})
    feed = Case("feed", None, _scope("89.160.20.112", "GET", "/api/promotions"), {})
    page = Case("page", None, _scope("2a02:d000::1", "GET", "/about"), {})
    assert (_explain(capsys, sign_up)["action"], _explain(capsys, sign_up)["status"]) == (
        "answer", 451)
    assert (_explain(capsys, feed)["action"], _explain(capsys, feed)["status"]) == ("answer", 200)
    assert _explain(capsys, page)["action"] in ("pass", "pass_wrapped")
    assert _explain(capsys, page)["status"] is None
    code = main(["explain", "--policy", str(POLICY), *DB, "--ip", "89.160.20.112",
                 "--method", "POST", "--path", "/api/accounts"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "answer 451" in out


def _scope(ip: str, method: str, path: str) -> dict[str, Any]:
    from micafence.policy.probe import build_scope

    return build_scope(ip, method, path, [("X-Client-Id", "client-7")])


def test_explain_settles_against_the_store_it_is_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the file store holding client-7's staking grant, explain passes its staking
    request in scope (the grant stage ran); with no store, the same request has no grant."""
    store = f"file://{tmp_path}/grants.jsonl"
    monkeypatch.setenv("MICAFENCE_OFFICER", "a.lind")
    monkeypatch.setenv("MICAFENCE_GRANT_KEY_FILE", str(_key_file(tmp_path)))
    code = main(["grant", "add", "--client", "client-7", "--service", "staking", "--asset", "ETH",
                 "--initiated-at", _hours_ago(2), "--channel", "email",
                 "--evidence", "ticket CS-1", "--verified-by", "a.lind", "--policy", str(POLICY),
                 "--store", store, "--country", "FR"])
    _, err = capsys.readouterr()
    assert code == 0, err
    staking = Case("staking", None, _identified("127.0.0.1", "GET", "/earn/eth"), {})
    without = _explain(capsys, staking)
    assert (without["reason"], without["blocked"]) == ("eu.no_grant", True)
    within = _explain(capsys, staking, "--store", store)
    assert (within["reason"], within["blocked"], within["action"]) == (
        "eu.in_scope", False, "pass_wrapped")  # a restricted visitor: promotions stripped
    assert within["grant_id"]


def test_explain_never_takes_an_onboarding_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A single-use token presented to explain is still there afterwards."""
    store_url = f"file://{tmp_path}/grants.jsonl"
    monkeypatch.setenv("MICAFENCE_OFFICER", "a.lind")
    monkeypatch.setenv("MICAFENCE_GRANT_KEY_FILE", str(_key_file(tmp_path)))
    code = main(["grant", "add", "--client", "client-7", "--service", "staking", "--asset", "ETH",
                 "--initiated-at", _hours_ago(2), "--channel", "email",
                 "--evidence", "ticket CS-1", "--verified-by", "a.lind", "--policy", str(POLICY),
                 "--store", store_url, "--country", "FR", "--onboarding"])
    out, err = capsys.readouterr()
    assert code == 0, err
    token = next(word for word in out.split() if word.startswith("mot_"))
    sign_up = Case("sign-up", None, _scope_with("89.160.20.112", "POST", "/api/accounts",
                                                 [("X-Micafence-Onboarding", token)]), {})
    explained = _explain(capsys, sign_up, "--store", store_url)
    assert explained["reason"] == "eu.account_creation"

    async def still_there() -> bool:
        import datetime as dt

        store = open_store(store_url)
        try:
            now = dt.datetime.now(dt.UTC)
            return await store.take_onboarding_ticket(hash_token(token), now) is not None
        finally:
            await store.close()

    assert asyncio.run(still_there())


def _identified(ip: str, method: str, path: str) -> dict[str, Any]:
    return _scope_with(ip, method, path, [("X-Forwarded-For", "89.160.20.112"),
                                          ("X-Client-Id", "client-7")])


def _scope_with(ip: str, method: str, path: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    from micafence.policy.probe import build_scope

    return build_scope(ip, method, path, headers)


def _hours_ago(hours: float) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).isoformat(timespec="seconds")


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "grant.key"
    if not path.exists():
        code = main(["grant", "keygen", str(path)])
        assert code == 0
    return path

"""``micafence grant`` and ``micafence demo --grants``: the README walkthrough, end to end."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from micafence.cli import bundled_test_database, main
from micafence.errors import PolicyError
from micafence.records import SolicitationEvidence
from micafence.store.file_store import FileStore
from micafence_tools.demo.server import build_demo
from tests.conftest import DEFAULT_POLICY, ServerThread

REPO = Path(__file__).resolve().parents[1]
DEMO_GRANTS = REPO / "policies" / "grants" / "demo.yaml"
MICAFENCE = str(Path(sys.executable).with_name("micafence"))
GRANT_ID = re.compile(r"grt_[0-9a-f]{12}")
OFFICER = {"MICAFENCE_OFFICER": "ops"}  # the compliance officer's configured identity

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/grants.jsonl"


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, store_url: str
) -> Run:
    """``micafence grant ARGS --store URL`` in-process, run by ``officer`` (their configured
    identity, ``$MICAFENCE_OFFICER``): (exit code, stdout, stderr)."""

    def run(
        *args: str, store: str | None = store_url, officer: str | None = "a.lind"
    ) -> tuple[int, str, str]:
        if officer is None:
            monkeypatch.delenv("MICAFENCE_OFFICER", raising=False)
        else:
            monkeypatch.setenv("MICAFENCE_OFFICER", officer)
        argv = ["grant", *args] + (["--store", store] if store else [])
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def ago(hours: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).isoformat(timespec="seconds")


def add_args(**changes: str) -> list[str]:
    fields = {
        "client": "client-7", "service": "exchange_for_funds", "asset": "BTC",
        "initiated-at": ago(2), "channel": "email", "evidence": "ticket CS-1042",
        "verified-by": "a.lind", "country": "FR",
    }
    fields.update({key.replace("_", "-"): value for key, value in changes.items()})
    args = ["add"]
    for key, value in fields.items():
        if value is not None:
            args += [f"--{key}", value]
    return args


def test_add_list_show_revoke_history_export(cli: Run, tmp_path: Path) -> None:
    code, out, _ = cli(*add_args())
    grant_id = out.strip()
    assert code == 0 and GRANT_ID.fullmatch(grant_id)

    code, out, _ = cli("list")
    assert code == 0
    assert re.search(rf"{grant_id}\s+client-7\s+exchange_for_funds\s+BTC\s+active", out)

    code, out, _ = cli("show", grant_id, "--json")
    shown = json.loads(out)
    assert (shown["status"], shown["evidence"], shown["verified_by"]) == (
        "active", "ticket CS-1042", "a.lind")
    assert (shown["term"], shown["same_type_window"]) == ("P30D", "P1D")

    code, out, _ = cli("revoke", grant_id, "--by", "b.ops", "--reason", "client asked",
                       officer="b.ops")
    assert code == 0 and out.startswith(f"{grant_id} revoked at ")
    code, out, _ = cli("show", grant_id, "--json")
    revoked = json.loads(out)
    assert revoked["status"] == "revoked"
    assert (revoked["revocation"]["revoked_by"], revoked["revocation"]["reason"]) == (
        "b.ops", "client asked")
    code, out, _ = cli("list", "--status", "active")
    assert grant_id not in out

    code, out, _ = cli("history", grant_id, "--json")
    assert [record["event"] for record in json.loads(out)] == ["grant", "revocation"]
    code, out, _ = cli("history", "--client", "client-7")
    assert len(out.splitlines()) == 2 and " revoke " in out.splitlines()[1]

    export = tmp_path / "audit.jsonl"
    code, _, err = cli("export", "--output", str(export))
    assert code == 0 and "2 records" in err
    assert [json.loads(line)["event"] for line in export.read_text().splitlines()] == [
        "grant", "revocation"]
    code, out, _ = cli("export")
    assert out == export.read_text()


def test_add_json_prints_the_record(cli: Run) -> None:
    code, out, _ = cli(*add_args(asset="eth", country="FR"), "--term", "P7D", "--json")
    record = json.loads(out)
    assert code == 0 and GRANT_ID.fullmatch(record["id"])
    assert (record["asset"], record["country"], record["term"], record["status"]) == (
        "ETH", "FR", "P7D", "active")


@pytest.mark.parametrize(("changes", "extra", "code", "message"), [
    pytest.param({"asset": "DOGE"}, [], 1, "unknown asset 'DOGE'", id="unknown-asset"),
    pytest.param({"service": "lending"}, [], 1, "unknown service 'lending'",
                 id="unknown-service"),
    pytest.param({"evidence": " "}, [], 1, "evidence is required", id="blank-evidence"),
    pytest.param({"initiated_at": ago(-1)}, [], 1, "in the future", id="future-initiative"),
    pytest.param({"initiated_at": "2025-03-03 09:30"}, [], 2, "has no UTC offset",
                 id="no-offset"),
    pytest.param({"initiated_at": "yesterday"}, [], 2, "not an ISO 8601 date",
                 id="not-a-date"),
    pytest.param({}, ["--term", "P1M"], 2, "years and months are not allowed",
                 id="bad-term"),
    pytest.param({}, ["--term", "P60D"], 1, "never lengthen", id="term-beyond-policy"),
    pytest.param({"evidence": None}, [], 2, "the following arguments are required: --evidence",
                 id="evidence-missing"),
])
def test_add_refusals(
    cli: Run, changes: dict[str, str], extra: list[str], code: int, message: str
) -> None:
    got, out, err = cli(*add_args(**changes), *extra)
    assert (got, out) == (code, "")
    assert message in err
    assert cli("list", "--json")[1].strip() == "[]"  # nothing was recorded


def test_solicited_client_needs_override(cli: Run, store_url: str) -> None:
    store = FileStore(store_url.removeprefix("file://"))
    asyncio.run(store.record_solicitation(SolicitationEvidence(
        "client-7", dt.datetime.now(dt.UTC), "eu", "FR", "promotions.referral", None)))
    code, _, err = cli(*add_args())
    assert code == 1 and "was solicited within the look-back window" in err
    assert "--override-reason" in err
    code, out, _ = cli(*add_args(), "--override-reason", "client called first: CALL-9")
    assert code == 0
    code, shown, _ = cli("show", out.strip())
    assert "override    client called first: CALL-9 (1 solicitation records)" in shown
    assert "status      pending" in shown


def test_store_is_required_and_memory_warns(
    cli: Run, monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    monkeypatch.delenv("MICAFENCE_STORE", raising=False)
    code, _, err = cli("list", store=None)
    assert code == 1 and "no grant store: give --store URL or set $MICAFENCE_STORE" in err
    code, _, err = cli("list", store="memory://")
    assert code == 0 and "memory:// keeps nothing" in err
    monkeypatch.setenv("MICAFENCE_STORE", store_url)
    assert cli(*add_args(), store=None)[0] == 0
    assert "client-7" in cli("list", store=None)[1]


def test_revoke_and_show_unknown_grant(cli: Run) -> None:
    code, _, err = cli("revoke", "grt_000000000000", "--by", "x", "--reason", "y", officer="x")
    assert code == 1 and "no grant 'grt_000000000000'" in err
    code, _, err = cli("show", "grt_000000000000")
    assert code == 1 and "no grant 'grt_000000000000'" in err


def test_add_uses_the_given_policy_catalogue(
    cli: Run, tmp_path: Path, policy_variant: Callable[[str, str], str]
) -> None:
    policy = tmp_path / "exchange.yaml"
    policy.write_text(policy_variant(
        "  BTC:   {category: other, network: bitcoin, peg: none, liquidity: liquid}\n", ""))
    code, _, err = cli(*add_args(), "--policy", str(policy))
    assert code == 1 and "unknown asset 'BTC'" in err


def test_demo_grants_file_errors_name_the_line(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(DEMO_GRANTS.read_text().replace("asset: USDC", "asset: DOGE"))
    with pytest.raises(PolicyError) as caught:
        build_demo(DEFAULT_POLICY, bundled_test_database(), grants=seeds)
    assert caught.value.key_path == "grants[1].asset"
    assert caught.value.line == DEMO_GRANTS.read_text().splitlines().index(
        "    asset: USDC") + 1


# -- the README walkthrough: a running demo and the CLI share one file store ---------------------


def visitor(client: str | None = None, ip: str = "89.160.20.112") -> dict[str, str]:
    headers = {"X-Forwarded-For": ip, "Accept": "application/json"}
    if client:
        headers["X-Client-Id"] = client
    return headers


def order(url: str, client: str | None, pair: str, ip: str = "89.160.20.112") -> tuple[int, str]:
    response = httpx.post(url + "/api/orders", json={"pair": pair, "side": "buy", "amount": "1"},
                          headers=visitor(client, ip))
    return response.status_code, response.json().get("reason", "")


def eventually(check: Callable[[], tuple[int, str]], expected: tuple[int, str]) -> None:
    deadline = time.monotonic() + 3  # the file is re-checked every 0.5 s
    while (got := check()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == expected


@pytest.mark.server
def test_readme_walkthrough(store_url: str) -> None:
    app = build_demo(DEFAULT_POLICY, bundled_test_database(), store=store_url, grants=DEMO_GRANTS)
    with ServerThread(app) as server:
        url = server.url
        # Seeded: alice may buy BTC for euros, nothing else; bob's USDC scope is three days old.
        assert order(url, "alice", "BTC-EUR") == (201, "")
        assert order(url, "alice", "ETH-EUR") == (451, "eu.out_of_scope.asset_type")
        assert order(url, "alice", "BTC-ETH") == (451, "eu.out_of_scope.service")
        earn = httpx.get(url + "/earn", headers=visitor("alice"))
        assert (earn.status_code, earn.json()["reason"]) == (451, "eu.out_of_scope.service")
        assert order(url, "bob", "USDC-EUR") == (201, "")
        assert order(url, "bob", "PYUSD-EUR") == (451, "eu.grant_expired")
        assert order(url, "carol", "BTC-EUR") == (451, "eu.no_grant")
        assert order(url, None, "BTC-EUR", ip="2a02:d000::1") == (201, "")  # Swiss: no fence

        # A compliance officer records carol's grant from another process.
        added = subprocess.run(
            [MICAFENCE, "grant", "add", "--store", store_url, "--client", "carol",
             "--service", "exchange_for_funds", "--asset", "ETH", "--initiated-at", ago(1),
             "--channel", "web form", "--evidence", "ticket CS-3003", "--verified-by", "ops",
             "--country", "FR"],
            capture_output=True, text=True, check=True, env={**os.environ, **OFFICER},
        )
        grant_id = added.stdout.strip()
        assert GRANT_ID.fullmatch(grant_id)
        eventually(lambda: order(url, "carol", "ETH-EUR"), (201, ""))

        subprocess.run(
            [MICAFENCE, "grant", "revoke", grant_id, "--store", store_url, "--by", "ops",
             "--reason", "evidence did not hold up"], check=True, capture_output=True,
            env={**os.environ, **OFFICER},
        )
        eventually(lambda: order(url, "carol", "ETH-EUR"), (451, "eu.no_grant"))

    # Restarting the demo on the same store does not record the seeds twice.
    again = build_demo(DEFAULT_POLICY, bundled_test_database(), store=store_url,
                       grants=DEMO_GRANTS)
    with ServerThread(again) as restarted:
        assert order(restarted.url, "alice", "BTC-EUR") == (201, "")  # the seeds still hold
    listed = subprocess.run([MICAFENCE, "grant", "list", "--store", store_url, "--json"],
                            capture_output=True, text=True, check=True)
    assert sorted(g["client_id"] for g in json.loads(listed.stdout)) == ["alice", "bob", "carol"]

"""Break-glass: the recorded incident switch, thrown from the CLI while requests run."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest

from micafence import MicafenceMiddleware, load_policy_text
from micafence.cli import main
from micafence.errors import BreakGlassError
from micafence.live.breakglass import JOURNAL_FILE, STATE_FILE, read_state, state_at, throw
from tests.conftest import COUNTRY_DB, ServerThread
from tests.live import CH, SE, Load, client_for, decision_app

pytestmark = pytest.mark.server

# EU services pass here (as for a client inside a grant), so the switch visibly changes them.
POLICY = """\
policy: 1
name: breakglass-test
client_ip: {trusted_proxies: [127.0.0.0/8]}
zones:
  eu: {countries: [SE, DE]}
  uk: {countries: [GB]}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: orders, class: service, methods: [POST], path: /api/orders}
  - {id: promo, class: promotion, path: /promo/**}
rules:
  - {id: no-new-accounts, zones: [eu, unknown_country], class: account_creation, outcome: block}
  - {id: eu-services, zones: [eu], class: service, outcome: allow}
  - {id: no-promotions, zones: [eu, uk], class: promotion, outcome: block}
"""


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICAFENCE_BREAKGLASS_DIR", raising=False)
    monkeypatch.delenv("MICAFENCE_GEOIP_DB", raising=False)


def guarded_app(folder: Path, **options: object) -> MicafenceMiddleware:
    return MicafenceMiddleware(decision_app(), policy=load_policy_text(POLICY, "bg.yaml"),
                               geoip_db=COUNTRY_DB, breakglass_dir=folder, **options)  # type: ignore[arg-type]


def cli(*argv: str) -> int:
    return main(["breakglass", *argv])


async def test_toggled_while_requests_run(tmp_path: Path) -> None:
    folder = tmp_path / "breakglass"
    eu = {"X-Forwarded-For": SE}
    requests = [
        ("orders", "POST", "/api/orders", eu),
        ("accounts", "POST", "/api/accounts", eu),
        ("swiss", "GET", "/markets", {"X-Forwarded-For": CH}),
    ]
    with ServerThread(guarded_app(folder)) as server:  # default interval: picked up < 1 s
        async with Load(server.url, requests) as load:
            thrown = time.time()
            assert cli("on", "--dir", str(folder), "--by", "alice", "--why", "INC-42") == 0
            blocked = await load.wait_for(
                lambda s: s.name == "orders" and s.status == 451, after=thrown)
            assert blocked.ended - thrown < 1.0
            assert cli("on", "--dir", str(folder), "--by", "bob", "--why", "INC-42 false positive",
                       "--shadow", "no-new-accounts") == 0
            shadowed = await load.wait_for(
                lambda s: s.name == "accounts" and s.status == 201, after=time.time())
            assert cli("off", "--dir", str(folder), "--by", "alice", "--why", "resolved") == 0
            assert cli("off", "--dir", str(folder), "--by", "bob", "--why", "resolved",
                       "--shadow", "no-new-accounts") == 0
            cleared = time.time()
            await load.wait_for(lambda s: s.name == "orders" and s.status == 200, after=cleared)
            await load.wait_for(lambda s: s.name == "accounts" and s.status == 451, after=cleared)
    samples = load.samples
    assert all(s.status in (200, 201, 451) for s in samples), [s for s in samples if not s.status]
    assert blocked.body["reason"] == "breakglass.service"
    assert blocked.body["rule"] == "breakglass"
    assert shadowed.body["mode"] == "shadow"
    assert shadowed.body["reason"] == "eu.account_creation"  # decided, reported, not enforced
    assert shadowed.body["breakglass"] == "block_services,shadow:no-new-accounts"
    for sample in samples:  # every answer agrees with the switches its decision names
        if sample.name == "orders":
            assert (sample.status == 451) == (sample.body.get("reason") == "breakglass.service")
        if sample.status == 200 and sample.name == "swiss":
            assert sample.body["breakglass"] in (None, "block_services",
                                                 "block_services,shadow:no-new-accounts",
                                                 "shadow:no-new-accounts")
            assert sample.body["reason"] == "pass"  # Switzerland is no restricted zone
        if sample.name == "accounts" and sample.status == 201:
            assert "shadow:no-new-accounts" in sample.body["breakglass"]


async def test_every_decision_names_the_switches(tmp_path: Path) -> None:
    throw(tmp_path, on=True, by="carol", why="drill", rule="no-promotions")
    async with client_for(guarded_app(tmp_path, watch=False)) as client:
        promo = await client.get("/promo/x", headers={"X-Forwarded-For": SE})
        swiss = await client.get("/markets", headers={"X-Forwarded-For": CH})
    assert promo.status_code == 200  # the rule is in shadow
    assert (promo.json()["mode"], promo.json()["reason"]) == ("shadow", "eu.promotion")
    assert promo.json()["breakglass"] == swiss.json()["breakglass"] == "shadow:no-promotions"


async def test_a_corrupt_state_file_is_refused_and_the_last_state_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    throw(tmp_path, on=True, by="alice", why="INC-1")
    guarded = guarded_app(tmp_path, watch=False)
    (tmp_path / STATE_FILE).write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="micafence"):
        assert guarded.reloader.check() is False
    async with client_for(guarded) as client:
        response = await client.post("/api/orders", headers={"X-Forwarded-For": SE})
    assert response.status_code == 451
    refused = [r for r in caplog.records if getattr(r, "event", "") == "reload.refused"]
    assert [(r.kind, r.path) for r in refused] == [  # type: ignore[attr-defined]
        ("breakglass", str(tmp_path / STATE_FILE))]
    # At start-up it stops the server instead (kept for the lifespan: tests/test_startup.py).
    error = guarded_app(tmp_path, watch=False).startup_error
    assert isinstance(error, BreakGlassError)
    assert "not a break-glass state file" in str(error)


def test_cli_records_who_why_and_when(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path)
    assert cli("status", "--dir", folder) == 0
    assert capsys.readouterr().out == "break-glass: off\n"
    assert cli("on", "--dir", folder, "--by", "alice", "--why", "INC-7 grant store leak") == 0
    assert "break-glass block_services ON" in capsys.readouterr().out
    assert cli("status", "--dir", folder, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["active"] is True
    [switch] = status["switches"]
    assert (switch["action"], switch["by"], switch["why"]) == (
        "block_services", "alice", "INC-7 grant store leak")
    assert cli("off", "--dir", folder, "--by", "dave", "--why", "fixed") == 0
    journal = [json.loads(line) for line in (tmp_path / JOURNAL_FILE).read_text().splitlines()]
    assert [(e["event"], e["by"], e["why"]) for e in journal] == [
        ("on", "alice", "INC-7 grant store leak"), ("off", "dave", "fixed")]
    assert read_state(tmp_path).active is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["off", "--by", "a", "--why", "b"], "block_services is not on"),
        (["off", "--by", "a", "--why", "b", "--shadow", "r1"], "shadow:r1 is not on"),
        (["on", "--by", " ", "--why", "b"], "say who you are (--by) and why (--why)"),
        (["on", "--by", "a", "--why", ""], "say who you are (--by) and why (--why)"),
    ],
)
def test_cli_refuses_what_would_make_the_journal_lie(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli(*argv, "--dir", str(tmp_path)) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / JOURNAL_FILE).exists()


def test_cli_refuses_a_switch_that_is_already_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["on", "--dir", str(tmp_path), "--by", "erin", "--why", "INC-5", "--shadow", "r1"]
    assert cli(*argv) == 0
    assert cli(*argv) == 1
    assert "shadow:r1 is already on (by erin at " in capsys.readouterr().err
    assert len((tmp_path / JOURNAL_FILE).read_text().splitlines()) == 1


def test_cli_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status") == 1
    assert "give --dir (or set $MICAFENCE_BREAKGLASS_DIR)" in capsys.readouterr().err


def test_state_at_replays_the_journal(tmp_path: Path) -> None:
    t = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    throw(tmp_path, on=True, by="a", why="x", at=t)
    throw(tmp_path, on=True, by="b", why="y", rule="r1", at=t + dt.timedelta(hours=1))
    throw(tmp_path, on=False, by="a", why="z", at=t + dt.timedelta(hours=2))
    assert state_at(tmp_path, t - dt.timedelta(seconds=1)).tag is None
    assert state_at(tmp_path, t).tag == "block_services"
    assert state_at(tmp_path, t + dt.timedelta(minutes=90)).tag == "block_services,shadow:r1"
    assert state_at(tmp_path, t + dt.timedelta(hours=3)).tag == "shadow:r1"
    assert read_state(tmp_path).tag == "shadow:r1"


def test_explain_shows_the_switches_then_and_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    folder = tmp_path / "bg"
    t = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    throw(folder, on=True, by="alice", why="INC-9", at=t)
    common = ["explain", "--policy", str(policy), "--geoip-db", str(COUNTRY_DB), "--ip", SE,
              "--method", "POST", "--path", "/api/orders", "--breakglass-dir", str(folder)]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "answer 451" in out
    assert "breakglass block_services (by alice at 2026-11-01T12:00:00Z: INC-9)" in out
    assert main([*common, "--at", "2026-11-01T11:59:59Z", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (before["blocked"], before["breakglass"]) == (False, None)

"""Trustworthy grants: signed records, a tampered record ignored, maker-checker, who signs.

Write access to the grant store must not be enough to open a scope: records are signed with
the grant key, and one that does not verify is ignored (and logged), never served. The Redis
flavour of the same is in ``tests/test_store_redis.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, load_policy_text
from micafence.cli import main
from micafence.errors import GrantError, StoreError
from micafence.grants.book import GrantBook
from micafence.grants.signing import GrantKey, GrantKeyError, write_key_file
from micafence.policy.model import Policy
from micafence.records import Grant, GrantStatus
from micafence.store.base import Store
from micafence.store.file_store import FileStore
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

KEY = GrantKey.from_text("k" * 40)
OTHER_KEY = GrantKey.from_text("o" * 40)
SE = "89.160.20.112"
HOUR = dt.timedelta(hours=1)


def policy(maker_checker: bool = False) -> Policy:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    if maker_checker:
        text = text.replace("maker_checker: false", "maker_checker: true")
    return load_policy_text(text, "test-policy.yaml")


async def add(store: Store, client: str = "alice", asset: str = "BTC", by: str = "a.lind",
              maker_checker: bool = False) -> Grant:
    book = GrantBook(store, policy(maker_checker))
    return await book.add(
        client_id=client, service="exchange_for_funds", asset=asset,
        initiated_at=dt.datetime.now(dt.UTC) - HOUR, channel="email", evidence="ticket CS-1",
        verified_by=by, country="FR",
    )


async def order(app: MicafenceMiddleware, client: str, pair: str = "BTC-EUR") -> tuple[int, str]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        response = await http.post("/api/orders", json={"pair": pair, "side": "buy", "amount": "1"},
                                   headers={"X-Forwarded-For": SE, "X-Client-Id": client,
                                            "Accept": "application/json"})
    return response.status_code, response.json().get("reason", "")


def app_on(store: Store | str, **kwargs: Any) -> MicafenceMiddleware:
    return MicafenceMiddleware(build_demo_app(), policy=kwargs.pop("policy", DEFAULT_POLICY),
                               geoip_db=COUNTRY_DB, store=store, **kwargs)


# -- the key -------------------------------------------------------------------------------------


def test_key_sources_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICAFENCE_GRANT_KEY", raising=False)
    monkeypatch.delenv("MICAFENCE_GRANT_KEY_FILE", raising=False)
    assert GrantKey.from_env() is None
    with pytest.raises(GrantKeyError, match="at least 32 bytes"):
        GrantKey.from_text("short")
    made = write_key_file(tmp_path / "grant.key")
    assert stat.S_IMODE(os.stat(tmp_path / "grant.key").st_mode) == 0o600
    with pytest.raises(GrantKeyError, match="never overwritten"):
        write_key_file(tmp_path / "grant.key")
    monkeypatch.setenv("MICAFENCE_GRANT_KEY_FILE", str(tmp_path / "grant.key"))
    assert GrantKey.from_env() == made
    monkeypatch.setenv("MICAFENCE_GRANT_KEY", "e" * 40)  # the key itself wins over the file
    assert GrantKey.from_env() == GrantKey.from_text("e" * 40)
    with pytest.raises(GrantKeyError, match="cannot read grant key file"):
        GrantKey.from_file(tmp_path / "missing.key")
    assert KEY.key_id != OTHER_KEY.key_id and len(KEY.key_id) == 16


SIGNED = KEY.sign({"event": "grant", "id": "grt_1", "client_id": "alice", "asset": "BTC"})


@pytest.mark.parametrize(("record", "problem"), [
    pytest.param(SIGNED, None, id="as-signed"),
    pytest.param({**SIGNED, "asset": "ETH"}, "altered", id="field-changed"),
    pytest.param({**SIGNED, "client_id": "mallory"}, "altered", id="client-changed"),
    pytest.param({**SIGNED, "term": "P365D"}, "altered", id="field-added"),
    pytest.param({k: v for k, v in SIGNED.items() if k != "mac"}, "unsigned", id="mac-removed"),
    pytest.param(OTHER_KEY.sign({**SIGNED}), "another key", id="other-key"),
    pytest.param({**SIGNED, "key_id": OTHER_KEY.key_id}, "another key", id="key-id-swapped"),
])
def test_a_record_verifies_only_as_signed(record: dict[str, Any], problem: str | None) -> None:
    found = KEY.problem(record)
    assert found is None if problem is None else problem in (found or "")


# -- a tampered record is ignored ----------------------------------------------------------------


async def test_tampered_file_record_is_ignored_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "grants.jsonl"
    writer = FileStore(path, key=KEY)
    alice = await add(writer, "alice")
    await add(writer, "bob")
    app = app_on(FileStore(path, key=KEY, recheck=0))
    assert await order(app, "alice") == (201, "")

    # Someone with write access to the file turns alice's BTC grant into ETH, and forges one.
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])
    lines[0] = json.dumps({**record, "asset": "ETH"})
    lines.append(json.dumps({**record, "id": "grt_forged", "client_id": "mallory"}))
    edited = tmp_path / "edited.jsonl"  # saved the way editors do: a new file renamed over
    edited.write_text("\n".join(lines) + "\n", encoding="utf-8")
    edited.replace(path)
    caplog.set_level(logging.ERROR, logger="micafence")
    assert await order(app, "alice", "ETH-EUR") == (451, "eu.no_grant")
    assert await order(app, "alice", "BTC-EUR") == (451, "eu.no_grant")
    assert await order(app, "mallory") == (451, "eu.no_grant")
    assert await order(app, "bob") == (201, "")  # untouched records still count
    rejected = [r for r in caplog.records if getattr(r, "event", None) == "grant.record_rejected"]
    assert [(r.fields["grant_id"], r.fields["problem"]) for r in rejected] == [  # type: ignore[attr-defined]
        (alice.id, "signature does not match: the record was altered"),
        ("grt_forged", "signature does not match: the record was altered"),
    ]
    assert all(f"{path}:" in r.getMessage() for r in rejected)


async def test_unsigned_and_other_key_records_open_nothing(tmp_path: Path) -> None:
    path = tmp_path / "grants.jsonl"
    await add(FileStore(path), "alice")  # written without a key
    await add(FileStore(path, key=OTHER_KEY), "bob")
    app = app_on(FileStore(path, key=KEY, recheck=0))
    assert await order(app, "alice") == (451, "eu.no_grant")
    assert await order(app, "bob") == (451, "eu.no_grant")
    # Without a key a file store reads what is there (the warning is logged at start-up).
    assert await order(app_on(FileStore(path, recheck=0)), "alice") == (201, "")


async def test_malformed_line_still_fails_closed_with_a_key(tmp_path: Path) -> None:
    path = tmp_path / "grants.jsonl"
    await add(FileStore(path, key=KEY), "alice")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("not json\n")
    with pytest.raises(StoreError, match=rf"{path}:2: not a micafence record"):
        await FileStore(path, key=KEY).grant_events()


# -- maker-checker ---------------------------------------------------------------------------


async def test_maker_checker_needs_a_second_different_officer() -> None:
    store = MemoryStore()
    app = app_on(store, policy=policy(maker_checker=True))
    grant = await add(store, "alice", by="a.lind", maker_checker=True)
    book = GrantBook(store, None)
    assert (await book.get(grant.id)).status(dt.datetime.now(dt.UTC)) is GrantStatus.PENDING
    assert await order(app, "alice") == (451, "eu.no_grant")  # pending: not a grant yet
    with pytest.raises(GrantError, match="a second, different officer must approve"):
        await book.approve(grant.id, approved_by="A.Lind")
    approval = await book.approve(grant.id, approved_by="b.ops")
    assert (approval.approved_by, await order(app, "alice")) == ("b.ops", (201, ""))
    with pytest.raises(GrantError, match=r"already approved by b\.ops"):
        await book.approve(grant.id, approved_by="c.risk")
    # Without maker-checker a grant is in force at once and has nothing to approve.
    plain = await add(store, "bob")
    with pytest.raises(GrantError, match="needs no approval"):
        await book.approve(plain.id, approved_by="b.ops")
    await book.revoke(grant.id, revoked_by="b.ops", reason="test")
    with pytest.raises(GrantError, match="revoked"):
        await book.approve(grant.id, approved_by="c.risk")


# -- the CLI's officer identity and key ------------------------------------------------------


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def grant_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    monkeypatch.setenv("HOME", str(tmp_path))  # no officer file of the machine's user
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("MICAFENCE_GRANT_KEY", "MICAFENCE_GRANT_KEY_FILE", "MICAFENCE_OFFICER"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, officer: str | None = None) -> tuple[int, str, str]:
        if officer is not None:
            monkeypatch.setenv("MICAFENCE_OFFICER", officer)
        else:
            monkeypatch.delenv("MICAFENCE_OFFICER", raising=False)
        try:
            code = main(["grant", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def add_args(store: str, *extra: str) -> list[str]:
    initiated = (dt.datetime.now(dt.UTC) - HOUR).isoformat(timespec="seconds")
    return ["add", "--store", store, "--client", "alice", "--service", "exchange_for_funds",
            "--asset", "BTC", "--initiated-at", initiated, "--channel", "email",
            "--evidence", "ticket CS-1", "--country", "FR", *extra]


def test_cli_records_the_configured_officer_and_checks_claims(
    grant_cli: Run, tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/grants.jsonl"
    code, _, err = grant_cli(*add_args(store))
    assert code == 1 and "no officer identity: set $MICAFENCE_OFFICER" in err
    code, _, err = grant_cli(*add_args(store, "--verified-by", "b.ops"), officer="a.lind")
    assert code == 1 and "--verified-by b.ops does not match your configured identity 'a.lind'" \
        in err
    # The officer file works as well as the variable.
    (tmp_path / ".config" / "micafence").mkdir(parents=True)
    (tmp_path / ".config" / "micafence" / "officer").write_text("a.lind\n", encoding="utf-8")
    code, out, _ = grant_cli(*add_args(store, "--verified-by", "a.lind"))
    grant_id = out.strip()
    assert code == 0
    shown = json.loads(grant_cli("show", grant_id, "--store", store, "--json")[1])
    assert shown["verified_by"] == "a.lind"
    code, _, err = grant_cli("revoke", grant_id, "--store", store, "--reason", "x", "--by", "z",
                             officer="b.ops")
    assert code == 1 and "--by z does not match" in err
    code, out, _ = grant_cli("revoke", grant_id, "--store", store, "--reason", "x",
                             officer="b.ops")
    assert code == 0
    assert json.loads(grant_cli("show", grant_id, "--store", store, "--json")[1])[
        "revocation"]["revoked_by"] == "b.ops"


def test_cli_keygen_signs_and_maker_checker_approve(grant_cli: Run, tmp_path: Path) -> None:
    key_file = tmp_path / "grant.key"
    code, out, _ = grant_cli("keygen", str(key_file))
    assert code == 0 and f"written to {key_file}" in out
    path = tmp_path / "grants.jsonl"
    policy_file = tmp_path / "exchange.yaml"
    policy_file.write_text(DEFAULT_POLICY.read_text().replace(
        "maker_checker: false", "maker_checker: true"), encoding="utf-8")
    store = ["--store", f"file://{path}", "--grant-key-file", str(key_file)]
    code, out, _ = grant_cli(*add_args(f"file://{path}", "--grant-key-file", str(key_file),
                                       "--policy", str(policy_file)), officer="a.lind")
    grant_id = out.strip()
    assert code == 0
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    key = GrantKey.from_file(key_file)
    assert (record["key_id"], key.problem(record), record["approval_required"]) == (
        key.key_id, None, True)
    assert "pending" in grant_cli("list", *store, officer="a.lind")[1]
    code, _, err = grant_cli("approve", grant_id, *store, officer="a.lind")
    assert code == 1 and "a second, different officer must approve it" in err
    code, out, _ = grant_cli("approve", grant_id, *store, officer="b.ops")
    assert code == 0 and out.startswith(f"{grant_id} approved by b.ops at ")
    code, out, _ = grant_cli("show", grant_id, *store)
    assert "approved    " in out and " by b.ops" in out
    history = grant_cli("history", grant_id, *store)[1].splitlines()
    assert [line.split()[1] for line in history] == ["grant", "approve"]
    # Read with another key, the same file holds no grant at all.
    other = tmp_path / "other.key"
    grant_cli("keygen", str(other))
    assert grant_cli("list", "--store", f"file://{path}", "--grant-key-file", str(other),
                     "--json")[1].strip() == "[]"

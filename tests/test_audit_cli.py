"""``micafence audit keygen|verify|export|prune`` as a compliance officer runs them."""

from __future__ import annotations

import csv
import datetime as dt
import json
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from micafence.audit.cli import verify_manifest
from micafence.audit.keys import AuditKey
from micafence.audit.log import AuditLog
from micafence.audit.reader import load_log
from micafence.audit.sinks import FileSink
from micafence.cli import main
from micafence.records import Grant
from tests.audit_support import DE6, KEY, KEY_TEXT, SE, client, guarded, policy_with
from tests.conftest import DEFAULT_POLICY

JAN = dt.datetime(2025, 1, 15, 10, 0, tzinfo=dt.UTC)
MAR = dt.datetime(2025, 3, 10, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY_FILE", raising=False)


def a_grant(grant_id: str, client_id: str, at: dt.datetime) -> Grant:
    return Grant(
        id=grant_id, client_id=client_id, service="exchange_for_funds", asset="BTC",
        initiated_at=at - dt.timedelta(hours=2), channel="email", evidence="ticket CS-1",
        verified_by="compliance", recorded_at=at, term=dt.timedelta(days=30),
        same_type_window=dt.timedelta(hours=24), policy_revision="sha256:test",
    )


async def write_month(directory: Path, at: dt.datetime,
                      requests: list[tuple[str, str, str, str | None]],
                      grants: Sequence[Grant] = (), **options: Any) -> None:
    """One writer whose clock stands at ``at``: requests (method, path, ip, client) and grants."""
    log = AuditLog(FileSink(directory, **options), key=KEY, clock=at.timestamp)
    async with client(guarded(log, policy_with())) as http:
        for method, path, ip, client_id in requests:
            headers = {"X-Forwarded-For": ip} | ({"X-Client-Id": client_id} if client_id else {})
            await http.request(method, path, headers=headers)
    for grant in grants:
        assert log.record_grant(grant)
    await log.aclose()


async def populate(directory: Path) -> None:
    await write_month(directory, JAN, [
        ("POST", "/api/accounts", SE, None),
        ("POST", "/api/withdrawals", SE, "c-1"),
    ], [a_grant("g-1", "c-1", JAN)])
    await write_month(directory, MAR, [
        ("GET", "/r/FRIEND10", DE6, "c-2"),
        ("POST", "/api/orders", SE, "c-1"),
    ], [a_grant("g-2", "c-2", MAR)])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_makes_a_private_key_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.key"
    code, out, _ = run(capsys, "audit", "keygen", str(path))
    assert code == 0 and "new audit key, id" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    # Beside it, the public key a supervisor gets, and its fingerprint on screen.
    key = AuditKey.from_file(path)
    public = tmp_path / "audit.key.pub"
    assert public.read_text() == key.public_key.pem()
    assert f"fingerprint {key.public_key.fingerprint}" in out
    code, pem, err = run(capsys, "audit", "public-key", "--key-file", str(path))
    assert code == 0 and pem == public.read_text()
    assert err.strip() == f"fingerprint {key.public_key.fingerprint}"
    before = path.read_text()
    code, _, err = run(capsys, "audit", "keygen", str(path))
    assert code == 1 and "never overwritten" in err
    assert path.read_text() == before
    path.unlink()  # the public key is not overwritten either (nor a secret made without it)
    code, _, err = run(capsys, "audit", "keygen", str(path))
    assert code == 1 and f"{public} exists" in err and not path.exists()


async def test_verify_reports_ok_then_names_the_edited_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path)
    code, out, _ = run(capsys, "audit", "verify", str(tmp_path), "--require-closed")
    assert code == 0
    assert out.splitlines()[-1].startswith("OK: 2 chain(s)")
    path = sorted(tmp_path.glob("audit.*.jsonl"))[0]
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["country"] = "CH"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    code, out, _ = run(capsys, "audit", "verify", str(tmp_path))
    assert code == 1
    assert f"{path}:2: hash mismatch: the record was edited" in out
    assert "FAILED: 1 problem(s)" in out
    code, out, _ = run(capsys, "audit", "verify", str(tmp_path), "--json")
    result = json.loads(out)
    assert code == 1 and result["ok"] is False
    assert [c["status"] for c in result["chains"]].count("BROKEN") == 1


def test_verify_without_key_says_how_to_get_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY")
    code, _, err = run(capsys, "audit", "verify", str(tmp_path))
    assert code == 1 and "no audit key" in err and "micafence audit keygen" in err


EXPORT_TABLE = [
    # (filters, expected (reason or event, client) of the records, expected grant ids)
    pytest.param([], [("eu.account_creation", None), ("eu.wind_down", "c-1"),
                      ("eu.promotion", "c-2"), ("eu.no_grant", "c-1")], ["g-1", "g-2"],
                 id="everything"),
    pytest.param(["--since", "2025-02-01"], [("eu.promotion", "c-2"), ("eu.no_grant", "c-1")],
                 ["g-2"], id="since"),
    pytest.param(["--until", "2025-02-01"], [("eu.account_creation", None),
                                             ("eu.wind_down", "c-1")], ["g-1"], id="until"),
    pytest.param(["--client", "c-1"], [("eu.wind_down", "c-1"), ("eu.no_grant", "c-1")],
                 ["g-1"], id="client"),
    pytest.param(["--reason", "eu.promotion"], [("eu.promotion", "c-2")], ["g-1", "g-2"],
                 id="reason"),
    pytest.param(["--reason", "eu.*", "--since", "2025-03-01", "--client", "c-1"],
                 [("eu.no_grant", "c-1")], [], id="combined"),
]


@pytest.mark.parametrize(("filters", "expected", "grant_ids"), EXPORT_TABLE)
async def test_export_filters_records_and_grant_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], filters: list[str],
    expected: list[tuple[str, str | None]], grant_ids: list[str],
) -> None:
    await populate(tmp_path / "log")
    out = tmp_path / "out"
    code, _, err = run(capsys, "audit", "export", str(tmp_path / "log"), "--out", str(out),
                       *filters)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["client_id"]) for r in records] == expected
    grants = [json.loads(line) for line in (out / "grants.jsonl").read_text().splitlines()]
    assert sorted(g["data"]["id"] for g in grants) == grant_ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == len(expected)
    assert manifest["counts"]["grant_events"] == len(grant_ids)
    assert manifest["counts"]["by_reason"] == {
        reason: [r for r, _ in expected].count(reason) for reason, _ in expected}


async def test_manifest_names_chain_heads_revisions_and_is_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path / "log")
    out = tmp_path / "out"
    assert run(capsys, "audit", "export", str(tmp_path / "log"), "--out", str(out),
               "--since", "2025-01-01", "--reason", "eu.*")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    loaded = load_log([str(tmp_path / "log")], KEY)
    assert {(c["writer"], c["head"], c["records"]) for c in manifest["chains"]} == {
        (c.writer, c.head, c.records) for c in loaded.chains}
    assert manifest["verification"] == {"ok": True, "key_id": KEY.key_id, "problems": []}
    assert manifest["policy_revisions"] == [policy_with().revision]
    assert manifest["filters"]["since"] == "2025-01-01T00:00:00+00:00"
    assert manifest["filters"]["reason"] == "eu.*"
    assert manifest["time_range"]["first"].startswith("2025-01-15T10:00:00")
    assert manifest["time_range"]["last"].startswith("2025-03-10T10:00:00")
    assert set(manifest["files"]) == {"records.jsonl", "grants.jsonl"}
    assert verify_manifest(out / "manifest.json", KEY)
    records = out / "records.jsonl"
    records.write_text(records.read_text().replace("eu.promotion", "eu.service"))
    assert not verify_manifest(out / "manifest.json", KEY)


async def test_export_as_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await populate(tmp_path / "log")
    out = tmp_path / "out"
    assert run(capsys, "audit", "export", str(tmp_path / "log"), "--out", str(out),
               "--format", "csv", "--client", "c-2")[0] == 0
    with open(out / "records.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert (row["reason"], row["client_id"], row["zones"], row["blocked"], row["country"]) == (
        "eu.promotion", "c-2", "eu", "true", "DE")
    assert row["client_ip"] == "2a02:d180::/48"
    assert row["time"].startswith("2025-03-10T10:00:00")


async def test_export_refuses_a_broken_log_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path / "log")
    path = sorted((tmp_path / "log").glob("audit.*.jsonl"))[0]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + lines[3:]))
    code, _, err = run(capsys, "audit", "export", str(tmp_path / "log"), "--out",
                       str(tmp_path / "out"))
    assert code == 1 and "does not verify" in err and f"{path}:3" in err
    assert not (tmp_path / "out").exists()
    code, _, _ = run(capsys, "audit", "export", str(tmp_path / "log"), "--out",
                     str(tmp_path / "out"), "--allow-broken")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert code == 0 and manifest["verification"]["ok"] is False
    assert any(f"{path}:3" in p for p in manifest["verification"]["problems"])


async def test_export_matches_pseudonymised_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = policy_with(("pseudonymise_client_ids: false", "pseudonymise_client_ids: true"))
    log = AuditLog(FileSink(tmp_path / "log"), key=KEY)
    async with client(guarded(log, policy)) as http:
        for client_id in ("c-1", "c-2"):
            await http.post("/api/orders", headers={"X-Forwarded-For": SE,
                                                    "X-Client-Id": client_id})
    await log.aclose()
    out = tmp_path / "out"
    assert run(capsys, "audit", "export", str(tmp_path / "log"), "--out", str(out),
               "--client", "c-2")[0] == 0
    [record] = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert record["client_id"] == KEY.pseudonym("c-2")


# -- retention -----------------------------------------------------------------------------------


async def test_prune_removes_old_files_with_a_signed_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path)
    january = next(p.name for p in tmp_path.glob("audit.*.jsonl") if "2025-01" in p.read_text())
    before = sorted(p.name for p in tmp_path.glob("audit.*.jsonl"))
    code, out, _ = run(capsys, "audit", "prune", str(tmp_path), "--before", "2025-02-01",
                       "--dry-run")
    assert code == 0 and "would remove 1 file(s)" in out
    assert sorted(p.name for p in tmp_path.glob("audit.*.jsonl")) == before
    code, out, _ = run(capsys, "audit", "prune", str(tmp_path), "--before", "2025-02-01")
    assert code == 0 and "pruned 1 file(s)" in out
    after = sorted(p.name for p in tmp_path.glob("audit.*.jsonl"))
    assert january not in after and set(before) - {january} <= set(after)
    [prune_file] = [name for name in after if name.startswith("audit.prune-")]
    [prune] = [json.loads(x) for x in (tmp_path / prune_file).read_text().splitlines()
               if json.loads(x)["kind"] == "prune"]
    assert prune["before"].startswith("2025-02-01T00:00:00")
    assert [w["records"] for w in prune["writers"]] == [6]  # open, 3 entries, checkpoint, close
    loaded = load_log([str(tmp_path)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert {r.get("reason") for r in loaded.entries()} == {"eu.promotion", "eu.no_grant", None}


async def test_prune_keeps_a_chain_verifiable_when_only_its_first_files_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [JAN.timestamp()]
    log = AuditLog(FileSink(tmp_path, rotate_bytes=1500), key=KEY, clock=lambda: now[0])
    for day in range(60):
        now[0] = (JAN + dt.timedelta(days=day)).timestamp()
        assert log.record_event("onboarding.token_used", {"token": f"t{day}"})
        await log.flush()
    await log.aclose()
    files = len(list(tmp_path.glob("audit.*.jsonl")))
    assert run(capsys, "audit", "prune", str(tmp_path), "--before", "2025-02-01")[0] == 0
    remaining = load_log([str(tmp_path)], KEY, require_closed=True)
    assert remaining.ok, remaining.problems
    tokens = [r["data"]["token"] for r in remaining.entries()]
    assert tokens and tokens[-1] == "t59" and "t0" not in tokens
    assert len(list(tmp_path.glob("audit.*.jsonl"))) < files + 1
    # Deleting one more old file by hand, without a prune record, is caught.
    oldest = sorted(p for p in tmp_path.glob("audit.*.jsonl") if "prune" not in p.name)[0]
    oldest.unlink()
    assert any("deleted" in p for p in load_log([str(tmp_path)], KEY).problems)


async def test_prune_by_policy_retention_skips_live_chains_and_broken_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path)
    live = AuditLog(FileSink(tmp_path), key=KEY, clock=JAN.timestamp)
    assert live.record_event("onboarding.token_used", {"token": "t"})
    await live.flush()  # open chain: a running worker's file
    policy = tmp_path.parent / "retention.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("retention: P1825D", "retention: P30D"))
    code, out, _ = run(capsys, "audit", "prune", str(tmp_path), "--policy", str(policy))
    assert code == 0 and "pruned 2 file(s)" in out
    assert any(live.writer in p.name for p in tmp_path.glob("audit.*.jsonl"))
    path = next(p for p in tmp_path.glob("audit.*.jsonl") if live.writer in p.name)
    path.write_text(path.read_text().replace("token", "tokens"))
    code, _, err = run(capsys, "audit", "prune", str(tmp_path), "--before", "2030-01-01")
    assert code == 1 and "nothing pruned" in err


async def died_and_named(directory: Path, died_at: dt.datetime, named_at: dt.datetime) -> None:
    """A writer that died at ``died_at`` mid-batch, and the start that named it at ``named_at``."""
    dead = AuditLog(FileSink(directory), key=KEY, clock=died_at.timestamp)
    assert dead.record_event("onboarding.token_used", {"token": "t"})
    await dead.flush()
    await dead.sink.close()  # its lock let go, as when the process dies
    [path] = directory.glob(f"audit.{dead.writer}.*.jsonl")
    with open(path, "ab") as torn:
        torn.write(b'{"kind":"event","se')
    await AuditLog(FileSink(directory), key=KEY, clock=named_at.timestamp).aclose()


async def test_prune_removes_a_recovered_chain_but_never_the_record_that_names_a_kept_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await died_and_named(tmp_path / "old", JAN, JAN + dt.timedelta(days=1))
    code, out, _ = run(capsys, "audit", "prune", str(tmp_path / "old"), "--before", "2025-02-01")
    assert code == 0 and "pruned 2 file(s)" in out  # the torn file too: the chain has ended
    assert load_log([str(tmp_path / "old")], KEY, require_closed=True).ok
    # The record naming a dead writer stays as long as that writer's files do (here the
    # successor's clock is behind, so only its file is older than the cut-off).
    await died_and_named(tmp_path / "kept", MAR, JAN)
    code, out, _ = run(capsys, "audit", "prune", str(tmp_path / "kept"), "--before", "2025-02-01")
    assert code == 0 and "0 writer(s)" in out
    loaded = load_log([str(tmp_path / "kept")], KEY, require_closed=True)
    assert loaded.ok, loaded.problems

"""An export as a supervisor checks it: ``micafence audit verify-export`` with no secret at all,
the firm's public key or only its fingerprint, and every changed, removed, added or moved
record named by its position, even in a filtered export.

``tests/data/audit-v1`` was written by micafence before Ed25519 (commit a787763: HMAC-signed
checkpoints and manifest) with the test key; it must keep verifying, with the secret.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from micafence.audit.export import sign_manifest
from micafence.audit.keys import AuditKey
from micafence.audit.reader import load_log
from micafence.cli import main
from tests.audit_support import KEY, KEY_TEXT
from tests.test_audit_cli import populate

LEGACY = Path(__file__).parent / "data" / "audit-v1"
OTHER_KEY = AuditKey.from_text("someone-else-s-key-0123456789")


@pytest.fixture(autouse=True)
def no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor has no audit secret: none in the environment unless a test sets it."""
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY", raising=False)
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY_FILE", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def export(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch, *options: str) -> Path:
    """The firm's side: a log of two writers, exported with the secret."""
    await populate(tmp_path / "log")
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    out = tmp_path / "export"
    code, _, err = run(capsys, "audit", "export", str(tmp_path / "log"), "--out", str(out),
                       *options)
    assert code == 0, err
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY")
    return out


def public_key_file(tmp_path: Path, key: AuditKey) -> Path:
    path = tmp_path / f"{key.key_id}.pub"
    path.write_text(key.public_key.pem())
    return path


async def test_an_export_verifies_without_the_secret_and_shows_its_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await export(tmp_path, capsys, monkeypatch)
    manifest = json.loads((out / "manifest.json").read_text())
    # The fingerprint, computed here from the PEM alone: SHA-256 of the raw public key.
    embedded = load_pem_public_key(manifest["signature"]["public_key"].encode())
    assert isinstance(embedded, Ed25519PublicKey)
    fingerprint = hashlib.sha256(embedded.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()
    assert fingerprint == manifest["signature"]["key_fingerprint"] == KEY.public_key.fingerprint
    assert manifest["format"] == 2 and "mac" not in manifest
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out))
    assert code == 0 and stdout.splitlines()[-1] == "OK"
    assert fingerprint in stdout and "out of band" in stdout
    assert "records.jsonl: 4 record(s)" in stdout and "grants.jsonl: 2 record(s)" in stdout
    # With the firm's public key file, the key itself is compared.
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out), "--public-key",
                          str(public_key_file(tmp_path, KEY)))
    assert code == 0 and "(the key given)" in stdout
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out), "--public-key",
                          str(public_key_file(tmp_path, OTHER_KEY)))
    assert code == 1 and "not with the key given" in stdout


async def test_the_manifest_lists_every_exported_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await export(tmp_path, capsys, monkeypatch, "--reason", "eu.*", "--since", "2025-03-01")
    manifest = json.loads((out / "manifest.json").read_text())
    lines = (out / "records.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert manifest["files"]["records.jsonl"]["records"] == [
        {"writer": r["writer"], "seq": r["seq"], "hash": r["hash"],
         "sha256": hashlib.sha256(line).hexdigest()}
        for r, line in zip(records, lines, strict=True)]
    assert len(records) == 2  # filtered: the chain's seq jumps, the manifest still pins each


def records_lines(out: Path) -> list[bytes]:
    return (out / "records.jsonl").read_bytes().splitlines(keepends=True)


def edit_second(out: Path) -> None:
    lines = records_lines(out)
    record = json.loads(lines[1])
    record["reason"] = "pass"
    lines[1] = (json.dumps(record, sort_keys=True) + "\n").encode()
    (out / "records.jsonl").write_bytes(b"".join(lines))


def remove_second(out: Path) -> None:
    lines = records_lines(out)
    (out / "records.jsonl").write_bytes(b"".join(lines[:1] + lines[2:]))


def swap_first_two(out: Path) -> None:
    lines = records_lines(out)
    (out / "records.jsonl").write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))


def copy_first_to_end(out: Path) -> None:
    lines = records_lines(out)
    (out / "records.jsonl").write_bytes(b"".join([*lines, lines[0]]))


def edit_manifest_counts(out: Path) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["counts"]["records"] -= 1
    (out / "manifest.json").write_text(json.dumps(manifest))


def remove_record_and_its_entry(out: Path) -> None:
    """The record and its manifest entry both removed: only the signature can tell."""
    remove_second(out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["records.jsonl"]["records"][1]
    (out / "manifest.json").write_text(json.dumps(manifest))


def add_a_file(out: Path) -> None:
    # A file the supervisor would read beside the signed ones: it is in no manifest.
    (out / "records-2.jsonl").write_bytes(records_lines(out)[0])


def identify(out: Path, position: int) -> str:
    entry = json.loads((out / "manifest.json").read_text())["files"]["records.jsonl"][
        "records"][position - 1]
    return f"(writer {entry['writer']}, seq {entry['seq']})"


TAMPERING = [
    # (what is done, the problem expected: a template filled with the record's identity)
    pytest.param(edit_second, "records.jsonl record 2 {2}: changed since the export",
                 id="record-changed"),
    pytest.param(remove_second, "records.jsonl: record 2 of the manifest {2} is missing: removed",
                 id="record-removed"),
    pytest.param(swap_first_two, "records.jsonl record 1 {2}: out of place (record 2 in the "
                 "manifest): moved", id="records-reordered"),
    pytest.param(copy_first_to_end, "records.jsonl record 5 {1}: a second copy of record 1",
                 id="record-added"),
    pytest.param(edit_manifest_counts, "manifest.json: the signature does not verify",
                 id="manifest-changed"),
    pytest.param(remove_record_and_its_entry, "manifest.json: the signature does not verify",
                 id="record-and-entry-removed"),
    pytest.param(add_a_file, "records-2.jsonl: not in the manifest", id="file-added"),
]


@pytest.mark.parametrize(("tamper", "problem"), TAMPERING)
async def test_tampering_is_named_by_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[Path], None], problem: str,
) -> None:
    out = await export(tmp_path, capsys, monkeypatch)
    expected = problem.format(None, identify(out, 1), identify(out, 2))
    tamper(out)
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out), "--public-key",
                          str(public_key_file(tmp_path, KEY)))
    assert code == 1, stdout
    assert any(line.startswith(f"  {expected}") for line in stdout.splitlines()), stdout
    assert stdout.splitlines()[-1].startswith("FAILED")


async def test_a_changed_csv_row_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await export(tmp_path, capsys, monkeypatch, "--format", "csv")
    rows = list(csv.reader(io.StringIO((out / "records.csv").read_text(), newline="")))
    rows[3][rows[0].index("country")] = "CH"
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    (out / "records.csv").write_text(buffer.getvalue(), newline="")
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out))
    writer, seq = rows[3][rows[0].index("writer")], rows[3][rows[0].index("seq")]
    assert code == 1
    assert f"  records.csv record 3 (writer {writer}, seq {seq}): changed since the export" in \
        stdout.splitlines(), stdout


async def test_a_manifest_re_signed_with_another_key_shows_another_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await export(tmp_path, capsys, monkeypatch)
    remove_second(out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]["records.jsonl"]["records"][1]
    manifest["files"]["records.jsonl"]["sha256"] = hashlib.sha256(
        (out / "records.jsonl").read_bytes()).hexdigest()
    sign_manifest(manifest, OTHER_KEY)  # a forger signs with a key of their own
    (out / "manifest.json").write_text(json.dumps(manifest))
    # Consistent in itself: only the fingerprint (compared out of band) or the key tells.
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out))
    assert code == 0 and OTHER_KEY.public_key.fingerprint in stdout
    assert KEY.public_key.fingerprint not in stdout
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out), "--public-key",
                          str(public_key_file(tmp_path, KEY)))
    assert code == 1 and "not with the key given" in stdout


def test_an_export_signed_the_old_way_verifies_with_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    shutil.copytree(LEGACY / "export", out)
    assert "mac" in json.loads((out / "manifest.json").read_text())
    code, _, err = run(capsys, "audit", "verify-export", str(out))
    assert code == 2 and "signed the old way" in err and "--key-file" in err
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out))
    assert code == 0 and "signed the old way (HMAC)" in stdout, stdout
    records = out / "records.jsonl"
    records.write_text(records.read_text().replace("eu.account_creation", "eu.promotion"))
    code, stdout, _ = run(capsys, "audit", "verify-export", str(out))
    assert code == 1 and "records.jsonl: SHA-256 differs from the manifest" in stdout


def test_a_log_signed_the_old_way_verifies_with_the_secret_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = LEGACY / "log"
    assert load_log([str(log)], KEY, require_closed=True).ok
    public = public_key_file(tmp_path, KEY)
    code, stdout, _ = run(capsys, "audit", "verify", str(log), "--public-key", str(public))
    assert code == 1 and "signed the old way (HMAC): only the audit key can verify it" in stdout
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    code, stdout, _ = run(capsys, "audit", "verify", str(log), "--require-closed")
    assert code == 0, stdout


async def test_a_log_verifies_with_the_public_key_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(tmp_path / "log")
    code, stdout, _ = run(capsys, "audit", "verify", str(tmp_path / "log"), "--require-closed",
                          "--public-key", str(public_key_file(tmp_path, KEY)))
    assert code == 0 and f"key fingerprint {KEY.public_key.fingerprint}" in stdout
    code, stdout, _ = run(capsys, "audit", "verify", str(tmp_path / "log"), "--public-key",
                          str(public_key_file(tmp_path, OTHER_KEY)))
    assert code == 1 and "signed with another key (fingerprint" in stdout
    assert "checkpoint signature does not verify" in stdout

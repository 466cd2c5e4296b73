"""Secret key files (the audit key, the grant key) are refused when missing or when their group or
others may open them, with an error that names the file; where each key is loaded, the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from micafence import MicafenceMiddleware
from micafence.audit.keys import AuditKey, AuditKeyError
from micafence.audit.log import AuditLog
from micafence.cli import main
from micafence.grants.signing import GrantKey, GrantKeyError
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, echo_app

AUDIT_SECRET = "0123456789abcdef" * 4
GRANT_SECRET = "fedcba9876543210" * 4


def key_file(tmp_path: Path, name: str, text: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_only_its_owner_can_open_is_read(tmp_path: Path, mode: int) -> None:
    audit = key_file(tmp_path, "audit.key", AUDIT_SECRET, mode)
    grant = key_file(tmp_path, "grant.key", GRANT_SECRET, mode)
    assert AuditKey.from_file(audit) == AuditKey.from_text(AUDIT_SECRET)
    assert GrantKey.from_file(grant) == GrantKey.from_text(GRANT_SECRET)
    # Through a symbolic link too, as a Kubernetes secret volume mounts its files.
    link = tmp_path / "mounted.key"
    link.symlink_to(audit)
    assert AuditKey.from_file(link) == AuditKey.from_text(AUDIT_SECRET)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
@pytest.mark.parametrize(("load", "error", "what"), [
    pytest.param(AuditKey.from_file, AuditKeyError, "audit key", id="audit"),
    pytest.param(GrantKey.from_file, GrantKeyError, "grant key", id="grant"),
])
def test_a_key_its_group_or_others_may_open_is_refused(
    tmp_path: Path, mode: int, load: object, error: type[Exception], what: str
) -> None:
    path = key_file(tmp_path, "some.key", AUDIT_SECRET, mode)
    with pytest.raises(error) as caught:
        load(path)  # type: ignore[operator]
    message = str(caught.value)
    assert f"{what} file {path} can be opened by its group or by others (mode {mode:04o})" in \
        message
    assert f"chmod 600 {path}" in message


@pytest.mark.parametrize(("load", "error", "what"), [
    pytest.param(AuditKey.from_file, AuditKeyError, "audit key", id="audit"),
    pytest.param(GrantKey.from_file, GrantKeyError, "grant key", id="grant"),
])
def test_a_missing_key_file_or_a_directory_is_named(
    tmp_path: Path, load: object, error: type[Exception], what: str
) -> None:
    with pytest.raises(error, match=f"cannot read {what} file {tmp_path / 'none.key'}: No such"):
        load(tmp_path / "none.key")  # type: ignore[operator]
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(error, match="is not a regular file"):
        load(tmp_path / "dir.key")  # type: ignore[operator]


def test_the_audit_log_and_the_cli_refuse_an_open_audit_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = key_file(tmp_path, "audit.key", AUDIT_SECRET, 0o644)
    monkeypatch.delenv("MICAFENCE_AUDIT_KEY", raising=False)
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY_FILE", str(path))
    with pytest.raises(AuditKeyError, match=f"audit key file {path} can be opened"):
        AuditLog(tmp_path / "audit")
    (tmp_path / "audit").mkdir()
    assert main(["audit", "verify", str(tmp_path / "audit"), "--key-file", str(path)]) == 1
    assert f"micafence: audit key file {path} can be opened" in capsys.readouterr().err
    assert main(["audit", "public-key"]) == 1
    assert "(mode 0644)" in capsys.readouterr().err


def test_the_middleware_and_the_grant_cli_refuse_an_open_grant_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = key_file(tmp_path, "grant.key", GRANT_SECRET, 0o640)
    # The middleware does not start (its lifespan startup fails, naming the file).
    middleware = MicafenceMiddleware(echo_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                                     store=f"file://{tmp_path / 'grants.jsonl'}", grant_key=path,
                                     watch=False)
    assert isinstance(middleware.startup_error, GrantKeyError)
    assert f"grant key file {path} can be opened" in str(middleware.startup_error)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MICAFENCE_GRANT_KEY", raising=False)
    monkeypatch.setenv("MICAFENCE_GRANT_KEY_FILE", str(path))
    code = main(["grant", "list", "--store", f"file://{tmp_path / 'grants.jsonl'}"])
    assert code != 0
    assert f"grant key file {path} can be opened by its group or by others (mode 0640)" in \
        capsys.readouterr().err
    os.chmod(path, 0o600)  # fixed as the message says: accepted
    assert main(["grant", "list", "--store", f"file://{tmp_path / 'grants.jsonl'}"]) == 0

"""The policy archive: every revision loaded is kept, and `explain` re-decides with any of them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from micafence import MicafenceMiddleware
from micafence.cli import main
from micafence.live.archive import INDEX_FILE, PolicyArchive
from tests.conftest import COUNTRY_DB
from tests.live import SE, Clock, decision_app, write_file

POLICY = """\
policy: 1
name: archived
client_ip: {trusted_proxies: [127.0.0.0/8]}
zones:
  eu: {countries: [SE, DE]}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
rules:
  - {id: no-new-accounts, zones: [eu], class: account_creation, outcome: block}
"""
RELAXED = POLICY.replace("outcome: block", "outcome: allow")
T0 = dt.datetime(2026, 10, 1, 8, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 10, 15, 8, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MICAFENCE_ARCHIVE_DIR", "MICAFENCE_POLICY", "MICAFENCE_BREAKGLASS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A worker that loaded POLICY at T0 and RELAXED at T1: (policy file, archive, revisions)."""
    policy, archive = tmp_path / "policy.yaml", tmp_path / "archive"
    policy.write_text(POLICY, encoding="utf-8")
    clock = Clock(T0)
    guarded = MicafenceMiddleware(decision_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  archive_dir=archive, clock=clock, watch=False)
    first = guarded.enforcer.policy.revision
    clock.now = T1
    write_file(policy, RELAXED)
    assert guarded.reloader.check() is True
    return policy, archive, [first, guarded.enforcer.policy.revision]


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    code = main(["explain", "--geoip-db", str(COUNTRY_DB), "--ip", SE, "--method", "POST",
                 "--path", "/api/accounts", "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else {}, err


def test_every_revision_loaded_is_kept_with_its_exact_bytes(
    history: tuple[Path, Path, list[str]],
) -> None:
    _, archive, (first, second) = history
    store = PolicyArchive(archive)
    assert store.file_for(first).read_text(encoding="utf-8") == POLICY
    assert store.file_for(second).read_text(encoding="utf-8") == RELAXED
    assert [(e.revision, e.loaded_at) for e in store.history()] == [(first, T0), (second, T1)]


@pytest.mark.parametrize(
    ("options", "blocked", "which"),
    [
        ([], False, 1),  # the current policy file
        (["--at", "2026-10-01T08:00:00Z"], True, 0),  # exactly when the first was loaded
        (["--at", "2026-10-15T07:59:59Z"], True, 0),
        (["--at", "2026-10-15T10:00:00+02:00"], False, 1),
        (["--revision", "{0}"], True, 0),
        (["--revision", "{0:short}"], True, 0),  # a unique prefix is enough
        (["--revision", "{1}", "--at", "2026-10-02T00:00:00Z"], False, 1),  # REV wins over TIME
    ],
)
def test_explain_re_decides_with_past_revisions(
    history: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str],
    options: list[str], blocked: bool, which: int,
) -> None:
    policy, archive, revisions = history
    argv = [o.replace("{0:short}", revisions[0][7:15]).replace("{0}", revisions[0])
            .replace("{1}", revisions[1]) for o in options]
    code, decision, _ = explain(capsys, "--policy", str(policy), "--archive", str(archive),
                                *argv)
    assert code == 0
    assert decision["blocked"] is blocked
    assert decision["policy_revision"] == revisions[which]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--at", "2026-09-30T00:00:00Z"], "no policy revision was loaded at or before 2026-09-30"),
        (["--revision", "sha256:ffffffffffffffff"], "is not in the archive"),
        (["--revision", "abc"], "give at least 6 hex digits"),
    ],
)
def test_explain_says_what_the_archive_cannot_answer(
    history: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str],
    options: list[str], message: str,
) -> None:
    policy, archive, _ = history
    code, _, err = explain(capsys, "--policy", str(policy), "--archive", str(archive), *options)
    assert code == 1
    assert message in err


def test_revision_needs_an_archive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(capsys, "--revision", "sha256:0123456789abcdef")
    assert code == 1
    assert "--revision needs the archive (--archive or $MICAFENCE_ARCHIVE_DIR)" in err


def test_an_altered_archive_file_is_refused(
    history: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, archive, (first, _) = history
    PolicyArchive(archive).file_for(first).write_text(RELAXED, encoding="utf-8")
    code, _, err = explain(capsys, "--archive", str(archive), "--revision", first)
    assert code == 1
    assert "content changed since it was archived" in err


def test_a_corrupt_index_line_is_named(tmp_path: Path) -> None:
    (tmp_path / INDEX_FILE).write_text('{"revision": "sha256:00"}\n', encoding="utf-8")
    with pytest.raises(Exception, match=rf"{INDEX_FILE}:1: not an archive entry"):
        PolicyArchive(tmp_path).history()

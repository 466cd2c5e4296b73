"""The ``micafence`` command line: check, test, explain, and the installed entry point."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import maxminddb
import pytest

from micafence.cli import bundled_test_database, main
from micafence.policy.casefile import load_cases
from micafence.policy.loader import default_policy_path, policy_revision

REPO = Path(__file__).resolve().parents[1]
TEST_DB = REPO / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"
DB = ["--geoip-db", str(TEST_DB)]

# A compact policy for the `test` subcommand, independent of the packaged default.
POLICY = """\
policy: 1
name: cli-test
client_ip:
  trusted_proxies: [127.0.0.0/8]
zones:
  eu:
    countries: [DE, FR, SE]
  uk:
    countries: [GB]
    promotions: approved_only
routes:
  - {id: accounts.api, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: promotions.feed, class: promotion, path: /api/promotions}
rules:
  - id: no-new-accounts
    zones: [eu, unknown_country]
    class: account_creation
    outcome: block
  - id: no-promotions
    zones: [eu, uk]
    class: promotion
    outcome: block
"""

PASSING_CASES = """\
cases:
  - name: Swedish sign-up is blocked
    request: {ip: 89.160.20.112, method: POST, path: /api/accounts}
    expect: {blocked: true, reason: eu.account_creation, rule: no-new-accounts}
  - name: Swiss sign-up passes
    request: {ip: 2a02:d000::1, method: POST, path: /api/accounts}
    expect: {blocked: false, reason: pass, country: CH, zones: []}
  - name: UK promotion feed via the local proxy is blocked
    request:
      ip: 127.0.0.1
      path: /api/promotions
      headers: {X-Forwarded-For: 81.2.69.160}
    expect: {blocked: true, reason: uk.promotion, zones: [uk], promotions: approved_only}
"""


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads defaults from the environment; tests must not inherit any."""
    monkeypatch.delenv("MICAFENCE_GEOIP_DB", raising=False)
    monkeypatch.delenv("MICAFENCE_POLICY", raising=False)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out: str) -> dict[str, str]:
    """``explain``'s table as {label: value} (labels are padded to 11 columns)."""
    return {line[:11].strip(): line[11:] for line in out.splitlines() if line.strip()}


def _db_build_date() -> str:
    reader = maxminddb.open_database(str(TEST_DB))
    try:
        epoch = reader.metadata().build_epoch
    finally:
        reader.close()
    return f"{dt.datetime.fromtimestamp(epoch, tz=dt.UTC):%Y-%m-%d}"


DEFAULT_REVISION = policy_revision(default_policy_path().read_bytes())


# -- the installed entry point -----------------------------------------------------------------


def test_console_script_runs() -> None:
    script = shutil.which("micafence", path=str(Path(sys.executable).parent))
    assert script is not None, "the micafence console script is not installed in the venv"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("check", "test", "explain", "demo"):
        assert command in done.stdout


# -- check -------------------------------------------------------------------------------------


def test_check_default_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(default_policy_path()))
    assert code == 0, err
    assert "OK" in out
    assert DEFAULT_REVISION in out
    assert "eu (34)" in out and "eea (3)" in out and "uk (1)" in out


def test_check_broken_policy_names_file_line_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("[DE, FR, SE]", "[DE, UK, SE]"), encoding="utf-8")
    code, out, err = run(capsys, "check", str(broken))
    assert (code, err) == (1, "")
    assert out.splitlines()[0].startswith(
        f"{broken}:7: zones.eu.countries[1]: 'UK' is not an ISO 3166-1")


def test_check_refuses_identity_headers_without_a_gateway(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = default_policy_path().read_text(encoding="utf-8")
    lines = text.splitlines()
    line = 1 + next(n for n, found in enumerate(lines) if "trusted_sources:" in found)
    broken = tmp_path / "exchange.yaml"
    broken.write_text(text.replace("trusted_sources: [127.0.0.0/8, ::1/128]",
                                   "trusted_sources: []"), encoding="utf-8")
    code, out, err = run(capsys, "check", str(broken))
    assert (code, err) == (1, "")
    assert out.startswith(f"{broken}:{line}: client_identity.trusted_sources: "
                          "source 'header' needs at least one network; list the network of "
                          "the auth gateway that sets x-client-id")


def test_check_yaml_syntax_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("name: cli-test", "name: cli-test: x"), encoding="utf-8")
    code, out, _ = run(capsys, "check", str(broken))
    assert code == 1
    assert out.startswith(f"{broken}:2: YAML error")


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "check", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert out.startswith(f"{tmp_path / 'nope.yaml'}: cannot read: No such file")


# -- test --------------------------------------------------------------------------------------


def test_test_all_cases_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_file: Path
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(PASSING_CASES, encoding="utf-8")
    code, out, err = run(capsys, "test", str(policy_file), str(cases), *DB)
    assert code == 0, out + err
    assert "3 passed, 0 failed" in out
    assert "FAIL" not in out
    assert "bundled" not in err  # --geoip-db was given: no demo-database notice

    code, out, _ = run(capsys, "test", str(policy_file), str(cases), *DB, "-v")
    assert code == 0
    assert "PASS Swedish sign-up is blocked" in out


def test_test_failing_case_shows_expected_and_got(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_file: Path
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        PASSING_CASES.replace("expect: {blocked: false, reason: pass, country: CH",
                              "expect: {blocked: true, reason: pass, country: CH"),
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "test", str(policy_file), str(cases), *DB)
    assert code == 1
    assert f"FAIL Swiss sign-up passes ({cases}:5)" in out
    assert "blocked: expected True, got False" in out
    assert "2 passed, 1 failed" in out


def test_test_failing_case_lists_every_mismatch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_file: Path
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "cases:\n"
        "  - name: wrong twice\n"
        "    request: {ip: 89.160.20.112, method: POST, path: /api/accounts}\n"
        "    expect: {reason: eu.service, country: DE}\n",
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "test", str(policy_file), str(cases), *DB)
    assert code == 1
    assert "reason: expected 'eu.service', got 'eu.account_creation'" in out
    assert "country: expected 'DE', got 'SE'" in out
    assert "0 passed, 1 failed" in out


@pytest.mark.parametrize(
    ("cases_text", "location", "message"),
    [
        pytest.param(
            PASSING_CASES.replace("expect: {blocked: true, reason: eu.account_creation",
                                  "expect: {blocked: maybe, reason: eu.account_creation"),
            ":4: cases[0].expect.blocked:", "expected true or false, got string 'maybe'",
            id="bad-flag",
        ),
        pytest.param(
            PASSING_CASES.replace("country: CH, zones: []", "verdict: pass"),
            ":7: cases[1].expect.verdict:", "unknown key 'verdict'", id="unknown-expect-key",
        ),
        pytest.param(
            PASSING_CASES.replace("      path: /api/promotions\n",
                                  "      path: /api/promotions\n      body: x\n"),
            ":12: cases[2].request.body:", "unknown key 'body'", id="unknown-request-key",
        ),
        pytest.param(
            PASSING_CASES.replace("{X-Forwarded-For: 81.2.69.160}", "{X-Forwarded-For: 42}"),
            ":12: cases[2].request.headers.X-Forwarded-For:", "expected a non-empty string",
            id="header-not-a-string",
        ),
        pytest.param(
            PASSING_CASES.replace(
                "expect: {blocked: true, reason: eu.account_creation, rule: no-new-accounts}",
                "expect: {}",
            ),
            ":4: cases[0].expect:", "a case must expect something", id="expects-nothing",
        ),
        pytest.param(
            PASSING_CASES.replace("  - name: Swiss sign-up passes\n", "  - title: Swiss\n"),
            ":5: cases[1].title:", "unknown key 'title'", id="unknown-case-key",
        ),
        pytest.param("cases: [\n", ":2: YAML error", "", id="yaml-syntax"),
    ],
)
def test_test_malformed_cases_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_file: Path,
    cases_text: str, location: str, message: str,
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(cases_text, encoding="utf-8")
    code, out, err = run(capsys, "test", str(policy_file), str(cases), *DB)
    assert code == 1
    assert out == ""
    assert f"\n{cases}{location}" in "\n" + err  # a line of its own: file:line: matchers
    assert message in err


def test_test_missing_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy_file: Path
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(PASSING_CASES, encoding="utf-8")
    code, _, err = run(capsys, "test", str(policy_file), str(cases),
                       "--geoip-db", str(tmp_path / "none.mmdb"))
    assert code == 1
    assert "none.mmdb: no such file" in err


def test_default_policy_cases(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ops cases shipped next to the default policy all pass, run from the repository root
    exactly as the README and the cases file write it: no --geoip-db, the file names its
    database."""
    monkeypatch.chdir(REPO)
    code, out, err = run(capsys, "test", "policies/default.yaml", "policies/cases/default.yaml")
    assert code == 0, out + err
    count = len(load_cases("policies/cases/default.yaml"))
    assert out.splitlines()[-1] == f"{count} passed, 0 failed"
    assert "(tests/data/maxmind/GeoIP2-Country-Test.mmdb)" in out.splitlines()[0]
    assert "bundled" not in err


# -- explain -----------------------------------------------------------------------------------


def test_explain_swedish_sign_up(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--ip", "89.160.20.112", "--method", "POST",
                         "--path", "/api/accounts", *DB)
    assert code == 0, err
    table = rows(out)
    assert table["decision"] == "BLOCK" and table["action"] == "answer 451"
    assert table["reason"] == "eu.account_creation"
    assert table["rule"] == "no-new-accounts (mode enforce)"
    assert table["route"] == "accounts.api (class account_creation)"
    assert table["client"] == "89.160.20.112: country SE, registered DE"
    assert table["zones"] == "eu"
    assert table["policy"] == f"default {DEFAULT_REVISION} ({default_policy_path()})"
    assert table["database"] == f"GeoIP2-Country built {_db_build_date()} ({TEST_DB})"


def test_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--ip", "89.160.20.112", "--method", "POST",
                         "--path", "/api/accounts", "--json", *DB)
    assert code == 0, err
    data = json.loads(out)
    assert data["blocked"] is True
    assert data["outcome"] == "block"
    assert data["reason"] == "eu.account_creation"
    assert data["rule"] == "no-new-accounts"
    assert data["route"] == "accounts.api"
    assert data["country"] == "SE"
    assert data["registered_country"] == "DE"
    assert data["zones"] == ["eu"]
    assert data["client_ip"] == "89.160.20.112"
    assert data["policy_revision"] == DEFAULT_REVISION
    assert data["policy_source"] == str(default_policy_path())
    assert data["database_type"] == "GeoIP2-Country"
    date = dt.datetime.fromtimestamp(data["database_build"], tz=dt.UTC)
    assert f"{date:%Y-%m-%d}" == _db_build_date()


def test_explain_through_trusted_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--ip", "127.0.0.1",
                         "--header", "X-Forwarded-For: 2a02:cf40::1", *DB)
    assert code == 0, err
    table = rows(out)
    assert table["zones"] == "eea"
    assert table["client"] == "2a02:cf40::1: country NO, registered NO"
    assert table["decision"] == "PASS"  # a neutral page

    code, out, _ = run(capsys, "explain", "--ip", "127.0.0.1", "--method", "POST",
                       "--path", "/api/accounts",
                       "--header", "X-Forwarded-For: 2a02:cf40::1", *DB)
    assert code == 0
    assert rows(out)["reason"] == "eea.account_creation"


def test_explain_forwarded_header_from_untrusted_peer_is_ignored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "explain", "--ip", "2a02:d000::1", "--method", "POST",
                       "--path", "/api/accounts",
                       "--header", "X-Forwarded-For: 89.160.20.112", *DB)
    assert code == 0
    table = rows(out)
    assert table["decision"] == "PASS"
    assert table["client"] == "2a02:d000::1: country CH, registered CH"


def test_explain_us_visitor_on_gb_registered_network(capsys: pytest.CaptureFixture[str]) -> None:
    # 216.160.83.56 is US with registered_country GB in the test data: zone uk, and the
    # default policy does not block account creation for uk.
    code, out, err = run(capsys, "explain", "--ip", "216.160.83.56", "--path", "/api/accounts",
                         "--method", "POST", *DB)
    assert code == 0, err
    table = rows(out)
    assert table["decision"] == "PASS"
    assert table["reason"] == "pass"
    assert table["client"] == "216.160.83.56: country US, registered GB"
    assert table["zones"] == "uk"
    assert table["promotions"] == "approved_only"


def test_explain_without_ip_is_unknown_country(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", *DB)
    assert code == 0, err
    table = rows(out)
    assert table["zones"] == "unknown_country"
    assert table["client"] == "unknown: country -, registered -"

    code, out, _ = run(capsys, "explain", "--method", "POST", "--path", "/api/accounts", *DB)
    assert code == 0
    assert rows(out)["decision"] == "BLOCK"
    assert rows(out)["reason"] == "unknown_country.account_creation"


def test_explain_defaults_to_bundled_database_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "explain", "--ip", "89.160.20.112")
    assert code == 0, err
    assert "bundled MaxMind TEST database" in err
    assert rows(out)["database"].startswith("GeoLite2-Country built ")
    assert str(bundled_test_database()) in rows(out)["database"]


def test_explain_reads_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, policy_file: Path
) -> None:
    monkeypatch.setenv("MICAFENCE_GEOIP_DB", str(TEST_DB))
    monkeypatch.setenv("MICAFENCE_POLICY", str(policy_file))
    code, out, err = run(capsys, "explain", "--ip", "89.160.20.112")
    assert code == 0, err
    assert "bundled" not in err
    assert rows(out)["policy"].startswith("cli-test sha256:")
    assert rows(out)["database"].startswith("GeoIP2-Country built ")


def test_explain_bad_header_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--ip", "89.160.20.112", "--header", "nocolon", *DB)
    assert code == 2
    assert out == ""
    assert "header 'nocolon' is not 'Name: value'" in err


def test_explain_broken_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("policy: 1", "policy: 7"), encoding="utf-8")
    code, _, err = run(capsys, "explain", "--policy", str(broken), *DB)
    assert code == 1
    assert f"{broken}:1: policy: unsupported schema version 7" in err


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        ([], ["check", "test", "explain", "demo"]),
        (["check"], ["POLICY", "--format", "github", "Exit 0"]),
        (["test"], ["policy", "cases", "--geoip-db", "--verbose", "--junit-xml"]),
        (["explain"], ["--ip", "--method", "--path", "--header", "--policy", "--geoip-db",
                       "--json"]),
        (["demo"], ["--host", "--port", "--policy", "--geoip-db", "--store"]),
    ],
    ids=["micafence", "check", "test", "explain", "demo"],
)
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str], mentions: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: micafence")
    for word in mentions:
        assert word in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: micafence" in capsys.readouterr().err

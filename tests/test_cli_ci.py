"""``micafence`` in CI: what a pipeline sees of --version, check and test (exit codes, output
lines, annotations, JUnit XML)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest

import micafence
from micafence.cli import bundled_test_database, main
from micafence.policy.casefile import check_cases, load_cases

REPO = Path(__file__).resolve().parents[1]
TEST_DB = REPO / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"

GOOD = """\
policy: 1
name: good
zones:
  eu: {countries: [DE, FR, SE]}
  uk: {countries: [GB], promotions: approved_only}
routes:
  - {id: accounts.api, class: account_creation, methods: [POST], path: /api/accounts}
rules:
  - {id: no-new-accounts, zones: [eu, unknown_country], class: account_creation, outcome: block}
"""

# Four independent mistakes, in four parts of the file (lines 4, 6, 9 and 12).
BROKEN = """\
policy: 1
name: broken
client_ip:
  trusted_proxies: [127.0.0.0/33]
zones:
  eu: {countries: [DE, UK, SE]}
  uk: {countries: [GB], promotions: approved_only}
routes:
  - {id: accounts.api, class: signup, path: /api/accounts}
rules:
  - {id: no-new-accounts, zones: [eu, unknown_country], class: account_creation, outcome: block}
  - {id: no-mars, zones: [mars], class: account_creation, outcome: block}
"""

BROKEN_ERRORS = [
    "{f}:4: client_ip.trusted_proxies[0]: '127.0.0.0/33' is not an IP network in CIDR notation",
    "{f}:6: zones.eu.countries[1]: 'UK' is not an ISO 3166-1 alpha-2 country code",
    "{f}:9: routes[0].class: 'signup' is not one of: account_creation, promotion, service, "
    "wind_down, neutral",
    "{f}:12: rules[1].zones[0]: unknown zone 'mars' (declared: eu, uk, unknown_country)",
]

CASES = """\
geoip_db: {db}
cases:
  - name: Swedish sign-up is blocked
    request: {{ip: 89.160.20.112, method: POST, path: /api/accounts}}
    expect: {{blocked: true, reason: eu.account_creation}}
  - name: Swiss sign-up passes
    request: {{ip: 2a02:d000::1, method: POST, path: /api/accounts}}
    expect: {{blocked: false, country: CH}}
"""


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICAFENCE_GEOIP_DB", raising=False)
    monkeypatch.delenv("MICAFENCE_POLICY", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def console_script() -> str:
    script = shutil.which("micafence", path=str(Path(sys.executable).parent))
    assert script is not None, "the micafence console script is not installed in the venv"
    return script


# -- --version ---------------------------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    done = subprocess.run([console_script(), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"micafence {micafence.__version__}\n"
    assert version("micafence") == micafence.__version__  # the installed metadata agrees


def test_version_is_written_in_one_place() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "micafence.__version__"
    }


# -- check -------------------------------------------------------------------------------------


def test_check_reports_every_error_of_every_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    broken = write(tmp_path, "broken.yaml", BROKEN)
    missing = tmp_path / "missing.yaml"
    code, out, err = run(capsys, "check", str(broken), str(good), str(missing))
    assert (code, err) == (1, "")
    lines = out.splitlines()
    expected = [e.format(f=broken) for e in BROKEN_ERRORS]
    assert lines[:4] == expected  # every error, in file order
    assert lines[4].startswith(f"{good}: OK — policy 'good' revision sha256:")
    assert f"{missing}: cannot read: No such file or directory" in lines
    assert lines[-1] == "5 errors in 2 files (3 files checked)"
    # a file:line: matcher finds each error; nothing is prefixed
    matcher = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<message>.+)$")
    found = [m.groupdict() for m in map(matcher.match, lines) if m]
    assert [(f["file"], int(f["line"])) for f in found] == [
        (str(broken), 4), (str(broken), 6), (str(broken), 9), (str(broken), 12)]
    assert not any(line.startswith("micafence:") for line in lines)


def test_check_all_valid_exits_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one = write(tmp_path, "one.yaml", GOOD)
    two = write(tmp_path, "two.yaml", GOOD.replace("name: good", "name: two"))
    code, out, err = run(capsys, "check", str(one), str(two))
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "no errors (2 files checked)"
    assert f"{two}: OK — policy 'two'" in out


def test_check_does_not_report_consequences_of_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A zone in error is not then reported as missing by the promotions naming it, nor are
    the keys of a file in another schema version."""
    approved = GOOD + "promotions:\n  approved: {uk: '[data-promo-approved~=\"uk\"]'}\n"
    broken_zone = write(tmp_path, "zone.yaml", approved.replace("[GB]", "[XX]"))
    code, out, _ = run(capsys, "check", str(broken_zone))
    assert code == 1
    assert out.splitlines() == [
        f"{broken_zone}:5: zones.uk.countries[0]: 'XX' is not an ISO 3166-1 alpha-2 country code",
        "1 error in 1 file (1 file checked)",
    ]
    # the same promotions section is checked, and wrong, when the zone is not in error
    not_approved = write(tmp_path, "stance.yaml", approved.replace("approved_only", "allowed"))
    code, out, _ = run(capsys, "check", str(not_approved))
    assert code == 1 and f"{not_approved}:11: promotions.approved.uk:" in out

    future = write(tmp_path, "future.yaml", BROKEN.replace("policy: 1", "policy: 3"))
    code, out, _ = run(capsys, "check", str(future))
    assert code == 1
    assert out.splitlines() == [
        f"{future}:1: policy: unsupported schema version 3 (this reads 1 and 2)",
        "1 error in 1 file (1 file checked)",
    ]


def test_check_reports_every_unknown_top_level_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "keys.yaml", GOOD.replace("name: good", "nam: good\nmodes: shadow")
                   .replace("rules:", "rule:"))
    code, out, _ = run(capsys, "check", str(policy))
    assert code == 1
    lines = out.splitlines()
    assert [line.split(": ")[0:2] for line in lines[:4]] == [
        [f"{policy}:1", "missing required key 'rules'"],
        [f"{policy}:2", "nam"],
        [f"{policy}:3", "modes"],
        [f"{policy}:9", "rule"],
    ]
    assert lines[-1] == "4 errors in 1 file (1 file checked)"


def test_check_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    broken = write(tmp_path, "broken.yaml", BROKEN)
    code, out, err = run(capsys, "check", str(good), str(broken), "--format", "json")
    assert (code, err) == (1, "")
    report = json.loads(out)  # one JSON document, nothing else on stdout
    assert (report["ok"], report["error_count"]) == (False, 4)
    first, second = report["files"]
    assert first["file"] == str(good) and first["ok"] is True and first["errors"] == []
    assert first["policy"]["name"] == "good"
    assert first["policy"]["revision"].startswith("sha256:")
    assert second["ok"] is False and "policy" not in second
    assert [(e["line"], e["key_path"]) for e in second["errors"]] == [
        (4, "client_ip.trusted_proxies[0]"), (6, "zones.eu.countries[1]"),
        (9, "routes[0].class"), (12, "rules[1].zones[0]")]
    assert second["errors"][1]["problem"] == "'UK' is not an ISO 3166-1 alpha-2 country code"
    assert second["errors"][1]["message"] == BROKEN_ERRORS[1].format(f=broken)

    code, out, _ = run(capsys, "check", str(good), "--format", "json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_check_github_annotations(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", BROKEN)
    missing = tmp_path / "missing.yaml"
    code, out, err = run(capsys, "check", str(broken), str(missing), "--format", "github")
    assert (code, err) == (1, "")
    annotations = [line for line in out.splitlines() if line.startswith("::error ")]
    assert annotations[1] == (
        f"::error file={broken},line=6,title=micafence%3A zones.eu.countries[1]::"
        "'UK' is not an ISO 3166-1 alpha-2 country code"
    )
    assert [a.split(",")[1] for a in annotations[:4]] == [
        "line=4", "line=6", "line=9", "line=12"]
    assert annotations[4] == (f"::error file={missing},title=micafence::"
                              "cannot read: No such file or directory")
    assert len(annotations) == 5


def test_check_github_escapes_properties_and_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A zone named with ':' and ',' cannot break the annotation's properties."""
    policy = write(tmp_path, "names.yaml", GOOD.replace("  eu: {", "  'e:u,x': {"))
    code, out, _ = run(capsys, "check", str(policy), "--format", "github")
    assert code == 1
    annotation = next(line for line in out.splitlines() if line.startswith("::error"))
    properties, message = annotation.removeprefix("::error ").split("::", 1)
    assert properties == f"file={policy},line=4,title=micafence%3A zones.e%3Au%2Cx"
    assert message == "zone name 'e:u,x' must be lower-case letters, digits and _"


@pytest.mark.parametrize("argv", [["check"], ["check", "x.yaml", "--format", "xml"]],
                         ids=["no-file", "bad-format"])
def test_check_usage_error_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: micafence check" in capsys.readouterr().err


# -- test: JUnit XML ---------------------------------------------------------------------------


def junit(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return suites[0], suites[0].findall("testcase")


def test_junit_xml_one_testcase_per_case_with_the_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", CASES.format(db=TEST_DB).replace(
        "expect: {blocked: false, country: CH}", "expect: {blocked: true, country: CH}"))
    report = tmp_path / "reports" / "junit.xml"  # its directory is made
    code, out, _ = run(capsys, "test", str(policy), str(cases), "--junit-xml", str(report))
    assert code == 1
    assert out.splitlines()[-1] == "1 passed, 1 failed"
    suite, testcases = junit(report)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    assert [t.get("name") for t in testcases] == [
        "Swedish sign-up is blocked", "Swiss sign-up passes"]
    assert [t.get("line") for t in testcases] == ["3", "6"]
    assert testcases[0].find("failure") is None
    failure = testcases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "blocked: expected True, got False"
    text = (failure.text or "").splitlines()
    assert json.loads(text[0].removeprefix("expected:")) == {"blocked": True, "country": "CH"}
    assert json.loads(text[1].removeprefix("actual:")) == {"blocked": False, "country": "CH"}
    decision = json.loads(text[2].removeprefix("decision:"))
    assert (decision["reason"], decision["country"]) == ("pass", "CH")


def test_junit_xml_names_the_file_errors_when_nothing_ran(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", BROKEN)
    cases = write(tmp_path, "cases.yaml", CASES.format(db=TEST_DB).replace(
        "expect: {blocked: false, country: CH}", "expect: {verdict: pass}"))
    report = tmp_path / "junit.xml"
    code, out, err = run(capsys, "test", str(policy), str(cases), "--junit-xml", str(report))
    assert (code, out) == (1, "")
    assert f"\n{cases}:8: cases[1].expect.verdict: unknown key 'verdict'" in "\n" + err
    assert f"\n{BROKEN_ERRORS[1].format(f=policy)}\n" in "\n" + err
    assert err.splitlines()[-1] == "5 errors: no case run"
    suite, testcases = junit(report)
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("5", "5", "0")
    errors = [t.find("error") for t in testcases]
    assert all(e is not None for e in errors)
    assert {t.get("file") for t in testcases} == {str(policy), str(cases)}


def test_junit_xml_unwritable_path_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", CASES.format(db=TEST_DB))
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    report = tmp_path / "a-file" / "junit.xml"
    code, out, err = run(capsys, "test", str(policy), str(cases), "--junit-xml", str(report))
    assert code == 1
    assert out.splitlines()[-1] == "2 passed, 0 failed"  # the results are still printed
    assert err.startswith(f"micafence: cannot write the JUnit report {report}: ")


# -- test: the database the cases are written for ----------------------------------------------


def test_cases_file_names_its_database_relative_to_itself(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "db").mkdir()
    shutil.copy(TEST_DB, tmp_path / "db" / "countries.mmdb")
    (tmp_path / "ci" / "cases").mkdir(parents=True)
    policy = write(tmp_path / "ci", "policy.yaml", GOOD)
    cases = write(tmp_path / "ci" / "cases", "cases.yaml",
                  CASES.format(db="../../db/countries.mmdb"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resolved against the cases file, not the working directory
    code, out, err = run(capsys, "test", str(policy), str(cases))
    assert (code, err) == (0, "")
    assert f"({tmp_path / 'db' / 'countries.mmdb'})" in out.splitlines()[0]
    assert out.splitlines()[-1] == "2 passed, 0 failed"


def test_missing_named_database_is_located(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", CASES.format(db="gone.mmdb"))
    code, out, err = run(capsys, "test", str(policy), str(cases))
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == (
        f"{cases}:1: geoip_db: the database these cases are written for, "
        f"{tmp_path / 'gone.mmdb'}, is not a file (give it with --geoip-db)")


def test_geoip_db_option_overrides_the_cases_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", CASES.format(db="gone.mmdb"))
    code, out, err = run(capsys, "test", str(policy), str(cases), "--geoip-db", str(TEST_DB))
    assert (code, err) == (0, "")
    assert f"({TEST_DB})" in out.splitlines()[0]


def test_cases_without_a_database_say_which_one_is_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", CASES.format(db="x").split("\n", 1)[1])
    _, out, err = run(capsys, "test", str(policy), str(cases))
    assert f"{cases} names no database (geoip_db:)" in err
    assert "using the bundled MaxMind TEST database" in err
    assert "GeoLite2-Country-Test.mmdb)" in out.splitlines()[0]


US_CASES = """\
geoip_db: {db}
cases:
  - name: US sign-up passes
    request: {{ip: 74.209.24.1, method: POST, path: /api/accounts}}
    expect: {{blocked: false, zones: []}}
  - name: Swedish sign-up passes (wrongly expected)
    request: {{ip: 89.160.20.112, method: POST, path: /api/accounts}}
    expect: {{blocked: false}}
  - name: A local sign-up passes (wrongly expected)
    request: {{ip: 127.0.0.1, method: POST, path: /api/accounts}}
    expect: {{blocked: false}}
"""


def test_a_case_whose_address_the_database_lacks_names_the_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Cases written for MaxMind's GeoIP2 test database, run against the bundled GeoLite2 one
    (which has no 74.209.24.1): the failure says which database was used and how to give the
    right one; failures that have nothing to do with the database say nothing of it."""
    bundled = bundled_test_database()
    policy = write(tmp_path, "policy.yaml", GOOD)
    cases = write(tmp_path, "cases.yaml", US_CASES.format(db=bundled))
    report = tmp_path / "junit.xml"
    code, out, _ = run(capsys, "test", str(policy), str(cases), "--junit-xml", str(report))
    assert code == 1
    hint = (f"74.209.24.1 is not in the database used, {bundled}: give the one these cases "
            "are written for with --geoip-db, or name it in the cases file (geoip_db:)")
    assert out.splitlines()[1:5] == [
        f"FAIL US sign-up passes ({cases}:3)",
        "     blocked: expected False, got True",
        "     zones: expected [], got ['unknown_country']",
        f"     {hint}",
    ]
    assert out.count("is not in the database used") == 1  # not for SE, nor for 127.0.0.1
    assert out.splitlines()[-1] == "0 passed, 3 failed"
    _, testcases = junit(report)
    failure = testcases[0].find("failure")
    assert failure is not None and (failure.get("message") or "").endswith(hint)

    # the database the cases are written for, by option or by the cases file: the US case passes
    code, out, _ = run(capsys, "test", str(policy), str(cases), "--geoip-db", str(TEST_DB))
    assert "FAIL US sign-up passes" not in out and out.splitlines()[-1] == "1 passed, 2 failed"
    write(tmp_path, "cases.yaml", US_CASES.format(db=TEST_DB))
    code, out, _ = run(capsys, "test", str(policy), str(cases))
    assert "is not in the database used" not in out
    assert out.splitlines()[-1] == "1 passed, 2 failed"


def test_the_repository_cases_name_the_test_database_they_are_written_for() -> None:
    cases = REPO / "policies" / "cases" / "default.yaml"
    first_keys = [line.split(":")[0] for line in cases.read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith(("#", " "))]
    assert first_keys == ["geoip_db", "cases"]
    case_file, errors = check_cases(str(cases))
    assert errors == [] and case_file is not None
    assert case_file.geoip_db == TEST_DB  # in the repository: a clone has it


# -- as a CI job runs it -----------------------------------------------------------------------


def test_readme_command_passes_with_a_junit_report(tmp_path: Path) -> None:
    """`micafence test policies/default.yaml policies/cases/default.yaml`, exactly as the README
    writes it, from the repository root: every case passes, one testcase each in the report."""
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [console_script(), "test", "policies/default.yaml", "policies/cases/default.yaml",
         "--junit-xml", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    count = len(load_cases(str(REPO / "policies" / "cases" / "default.yaml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"{count} passed, 0 failed"
    suite, testcases = junit(report)
    assert (suite.get("tests"), suite.get("failures")) == (str(count), "0")
    assert len(testcases) == count
    assert all(t.find("failure") is None and t.find("error") is None for t in testcases)
    assert "```sh\nmicafence test policies/default.yaml policies/cases/default.yaml\n```" in (
        REPO / "README.md").read_text(encoding="utf-8")


def test_check_exit_codes_from_the_console_script(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    broken = write(tmp_path, "broken.yaml", BROKEN)

    def check(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([console_script(), "check", *argv], capture_output=True,
                              text=True, timeout=60)

    assert check(str(good)).returncode == 0
    failed = check(str(good), str(broken), "--format", "github")
    assert failed.returncode == 1
    assert failed.stdout.count("::error file=") == 4
    assert check("--format", "yaml", str(good)).returncode == 2

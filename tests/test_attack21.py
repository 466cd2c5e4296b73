"""Issue 21's additions attacked from outside, as a demanding user and as an attacker would.

Findings (each test failed before its fix): a deeply nested file and a surrogate escape ended
``micafence check`` in a traceback or a "usage error" with no report, and a link to
``/dev/zero`` took all memory; a line break or a control character in a key or a file name
broke the one-line-per-error contract; in ``--format github``
a policy or file name could run workflow commands (``##[set-output …]``, a forged ``::error``,
``##[stop-commands]`` silencing the annotations after it); the JUnit report of a case named with
a control character was not XML, and none was written when the database could not be opened;
non-UTF-8 bytes were reported without their line; the schema took a trailing line break
(``id: |`` block scalars) that the loader refuses, the loader durations in any script's digits
that the schema refuses, and the loader refused RFC 3339's lower-case ``z``; JSON log lines
were not JSON (``NaN``, a logging call whose arguments do not fit, values JSON cannot hold) and
``stack_info`` was dropped; ``Metrics(registry=...)`` exported every series twice from a
registry holding a ``MultiProcessCollector``; the bench's HTML report crashed on a NaN or
infinite figure; the snippet test did not check micafence commands run by another program
(``gunicorn -k``, ``docker run``, ``$(python -c …)``, ``python -m``); ``check`` on a policy of
thousands of routes ran for hours. What held is asserted too (a YAML alias bomb, escaped report
values).
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from micafence_tools.bench.report_html import render_html
from tests.test_policy_schema import fresh, loader_says, schema_says
from tests.test_snippets import Block, check_block

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "middleware" / "micafence" / "data" / "default-policy.yaml"
TEST_DB = REPO / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"
MICAFENCE = Path(sys.executable).with_name("micafence")
RECORDED_RUN = REPO / "bench" / "results" / "2026-12-04-issue19.json"

SMALL = """\
policy: 2
name: small
zones:
  eu: {countries: [DE, FR]}
routes:
  - {id: accounts, class: account_creation, methods: [POST], path: /api/accounts}
rules:
  - {id: no-accounts, zones: [eu], class: account_creation, outcome: block}
"""


def micafence(*argv: str | bytes) -> tuple[int, str, str]:
    """The console script, its output read as strict UTF-8 (as a CI log or a pipe would); its
    memory bounded (2 GiB of address space), so a regression fails here, not the machine."""
    done = subprocess.run([str(MICAFENCE), *argv], capture_output=True, timeout=300,
                          check=False, preexec_fn=_bounded)
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- check: malformed files ------------------------------------------------------------------


def test_a_deeply_nested_file_is_one_error_of_that_file_in_every_format(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.yaml", "policy: 2\nname: deep\nzones: " + "[" * 400
                 + "]" * 400 + "\nroutes: []\nrules: []\n")
    good = write(tmp_path / "good.yaml", SMALL)
    code, out, err = micafence("check", str(deep), str(good))
    assert (code, err) == (1, "")
    assert out.splitlines()[0] == f"{deep}: YAML error: collections nested too deeply"
    assert f"{good}: OK" in out
    code, out, _ = micafence("check", "--format", "json", str(deep), str(good))
    report = json.loads(out)
    assert code == 1 and [f["ok"] for f in report["files"]] == [False, True]
    code, out, _ = micafence("check", "--format", "github", str(deep), str(good))
    assert code == 1 and out.startswith(f"::error file={deep},title=micafence::YAML error")


def test_a_yaml_alias_bomb_is_read_as_what_it_is(tmp_path: Path) -> None:
    """Held: aliases share one list, nothing expands it (a billion laughs stays small)."""
    lines = ["policy: 2", "name: bomb", "zones:", "  eu:",
             "    countries: &a0 [FR, FR, FR, FR, FR, FR, FR, FR, FR, FR]"]
    lines += [f"  z{i}: {{countries: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]}}"
              for i in range(1, 9)]
    bomb = write(tmp_path / "bomb.yaml", "\n".join([*lines, "routes: []", "rules: []", ""]))
    code, out, _ = micafence("check", str(bomb))
    assert code == 1
    assert "zones.z1.countries[0]: expected a non-empty string, got a list" in out


@pytest.mark.parametrize("form", ["text", "github"])
def test_a_surrogate_escape_is_refused_at_its_line_and_the_report_is_written(
    tmp_path: Path, form: str
) -> None:
    # YAML's \u escape can name half a character: no UTF-8 stream, log or label can carry it
    in_key = write(tmp_path / "key.yaml", SMALL.replace("name: small", '"na\\ud800me": x'))
    in_name = write(tmp_path / "name.yaml", SMALL.replace("name: small", 'name: "\\udcff"'))
    code, out, err = micafence("check", "--format", form, str(in_key), str(in_name))
    assert (code, err) == (1, "")
    if form == "text":
        assert out.splitlines()[:2] == [
            f"{in_key}:2: 'na\\ud800me' holds a surrogate (a \\u escape of half a character): "
            "write the character, or \\U and its 8 hex digits",
            f"{in_name}:2: name: '\\udcff' holds a surrogate (a \\u escape of half a "
            "character): write the character, or \\U and its 8 hex digits"]
    else:
        assert out.count("::error ") == 2 and "line=2,title=micafence%3A name::" in out


def test_a_file_name_that_is_not_utf8_is_reported_as_its_escape(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/policy-\xff.yaml"
    for form in ("text", "github", "json"):
        code, out, _ = micafence("check", "--format", form, name)
        assert code == 1
        assert "policy-\\udcff.yaml" in out


def test_a_key_with_a_line_break_stays_on_its_one_line(tmp_path: Path) -> None:
    forged = "zz\\nforged.yaml:1: name: a line micafence did not write"
    policy = write(tmp_path / "p.yaml", SMALL.replace("name: small", f'"{forged}": 1'))
    code, out, _ = micafence("check", str(policy))
    assert code == 1
    *errors, summary = out.splitlines()
    assert summary == "1 error in 1 file (1 file checked)"
    assert errors == [f"{policy}:2: zz\\nforged.yaml:1: name: a line micafence did not write: "
                      "unknown key 'zz\\nforged.yaml:1: name: a line micafence did not write' "
                      "(allowed: anonymizers, assets, audit, blocked_by, cache, "
                      "client_identity, client_ip, database, health, mode, name, onboarding, "
                      "policy, promotions, reporting, routes, rules, scopes, services, signals, "
                      "unlisted, zones)"]


def test_bytes_that_are_not_utf8_are_reported_at_their_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(SMALL.encode() + b"# caf\xe9\n")
    code, out, _ = micafence("check", str(latin))
    assert (code, out.splitlines()[0]) == (1, f"{latin}:9: not UTF-8 text (invalid "
                                              "continuation byte)")
    code, out, _ = micafence("check", "--format", "github", str(latin))
    assert out.startswith(f"::error file={latin},line=9,title=micafence::not UTF-8 text")


def test_a_byte_order_mark_and_directories_and_missing_files(tmp_path: Path) -> None:
    """Held: a BOM is read past, and a directory or missing file is its own error."""
    marked = tmp_path / "bom.yaml"
    marked.write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    code, out, _ = micafence("check", str(marked), str(tmp_path), str(tmp_path / "no.yaml"))
    assert code == 1
    first, *rest = out.splitlines()
    assert first.startswith(f"{marked}: OK — policy 'small' revision sha256:")
    assert rest == [
        "  zones: eu (2); 1 routes (format version 2, unlisted safe: neutral, unsafe: "
        "neutral); 1 rules; mode enforce",
        f"{tmp_path}: cannot read: Is a directory",
        f"{tmp_path / 'no.yaml'}: cannot read: No such file or directory",
        "2 errors in 2 files (3 files checked)"]


def test_a_policy_linked_to_an_endless_file_is_refused_not_read_whole(tmp_path: Path) -> None:
    # a pull request can add policies/evil.yaml -> /dev/zero; CI runs check policies/*.yaml
    evil = tmp_path / "evil.yaml"
    evil.symlink_to("/dev/zero")
    good = write(tmp_path / "good.yaml", SMALL)
    code, out, _ = micafence("check", str(evil), str(good))
    assert code == 1
    assert out.splitlines()[0] == f"{evil}: larger than 16 MiB: not a file micafence reads"
    assert f"{good}: OK" in out


def test_thousands_of_routes_are_checked_without_weighing_every_pair(tmp_path: Path) -> None:
    routes = "".join(f"  - {{id: r{n}, class: neutral, path: /p{n}/**}}\n" for n in range(3000))
    big = write(tmp_path / "big.yaml", SMALL.replace(
        "routes:\n", f"routes:\n{routes}"))
    code, out, _ = micafence("check", str(big))
    assert code == 0
    assert f"{big}: routes: warning: precedence not analysed: 3001 route entries tell " in out


# -- check --format github: nothing a policy holds runs as a workflow command ----------------

_REGISTERED = {"error", "warning", "notice", "debug", "add-mask", "set-output", "save-state",
               "stop-commands", "echo", "group", "endgroup", "add-matcher", "remove-matcher",
               "set-env", "add-path"}
Command = tuple[str, dict[str, str], str]


def _unescape(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for escaped, plain in pairs:
        text = text.replace(escaped, plain)
    return text


_DATA = (("%0D", "\r"), ("%0A", "\n"), ("%25", "%"))
_PROPERTY = (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%"))
_V1 = (("%3B", ";"), ("%0D", "\r"), ("%0A", "\n"), ("%5D", "]"), ("%25", "%"))


def _parse(line: str, registered: set[str]) -> Command | None:
    """One output line as GitHub's runner reads it: ``::name props::data`` at the start, else
    the older ``##[name props]data`` anywhere in it."""
    stripped = line.lstrip()
    if stripped.startswith("::") and (end := stripped.find("::", 2)) >= 0:
        name, _, properties = stripped[2:end].partition(" ")
        if name in registered:
            pairs = (p.split("=", 1) for p in properties.strip().split(",") if p)
            return name, {k: _unescape(v, _PROPERTY) for k, v in pairs if k and v}, _unescape(
                stripped[end + 2:], _DATA)
    if (start := line.find("##[")) >= 0 and (end := line.find("]", start)) >= 0:
        name, _, properties = line[start + 3:end].partition(" ")
        if name in registered:
            pairs = (p.split("=", 1) for p in properties.split(";") if p)
            return name, {k: _unescape(v, _V1) for k, v in pairs if k and v}, _unescape(
                line[end + 1:], _V1)
    return None


def workflow_commands(output: str) -> list[Command]:
    """The commands the runner carries out for a step's output (stop-commands honoured)."""
    done: list[Command] = []
    stopped: str | None = None
    for line in re.split(r"\r\n|\r|\n", output):
        command = _parse(line, _REGISTERED | ({stopped} if stopped else set()))
        if command is None:
            continue
        if stopped is not None:
            stopped = None if command[0] == stopped else stopped
        elif command[0] == "stop-commands":
            stopped = command[2]
        else:
            done.append(command)
    return done


def test_github_format_runs_no_command_a_policy_or_file_name_holds(tmp_path: Path) -> None:
    stopper = write(tmp_path / "a-stop.yaml", SMALL.replace(
        "name: small", "name: 'x ##[stop-commands]quiet'"))
    output = write(tmp_path / "b-output.yaml", SMALL.replace(
        "name: small", "name: 'x ##[set-output name=approved;]true'"))
    forged = write(tmp_path / "c\n::error file=README.md,line=1::forged.yaml", SMALL)
    broken = write(tmp_path / "d-broken.yaml", SMALL.replace("[DE, FR]", "[DE, UK]"))
    code, out, _ = micafence("check", "--format", "github", *map(str, (
        stopper, output, forged, broken)))
    assert code == 1
    assert workflow_commands(out) == [
        ("error", {"file": str(broken), "line": "4", "title": "micafence: zones.eu.countries[1]"},
         "'UK' is not an ISO 3166-1 alpha-2 country code")]
    # the summary is still there for a reader of the log
    assert out.splitlines()[-2] == "1 error in 1 file (4 files checked)"


# -- test --junit-xml ------------------------------------------------------------------------


def test_junit_report_of_cases_named_with_control_characters_is_xml(tmp_path: Path) -> None:
    cases = write(tmp_path / "cases.yaml", textwrap.dedent(f"""\
        geoip_db: {TEST_DB}
        cases:
          - name: "ctrl \\x01 esc \\e[31m bell \\a ]]> <&> \\"q\\" nul \\0 \\uFFFE"
            request: {{ip: 89.160.20.112, method: POST, path: /api/accounts}}
            expect: {{blocked: false, reason: "]]>\\x02"}}
          - name: Swedish visitor cannot open an account
            request: {{ip: 89.160.20.112, method: POST, path: /api/accounts}}
            expect: {{blocked: true}}
        """))
    report = tmp_path / "junit.xml"
    code, _, _ = micafence("test", str(DEFAULT), str(cases), "--junit-xml", str(report))
    assert code == 1
    suite = ET.parse(report).getroot().find("testsuite")  # expat: strict XML 1.0
    assert suite is not None
    first, second = suite.findall("testcase")
    assert first.get("name") == ("ctrl \\x01 esc \\x1b[31m bell \\x07 ]]> <&> \"q\" nul \\x00 "
                                 "\\ufffe")
    failure = first.find("failure")
    assert failure is not None and "reason: expected ']]>\\x02'" in (failure.get("message") or "")
    assert second.get("name") == "Swedish visitor cannot open an account"
    assert second.find("failure") is None


@pytest.mark.parametrize("where", ["cases file", "--geoip-db"])
def test_a_database_that_cannot_be_opened_is_an_error_in_the_junit_report(
    tmp_path: Path, where: str
) -> None:
    not_a_database = write(tmp_path / "GeoIP2-Country.mmdb", "not a MaxMind database\n")
    named = f"geoip_db: {not_a_database.name}\n" if where == "cases file" else ""
    cases = write(tmp_path / "cases.yaml", named + textwrap.dedent("""\
        cases:
          - name: Swedish visitor cannot open an account
            request: {ip: 89.160.20.112, method: POST, path: /api/accounts}
            expect: {blocked: true}
        """))
    given = ["--geoip-db", str(not_a_database)] if where == "--geoip-db" else []
    report = tmp_path / "reports" / "junit.xml"
    code, _, err = micafence("test", str(DEFAULT), str(cases), *given, "--junit-xml",
                             str(report))
    assert code == 1 and err.endswith("1 error: no case run\n")
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    (error,) = suite.iter("error")
    assert "not a valid MaxMind database" in (error.get("message") or "")


# -- the schema and the loader ---------------------------------------------------------------


@pytest.mark.parametrize("path", [
    ("rules", 0, "id"), ("client_identity", "header"), ("client_ip", "trusted_proxies", 0),
    ("promotions", "visitor_cookie", "name"), ("routes", 2, "methods", 0),
    ("assets", "BTC", "network"), ("onboarding", "header"), ("promotions", "markers", 0),
], ids=lambda path: ".".join(map(str, path)))
def test_a_trailing_line_break_is_refused_by_schema_and_loader_alike(
    path: tuple[str | int, ...]
) -> None:
    """``id: |`` (a block scalar) ends in a line break: Python's ``re.search`` lets ``$``
    match before it, so the schema took what the loader refuses."""
    data = fresh()
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] += "\n"
    assert loader_says(data) is not None
    assert schema_says(data) is not None


@pytest.mark.parametrize(("path", "value", "accepted"), [
    (("database", "max_age"), "P\u0663D", False),  # an Arabic-Indic 3
    (("audit", "retention"), "PT1\u017f", False),  # long s: str.upper() makes it S
    (("promotions", "solicitation_lookback"), "P\u0661\u0662M", False),  # a look-back too
    (("rules", 0, "effective_from"), "2027-01-01T00:00:00z", True),  # RFC 3339's lower-case z
], ids=["arabic-digit", "long-s", "lookback", "lower-case-z"])
def test_durations_and_instants_are_read_alike_by_schema_and_loader(
    path: tuple[str | int, ...], value: str, accepted: bool
) -> None:
    data = fresh()
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert (loader_says(data) is None, schema_says(data) is None) == (accepted, accepted)


# -- JSON logs ---------------------------------------------------------------------------------

_LOGGING = textwrap.dedent("""\
    import json, logging, logging.config
    from micafence.logs import log_config_file
    logging.config.dictConfig(json.loads(log_config_file().read_text()))
    log = logging.getLogger("micafence")
    class Unprintable:
        def __str__(self): raise RuntimeError("no text")
    cycle = []; cycle.append(cycle)
    log.info("policy file %s", "/etc/micafence/\\udcff.yaml")
    log.info("bad args %d", "x")
    log.info("ratio", extra={"fields": {"ratio": float("nan"), "top": float("inf")}})
    log.info("keys", extra={"fields": {"by_pair": {(1, 2): 3}}})
    log.info("cycle", extra={"fields": {"cycle": cycle}})
    log.info("unprintable %s", Unprintable())
    log.info("value", extra={"fields": {"value": Unprintable()}})
    log.info("forged", extra={"time": "T", "level": "critical", "logger": "x", "event": "e"})
    log.info("stack", stack_info=True)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom\\nsecond line")
    """)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_every_log_line_is_one_json_object_whatever_the_record_holds() -> None:
    done = subprocess.run([sys.executable, "-c", _LOGGING], capture_output=True, timeout=60,
                          check=True)
    lines = done.stderr.decode("utf-8").splitlines()  # strict UTF-8
    entries = [json.loads(line, parse_constant=_no_constant) for line in lines]
    assert all(isinstance(entry, dict) for entry in entries)
    by_message = {entry["message"].split(" (", 1)[0]: entry for entry in entries}
    assert entries[0]["message"] == "policy file /etc/micafence/\\udcff.yaml"
    assert by_message["bad args %d"]["message"] == (
        "bad args %d (not formatted: TypeError: %d format: a real number is required, not str; "
        "arguments: ('x',))")
    assert (by_message["ratio"]["ratio"], by_message["ratio"]["top"]) == ("nan", "inf")
    assert by_message["keys"]["by_pair"] == "{(1, 2): 3}"
    assert by_message["cycle"]["cycle"] == "[[...]]"
    assert "RuntimeError: no text" in by_message["unprintable %s"]["message"]
    assert by_message["value"]["value"].startswith("<__main__.Unprintable object at ")
    # an extra cannot overwrite the record's own keys (held)
    forged = by_message["forged"]
    assert (forged["level"], forged["logger"], forged["event"]) == ("info", "micafence", "e")
    assert forged["time"] != "T"
    assert by_message["stack"]["stack"].startswith("Stack (most recent call last):")
    assert "ZeroDivisionError" in by_message["boom\nsecond line"]["exception"]
    assert len(entries) == 10


# -- Metrics(registry=...) under multiprocess --------------------------------------------------

_MULTIPROCESS = textwrap.dedent("""\
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from micafence.metrics import Metrics
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # the app's endpoint, as prometheus_client documents it
    metrics = Metrics(registry=registry)
    metrics.store_error("grant_events")
    metrics.sync()
    print(generate_latest(registry).decode())
    """)


def test_a_multiprocess_registry_reports_each_series_once(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _MULTIPROCESS], capture_output=True, text=True,
                          timeout=60, check=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    scrape = done.stdout.splitlines()
    assert scrape.count("# TYPE micafence_store_errors_total counter") == 1
    assert [line for line in scrape if line.startswith("micafence_store_errors_total{")] == [
        'micafence_store_errors_total{operation="grant_events"} 1.0']
    assert len([line for line in scrape if line.startswith("# TYPE ")]) == len(
        {line for line in scrape if line.startswith("# TYPE ")})


# -- the bench's HTML report -------------------------------------------------------------------

_LOCUST = {"Request Count": 10, "Failure Count": 1, "50%": 3, "90%": 5, "99%": 6, "99.9%": 7,
           "100%": 8, "users": 16, "seconds": 15, "failures": []}


@pytest.mark.parametrize("figure", [float("nan"), float("inf"), float("-inf"), -5.0],
                         ids=["nan", "inf", "-inf", "negative"])
def test_the_html_report_draws_only_numbers(tmp_path: Path, figure: float) -> None:
    results = json.loads(RECORDED_RUN.read_text())
    results["metrics"]["inprocess.neutral_unrestricted.micafence_us"] = figure
    http = next(key for key in results["metrics"] if key.endswith(".micafence_rps"))
    results["metrics"][http] = figure
    results["locust"] = {**_LOCUST, "50%": figure, "scenarios": {"neutral": {
        **_LOCUST, "99%": figure}}}
    run = tmp_path / "run.json"
    run.write_text(json.dumps(results))  # as `micafence bench --json` writes NaN: NaN
    done = subprocess.run([sys.executable, "-m", "micafence_tools.bench.report_html", str(run)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    page = run.with_suffix(".html").read_text(encoding="utf-8")
    for chart in re.findall(r"<svg.*?</svg>", page, re.S):
        for name, value in re.findall(r' (x|y|x1|x2|cx|cy|width|height)="([^"]*)"', chart):
            assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", value), (name, value)
            if name in ("cx", "x1", "x2"):
                assert float(value) >= 170  # not over the group labels


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def test_the_html_report_escapes_what_locust_and_the_machine_say() -> None:
    """Held: every value from the JSON is text on the page, never markup."""
    results = json.loads(RECORDED_RUN.read_text())
    markup = '<script>alert(1)</script><img src=x onerror=alert(2)> "\' &'
    results["machine"] = {**results["machine"], "platform": markup, "python": markup}
    results["seconds"] = markup
    results["locust"] = {**_LOCUST, "scenarios": {markup: copy.deepcopy(_LOCUST)},
                         "failures": [{"scenario": markup, "message": markup, "occurrences": 2}]}
    results["distributions"] = {"inprocess": {markup: {markup: {markup: 1.0}}}}
    parsed = _Tags()
    parsed.feed(render_html(results))
    assert not parsed.tags & {"script", "img"} and parsed.handlers == []


# -- the snippet test --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "gunicorn -k micafence.workers.NoSuchWorker -w 4 app:app",
    "docker run --rm -p 127.0.0.1:8000:8000 micafence-demo micafence demo --no-such-flag",
    "uvicorn app:app --log-config $(python -c 'from micafence.logs import no_such; print(1)')",
    "python -m micafence check --no-such-flag policies/default.yaml",
    "python3 -m pip install 'micafence[no-such-extra]'",
    "sudo -u micafence micafence tset policies/default.yaml",
    "python -m micafence.no_such_module > docs/cli-reference.md",
], ids=["gunicorn-k", "docker-run", "substitution", "python-m", "python-m-pip", "sudo",
        "python-m-module"])
def test_a_wrong_command_run_by_another_program_fails_the_snippet_test(
    text: str, tmp_path: Path
) -> None:
    with pytest.raises((AssertionError, ImportError)):
        check_block(Block("example.md", 1, "sh", text), tmp_path)


@pytest.mark.parametrize("text", [
    "gunicorn -k micafence.workers.UvicornWorker -w 4 -b 127.0.0.1:8000 app:app",
    "docker run --rm --network host micafence-demo micafence demo --host 127.0.0.1 --port 8000",
    "uvicorn app:app --log-config $(python -c 'from micafence.logs import log_config_file; "
    "print(log_config_file())')",
    "python -m micafence.cli_docs > docs/cli-reference.md",
])
def test_the_same_commands_written_right_pass(text: str, tmp_path: Path) -> None:
    check_block(Block("example.md", 1, "sh", text), tmp_path)

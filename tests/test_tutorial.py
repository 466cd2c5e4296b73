"""The tutorial (docs/tutorial.md), end to end, from what the page and its files say.

The server command, the visitors' requests with the answers they should get, the start-up
warnings and the mistake's output are read from the page; the CI steps from
``examples/tutorial/ci.yml``. gunicorn runs with the tutorial's configuration on a free
127.0.0.1 port, pointed at MaxMind's test database as the page says; the CI steps run on a
copy of the tutorial, so their reports and the mistakes made on purpose stay out of the
repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ruamel.yaml import YAML

from micafence_tools.bench.ports import free_port
from tests.server_process import Served, serving

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "examples" / "tutorial"
PAGE = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent  # gunicorn and micafence, as installed beside this Python
SE, US = "89.160.20.112", "74.209.24.1"


# -- what the page and the files say -----------------------------------------------------------


def blocks(language: str) -> list[str]:
    """The page's fenced code blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE, flags=re.M | re.S)


def lines_of(block: str) -> list[str]:
    """A shell block's lines, continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def block_with(language: str, word: str) -> str:
    [found] = [block for block in blocks(language) if word in block]
    return found


def command(line: str) -> list[str]:
    """A shell line as argv, its program taken from this Python's environment when there."""
    argv = shlex.split(line)
    installed = BIN / argv[0]
    return [str(installed), *argv[1:]] if installed.is_file() else argv


def clean_environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICAFENCE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


def ci_steps() -> list[str]:
    """The ``micafence`` steps of ci.yml, in order (the others only install)."""
    workflow = YAML(typ="safe").load((TUTORIAL / "ci.yml").read_text(encoding="utf-8"))
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
            if "run" in step]
    assert all(run.startswith(("micafence ", "pip install ")) for run in runs), runs
    return [run for run in runs if run.startswith("micafence ")]


@dataclass(frozen=True)
class Visit:
    """One curl line of "Try it" and the answer its comment promises."""

    who: str
    method: str
    path: str
    headers: dict[str, str]
    body: str | None
    status: int
    reason: str | None


def visits() -> list[Visit]:
    found = []
    who = expected = None
    for line in lines_of(block_with("sh", "curl ")):
        if line.startswith("#"):
            who, expected = line.lstrip("# ").rsplit(": ", 1)
            continue
        assert expected is not None and line.startswith("curl "), line
        argv = shlex.split(line)[1:]
        method, headers, body, url = "GET", {}, None, None
        while argv:
            word = argv.pop(0)
            if word == "-X":
                method = argv.pop(0)
            elif word == "-H":
                name, value = argv.pop(0).split(": ", 1)
                headers[name] = value
            elif word == "-d":
                body = argv.pop(0)
            elif word.startswith("http://127.0.0.1:8000/"):
                url = word
            else:
                assert word == "-i", word
        assert url is not None and who is not None, line
        status, _, reason = expected.partition(" ")
        found.append(Visit(who, method, url.removeprefix("http://127.0.0.1:8000"), headers,
                           body, int(status), reason or None))
        who = expected = None
    return found


# -- the server, as the page starts it ---------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    settings: dict[str, str] = {}
    argv: list[str] | None = None
    for line in lines_of(block_with("sh", "gunicorn -c")):
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            settings[name] = value
        else:
            argv = command(line)
    assert argv is not None and settings == {
        "MICAFENCE_GEOIP_DB": "../../tests/data/maxmind/GeoIP2-Country-Test.mmdb"}
    port = free_port()  # the page's bind, 127.0.0.1:8000, moved to a free port
    with serving([*argv, "--bind", f"127.0.0.1:{port}"], port=port, cwd=TUTORIAL,
                 env=clean_environment(**settings), ready_path="/healthz/live") as served:
        yield served


@pytest.mark.server
@pytest.mark.parametrize("visit", visits(), ids=lambda visit: visit.who)
def test_each_visitor_gets_the_answer_the_page_promises(server: Served, visit: Visit) -> None:
    answer = httpx.request(visit.method, server.url + visit.path, headers=visit.headers,
                           content=visit.body, timeout=10)
    assert answer.status_code == visit.status, answer.text
    assert answer.headers.get("micafence-reason") == visit.reason


def test_the_page_tries_every_kind_of_visitor() -> None:
    answers = {(v.path, v.status, v.reason) for v in visits()}
    assert {("/api/accounts", 451, "eu.account_creation"), ("/api/accounts", 201, None),
            ("/api/accounts", 451, "unknown_country.account_creation"),
            ("/api/orders", 451, "eu.no_grant"), ("/api/orders", 201, None),
            ("/api/promotions", 200, "eu.promotion")} <= answers


@pytest.mark.server
def test_promotions_are_left_out_for_the_swedish_visitor_only(server: Served) -> None:
    def promotions(path: str, visitor: str) -> object:
        return httpx.get(server.url + path, headers={"X-Forwarded-For": visitor}).json()

    assert promotions("/api/promotions", SE) == []
    assert promotions("/api/promotions", US) != []
    assert promotions("/", SE) == {"exchange": "tutorial", "promotions": []}
    assert promotions("/", US) == {"exchange": "tutorial",
                                   "promotions": promotions("/api/promotions", US)}


@pytest.mark.server
def test_the_probes_answer(server: Served) -> None:
    ready = httpx.get(server.url + "/healthz/ready")
    assert ready.status_code == 200  # degraded (the test database is stale), still serving
    assert ready.json()["policy"]["name"] == "tutorial-exchange"


@pytest.mark.server
def test_the_server_logs_json_lines_with_the_warnings_the_page_lists(server: Served) -> None:
    httpx.get(server.url + "/")
    warnings = set(re.findall(r"^- `([a-z_.]+)`:", PAGE.split("## Serving it with gunicorn")[1]
                              .split("## Try it")[0], flags=re.M))
    assert len(warnings) == 4, warnings
    # The server's output, as far as it has gone: the fixture stops it after the module.
    entries = [json.loads(line) for line in _stderr_so_far(server)]
    logged = {e["event"] for e in entries if e["logger"] == "micafence" and e["level"] == "warning"}
    assert logged == warnings
    assert {"gunicorn.error", "uvicorn.error", "micafence"} <= {e["logger"] for e in entries}


def _stderr_so_far(server: Served) -> list[str]:
    return [line for line in server.stderr_now().splitlines() if line.strip()]


# -- the CI check, on a copy of the tutorial ---------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The tutorial copied, at the same depth below a link to the tests' data, so cases.yaml's
    geoip_db (../../tests/data/...) still names MaxMind's test database."""
    copy = tmp_path / "examples" / "tutorial"
    shutil.copytree(TUTORIAL, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    return copy


@dataclass
class Run:
    failed: int | None  # the index of the step that failed, None when all passed
    output: str  # the failing step's (else the last one's) stdout and stderr


def run_ci(project: Path) -> Run:
    """ci.yml's micafence steps in order, stopping at the first that fails, as Actions does."""
    result = None
    for index, step in enumerate(ci_steps()):
        result = subprocess.run(command(step), cwd=project, env=clean_environment(),
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            return Run(index, result.stdout + result.stderr)
    assert result is not None
    return Run(None, result.stdout + result.stderr)


def line_of(path: Path, text: str) -> int:
    [line] = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return line


def test_the_ci_steps_are_the_three_checks() -> None:
    assert [step.split()[1] for step in ci_steps()] == ["check", "test", "routes"]
    assert "--strict" in ci_steps()[2] and "--junit-xml" in ci_steps()[1]


def test_the_ci_check_passes_and_reports_every_case(project: Path) -> None:
    run = run_ci(project)
    assert run.failed is None, run.output
    assert "every unsafe route method is named by a policy entry" in run.output
    report = ElementTree.parse(project / "reports" / "policy.xml").getroot()
    cases = report.findall(".//testcase")
    assert len(cases) == len(YAML(typ="safe").load((project / "cases.yaml").read_text())["cases"])
    assert not report.findall(".//failure") and not report.findall(".//error")


def test_a_policy_mistake_fails_the_first_step_at_its_line(project: Path) -> None:
    policy = project / "policy.yaml"
    line = line_of(policy, "countries: [GB]")
    policy.write_text(policy.read_text().replace("countries: [GB]", "countries: [UK]"))
    run = run_ci(project)
    assert run.failed == 0
    assert f"::error file=policy.yaml,line={line}," in run.output
    # ... and the page's console session is what a local run prints.
    [session] = blocks("console")
    typed, *printed = session.strip().splitlines()
    local = subprocess.run(command(typed.removeprefix("$ ")), cwd=project,
                           env=clean_environment(), capture_output=True, text=True, check=False)
    assert local.returncode == 1
    assert local.stdout.splitlines() == printed


def test_a_policy_that_decides_otherwise_fails_the_second_step_naming_the_case(
    project: Path,
) -> None:
    policy = project / "policy.yaml"
    policy.write_text(policy.read_text().replace("mode: enforce", "mode: shadow"))
    run = run_ci(project)
    assert run.failed == 1, run.output
    case = "a Swedish visitor cannot open an account"
    assert f"FAIL {case} (cases.yaml:{line_of(project / 'cases.yaml', case)})" in run.output
    report = ElementTree.parse(project / "reports" / "policy.xml").getroot()
    assert report.findall(".//failure")


def test_an_endpoint_the_policy_does_not_name_fails_the_third_step(project: Path) -> None:
    app = project / "app.py"
    app.write_text(app.read_text() + '\n\n@app.post("/api/staking")\n'
                   "async def stake() -> dict[str, str]:\n    return {}\n")
    run = run_ci(project)
    assert run.failed == 2, run.output
    assert re.search(r"^POST +/api/staking .*<- unsafe, unlisted", run.output, flags=re.M)

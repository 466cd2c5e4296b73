"""No silent gaps: what a set-up leaves undone is said at start, and readiness reports it.

- Without an Anonymous-IP database, the start-up log warns and readiness says
  ``anonymizer_screening: off`` (``disabled_by_policy`` when the policy says
  ``anonymizers: none`` on purpose: no warning then).
- Without a decision log, the start-up log warns.
- The memory store under more than one worker warns, in every worker: told by uvicorn's and
  gunicorn's settings, their command lines, or ``$WEB_CONCURRENCY`` (what can be told, see
  :mod:`micafence.live.server_workers`). Real servers run in subprocesses; their stderr is read.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from micafence import AuditLog, MicafenceMiddleware, load_policy_text
from micafence.errors import PolicyError
from micafence.live.server_workers import WorkerCount, worker_count
from micafence_tools.bench.ports import free_port
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, MAXMIND, ServerThread, echo_app
from tests.live import TEST_DB_EPOCH, Clock
from tests.server_process import stop_group

pytestmark = pytest.mark.server

ROOT = Path(__file__).parent.parent
ANONYMOUS_DB = MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"
BUILT = dt.datetime.fromtimestamp(TEST_DB_EPOCH, dt.UTC)
MICAFENCE = str(Path(sys.executable).with_name("micafence"))


def default_without_anonymizers() -> str:
    """The default policy with ``anonymizers: none`` (its tiers dropped)."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    start = text.index("anonymizers:\n")
    end = text.index("# -- the GeoIP database")
    return text[:start] + "anonymizers: none   # no Anonymous-IP database, on purpose\n\n" + \
        text[end:]


def events(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    return {getattr(r, "event", ""): r for r in caplog.records if r.name == "micafence"}


def start(caplog: pytest.LogCaptureFixture, **options: object) -> dict[str, logging.LogRecord]:
    """The start-up events of a middleware built with ``options``."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="micafence"):
        # A day after the test database was built: it is not stale (that warning is not ours).
        guarded = MicafenceMiddleware(echo_app(), geoip_db=COUNTRY_DB, watch=False,
                                      clock=Clock(BUILT + dt.timedelta(days=1)),
                                      **{"policy": DEFAULT_POLICY, **options})  # type: ignore[arg-type]
    assert guarded.startup_error is None
    return events(caplog)


def audit_log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit", key=secrets.token_hex(32))


# -- anonymizers ---------------------------------------------------------------------------------


def test_no_anonymous_ip_database_warns_at_start(caplog: pytest.LogCaptureFixture,
                                                 tmp_path: Path) -> None:
    seen = start(caplog, audit=audit_log(tmp_path))
    warning = seen["startup.anonymizer_screening_off"]
    assert warning.levelno == logging.WARNING
    assert "anonymizer_db" in warning.getMessage()
    assert "anonymizers: none" in warning.getMessage()  # says how to mean it


def test_an_anonymous_ip_database_or_anonymizers_none_does_not_warn(
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    assert "startup.anonymizer_screening_off" not in start(
        caplog, anonymizer_db=ANONYMOUS_DB, audit=audit_log(tmp_path / "1"))
    policy = load_policy_text(default_without_anonymizers(), "exchange.yaml")
    assert policy.anonymizers == ()
    assert "startup.anonymizer_screening_off" not in start(
        caplog, policy=policy, audit=audit_log(tmp_path / "2"))


def test_anonymizers_takes_none_and_nothing_else() -> None:
    text = default_without_anonymizers().replace("anonymizers: none ", "anonymizers: off  ")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "exchange.yaml")
    assert caught.value.key_path == "anonymizers"
    assert "anonymizers: none" in caught.value.problem


@pytest.mark.parametrize(("policy_text", "database", "screening"), [
    (None, None, "off"),
    (None, ANONYMOUS_DB, "on"),
    ("none", None, "disabled_by_policy"),
], ids=["no-database", "database", "anonymizers-none"])
def test_readiness_reports_anonymizer_screening(
    policy_text: str | None, database: Path | None, screening: str,
) -> None:
    """The real readiness endpoint, under uvicorn. Screening off is a choice of set-up, said
    in the report and the log: it takes no pod out of the load balancer."""
    policy = (load_policy_text(default_without_anonymizers(), "exchange.yaml")
              if policy_text else DEFAULT_POLICY)
    guarded = MicafenceMiddleware(echo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                  anonymizer_db=database, watch=False, health_path="/healthz",
                                  clock=Clock(BUILT + dt.timedelta(days=1)))
    with ServerThread(guarded) as server:
        response = httpx.get(server.url + "/healthz/ready", timeout=10)
    report = response.json()
    assert (response.status_code, report["status"]) == (200, "ready")
    assert report["anonymizer_screening"] == screening
    assert (report["anonymizer"] is None) == (database is None)


# -- the decision log ----------------------------------------------------------------------------


def test_no_audit_log_warns_at_start(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    warning = start(caplog, anonymizer_db=ANONYMOUS_DB)["startup.no_audit"]
    assert warning.levelno == logging.WARNING
    assert "audit=" in warning.getMessage()
    assert "startup.no_audit" not in start(caplog, anonymizer_db=ANONYMOUS_DB,
                                           audit=audit_log(tmp_path))


def test_a_complete_set_up_starts_without_a_warning(caplog: pytest.LogCaptureFixture,
                                                    tmp_path: Path) -> None:
    seen = start(caplog, anonymizer_db=ANONYMOUS_DB, audit=audit_log(tmp_path))
    assert [e for e, r in seen.items() if r.levelno >= logging.WARNING] == []


# -- the memory store under several workers ------------------------------------------------------


def test_web_concurrency_says_how_many_workers(caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    warning = start(caplog)["startup.memory_store_workers"]
    assert warning.levelno == logging.WARNING
    assert "3 workers serve this app (WEB_CONCURRENCY=3)" in warning.getMessage()
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert "startup.memory_store_workers" not in start(caplog)


def test_a_shared_store_under_several_workers_does_not_warn(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("MICAFENCE_GRANT_KEY", secrets.token_hex(32))
    seen = start(caplog, store=f"file://{tmp_path}/grants.jsonl")
    assert "startup.memory_store_workers" not in seen


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    (["/srv/bin/uvicorn", "app:app", "--workers", "4"], {}, WorkerCount(4, "uvicorn --workers")),
    (["/usr/lib/python3/site-packages/uvicorn/__main__.py", "app:app", "--workers=2"], {},
     WorkerCount(2, "uvicorn --workers")),
    (["uvicorn", "app:app", "--reload"], {"WEB_CONCURRENCY": "4"},
     WorkerCount(1, "uvicorn --reload")),
    (["gunicorn", "-w4", "app:app"], {}, WorkerCount(4, "gunicorn --workers")),
    (["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--workers 3 --bind :80"},
     WorkerCount(3, "gunicorn --workers")),
    (["gunicorn", "-w", "2", "app:app"], {"GUNICORN_CMD_ARGS": "-w 5"},
     WorkerCount(2, "gunicorn --workers")),  # the command line wins
    (["gunicorn", "app:app"], {"WEB_CONCURRENCY": "6"}, WorkerCount(6, "WEB_CONCURRENCY=6")),
    (["hypercorn", "-w", "4", "app:app"], {}, None),  # not told
    (["python", "serve.py"], {}, None),
])
def test_what_the_command_line_and_environment_tell(
    argv: list[str], environ: dict[str, str], expected: WorkerCount | None,
) -> None:
    assert worker_count(argv, environ) == expected


def environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MICAFENCE_", "STARTUP_")) and k != "WEB_CONCURRENCY"}
    return {**env, "PYTHONUNBUFFERED": "1", "STARTUP_POLICY": str(DEFAULT_POLICY), **settings}


class Output:
    """A server process's output (stdout and stderr), read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, count: int, pattern: re.Pattern[str], within: float = 30) -> str:
        """The output once ``pattern`` has matched ``count`` times (or ``within`` is up)."""
        deadline = time.monotonic() + within
        while len(pattern.findall(self.text)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.text

    def finish(self) -> str:
        self._reader.join(timeout=15)
        return self.text


@contextmanager
def server(command: list[str], env: dict[str, str], port: int,
           cwd: Path = ROOT) -> Iterator[Output]:
    """A server process answering on ``port``, with its output."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = Output(process)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz/live", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(f"no server:\n{output.finish()}")
            time.sleep(0.1)
        yield output
    finally:
        stop_group(process, timeout=15)
        output.finish()


def uvicorn(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", "tests.startup_apps:starlette_app",
            "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers", *extra]


def gunicorn(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-k", "micafence.workers.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", *extra, "tests.startup_apps:starlette_app()"]


MEMORY_WARNING = re.compile(r"the memory store \(memory://\) is this worker's own, and "
                            r"(\d+) workers serve this app \(([^)]*)\)")
#: What each worker logs once it has built its middleware (Starlette builds it at the lifespan).
STARTED = re.compile(r"Application startup complete")


def warned_by_two_workers(command: list[str], env: dict[str, str], port: int) -> list[str]:
    """The memory-store warnings (count, told by) of a two-worker server."""
    with server(command, env, port) as output:
        text = output.wait_for(2, STARTED)
    return MEMORY_WARNING.findall(text)


def test_uvicorn_workers_each_warn_of_the_memory_store() -> None:
    port = free_port()
    warned = warned_by_two_workers(uvicorn(port, "--workers", "2"), environment(), port)
    assert warned == [("2", "uvicorn's workers setting")] * 2


def test_uvicorn_workers_from_web_concurrency_are_told_by_uvicorn() -> None:
    port = free_port()
    warned = warned_by_two_workers(uvicorn(port), environment(WEB_CONCURRENCY="2"), port)
    assert warned == [("2", "uvicorn's workers setting")] * 2


def test_gunicorn_workers_each_warn_of_the_memory_store() -> None:
    port = free_port()
    warned = warned_by_two_workers(gunicorn(port, "--workers", "2"), environment(), port)
    assert warned == [("2", "gunicorn's workers setting")] * 2


@pytest.mark.parametrize("command", [uvicorn, gunicorn], ids=["uvicorn", "gunicorn"])
def test_one_worker_or_a_shared_store_does_not_warn(
    command: Callable[..., list[str]], tmp_path: Path,
) -> None:
    port = free_port()
    with server(command(port), environment(), port) as output:
        single = output.wait_for(1, STARTED)
    key = tmp_path / "grant.key"
    key.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    key.chmod(0o600)
    shared = environment(STARTUP_STORE=f"file://{tmp_path}/grants.jsonl",
                         MICAFENCE_GRANT_KEY_FILE=str(key))
    port = free_port()
    with server(command(port, "--workers", "2"), shared, port) as output:
        two = output.wait_for(2, STARTED)
    assert len(STARTED.findall(two)) == 2, two
    for text in (single, two):
        assert "startup.failed" not in text and "Traceback" not in text, text
        assert MEMORY_WARNING.findall(text) == [], text
    assert "no decision log" in single  # the other warnings do reach stderr


# -- the demo ------------------------------------------------------------------------------------

ANONYMIZER_WARNING = "no Anonymous-IP database (anonymizer_db=)"
AUDIT_WARNING = "no decision log (audit=)"


def test_the_demo_keeps_a_decision_log_and_says_anonymizers_are_not_screened(
    tmp_path: Path,
) -> None:
    """``micafence demo`` as the README runs it: its decision log goes to
    ./micafence-demo-audit (and verifies); it has no Anonymous-IP database, and says so."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server([MICAFENCE, "demo", "--port", str(port)], environment(), port,
                cwd=tmp_path) as output:
        ready = httpx.get(url + "/healthz/ready", timeout=10).json()
        sign_up = httpx.post(url + "/api/accounts", json={"email": "a@b.se"},
                             headers={"X-Forwarded-For": "89.160.20.112"}, timeout=10)
    text = output.text
    assert ready["anonymizer_screening"] == "off"
    assert sign_up.status_code == 451
    assert ANONYMIZER_WARNING in text and AUDIT_WARNING not in text, text
    audit = tmp_path / "micafence-demo-audit"
    logged = "".join(path.read_text(encoding="utf-8") for path in audit.glob("audit.*.jsonl"))
    assert '"reason":"eu.account_creation"' in logged.replace(" ", "")
    verified = subprocess.run(
        [MICAFENCE, "audit", "verify", str(audit), "--key-file", f"{audit}.key"],
        capture_output=True, text=True, timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_demo_without_a_log_says_so_and_screens_with_a_database(tmp_path: Path) -> None:
    port = free_port()
    command = [MICAFENCE, "demo", "--port", str(port), "--no-audit",
               "--anonymizer-db", str(ANONYMOUS_DB)]
    with server(command, environment(), port, cwd=tmp_path) as output:
        ready = httpx.get(f"http://127.0.0.1:{port}/healthz/ready", timeout=10).json()
    assert ready["anonymizer_screening"] == "on"
    assert AUDIT_WARNING in output.text and ANONYMIZER_WARNING not in output.text, output.text
    assert not (tmp_path / "micafence-demo-audit").exists()


# -- the docs' production examples ---------------------------------------------------------------


def python_blocks(page: str, section: str) -> list[str]:
    """The Python code blocks of one ``## section`` of a docs page (or of its introduction,
    under the ``# title``)."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    start = 0 if text.startswith(f"# {section}\n") else text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    part = text[start:end if end >= 0 else None]
    return [block.split("```", 1)[0] for block in part.split("```python")[1:]]


@pytest.mark.parametrize(("page", "section", "count"), [
    ("deployment.md", "Mounting", 3), ("operations.md", "Live operations", 1),
])
def test_the_docs_production_examples_keep_a_decision_log_and_screen_anonymizers(
    page: str, section: str, count: int,
) -> None:
    blocks = [b for b in python_blocks(page, section) if "MicafenceMiddleware" in b]
    assert len(blocks) == count
    for block in blocks:
        assert 'audit=AuditLog("/var/log/micafence/audit")' in block, block
        assert "anonymizer_db=" in block and 'store="redis://' in block, block

"""A broken policy, database or key stops the server, whichever way micafence is mounted.

Starlette and FastAPI build their middleware inside the server's lifespan call; an exception
from the constructor there once read as "lifespan unsupported", and the server served 500s.
Each documented mounting runs here under a real uvicorn (and gunicorn with uvicorn workers),
default settings, and must exit non-zero within seconds, naming the file; with
``--lifespan off`` every request gets 503 and the error is in the log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, PolicyError, StoreError
from micafence.errors import GeoIPDatabaseError
from micafence_tools.bench.ports import free_port
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, MAXMIND, echo_app

pytestmark = pytest.mark.server

ROOT = Path(__file__).parent.parent
MOUNTINGS = ["starlette_app", "fastapi_app", "wrapped_app"]
SE = "89.160.20.112"
EXIT_WITHIN = 10.0  # seconds from spawn to exit, imports included, on a loaded 2-core machine


def broken_policy(tmp_path: Path) -> Path:
    """The default policy with a YAML syntax error (an unclosed flow sequence)."""
    path = tmp_path / "exchange.yaml"
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    assert "mode: enforce" in text
    path.write_text(text.replace("mode: enforce", "mode: [enforce", 1), encoding="utf-8")
    return path


def server_command(server: str, mounting: str, port: int, *extra: str) -> list[str]:
    """The server as the README runs it: proxy headers off (micafence reads them itself)."""
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", f"tests.startup_apps:{mounting}",
                "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers", *extra]
    return [sys.executable, "-m", "gunicorn", "-k", "micafence.workers.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", *extra, f"tests.startup_apps:{mounting}()"]


def environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICAFENCE_", "STARTUP_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


def run_to_exit(command: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """Run a server that should stop by itself: exit code, seconds taken, its output."""
    started = time.monotonic()
    # A session of its own: a server that keeps running is killed with its workers, which
    # would otherwise hold the output pipe open.
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=EXIT_WITHIN * 2)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"the server is still running:\n{output}") from None
    return process.returncode, time.monotonic() - started, output


@contextmanager
def serving(command: list[str], env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A server that keeps running: its URL, and its output once stopped (in the list)."""
    port = int(command[command.index("--port") + 1])
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise AssertionError(f"no server:\n{process.communicate()[0]}") from None
                time.sleep(0.05)
        yield url, output
    finally:
        process.terminate()
        try:
            output.append(process.communicate(timeout=10)[0])
        except subprocess.TimeoutExpired:
            process.kill()
            output.append(process.communicate()[0])


@pytest.mark.parametrize("mounting", MOUNTINGS)
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_broken_policy_stops_the_server(tmp_path: Path, server: str, mounting: str) -> None:
    policy = broken_policy(tmp_path)
    code, seconds, output = run_to_exit(server_command(server, mounting, free_port()),
                                        environment(STARTUP_POLICY=str(policy)))
    assert code == 3, output  # uvicorn's STARTUP_FAILURE, gunicorn's WORKER_BOOT_ERROR
    assert seconds < EXIT_WITHIN, output
    assert f"micafence cannot start: {policy}:" in output
    assert "YAML error" in output
    assert "appears unsupported" not in output
    assert "Application startup complete" not in output


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"STARTUP_GEOIP_DB": str(MAXMIND / "no-such.mmdb")}, str(MAXMIND / "no-such.mmdb")),
        ({"STARTUP_GEOIP_DB": str(MAXMIND / "bad-data" / "cyclic-data-structure.mmdb")},
         "cyclic-data-structure.mmdb: not a valid MaxMind database"),
        ({"STARTUP_STORE": "redis://127.0.0.1:1/0"}, "a Redis grant store needs the grant key"),
        ({"STARTUP_STORE": "redis://127.0.0.1:1/0", "MICAFENCE_GRANT_KEY_FILE": "/no/such.key"},
         "/no/such.key"),
    ],
    ids=["missing-database", "corrupt-database", "no-grant-key", "missing-key-file"],
)
def test_a_broken_database_or_key_stops_the_server(
    settings: dict[str, str], named: str
) -> None:
    code, seconds, output = run_to_exit(
        server_command("uvicorn", "fastapi_app", free_port()),
        environment(STARTUP_POLICY=str(DEFAULT_POLICY), **settings))
    assert (code, "appears unsupported" in output) == (3, False), output
    assert seconds < EXIT_WITHIN, output
    assert "micafence cannot start: " in output
    assert named in output


@pytest.mark.parametrize("mounting", MOUNTINGS)
def test_without_a_lifespan_every_request_gets_503_and_the_error_is_logged(
    tmp_path: Path, mounting: str
) -> None:
    policy = broken_policy(tmp_path)
    command = server_command("uvicorn", mounting, free_port(), "--lifespan", "off")
    with serving(command, environment(STARTUP_POLICY=str(policy))) as (url, output):
        answers = [
            httpx.get(url + "/"),
            httpx.post(url + "/api/accounts", headers={"X-Forwarded-For": SE}),
            httpx.get(url + "/healthz/live"),
            httpx.get(url + "/healthz/ready"),
            httpx.get(url + "/"),
        ]
    assert [a.status_code for a in answers] == [503] * 5
    assert "did not start" in answers[0].text
    assert str(policy) not in answers[0].text  # the reason is for the log, not for visitors
    log = output[0]
    assert f"micafence cannot start: {policy}:" in log
    assert "Exception in ASGI application" not in log  # no 500 with a traceback


@pytest.mark.parametrize("mounting", MOUNTINGS)
def test_each_mounting_serves_its_probes_when_the_files_are_good(mounting: str) -> None:
    command = server_command("uvicorn", mounting, free_port())
    with serving(command, environment(STARTUP_POLICY=str(DEFAULT_POLICY))) as (url, _):
        home = httpx.get(url + "/")
        signup = httpx.post(url + "/api/accounts", headers={"X-Forwarded-For": SE})
        live = httpx.get(url + "/healthz/live")
        ready = httpx.get(url + "/healthz/ready")
    assert (home.status_code, home.text) == (200, "home")
    assert signup.status_code == 451
    assert (live.status_code, live.json()) == (200, {"status": "live"})
    assert ready.status_code == 200
    assert ready.json()["policy"]["source"] == str(DEFAULT_POLICY)


# -- the failed middleware itself (in process) ------------------------------------------------


async def _lifespan_answer(app: Any) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent[0]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"policy": "/no/such/policy.yaml"}, PolicyError),
        ({"geoip_db": MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb"}, GeoIPDatabaseError),
        ({"store": "nosql://somewhere"}, StoreError),
    ],
)
async def test_a_load_error_is_kept_and_answered(options: dict[str, Any], error: type) -> None:
    app = MicafenceMiddleware(echo_app(), **{"policy": DEFAULT_POLICY, "geoip_db": COUNTRY_DB,
                                             **options})
    assert isinstance(app.startup_error, error)
    assert isinstance(app, MicafenceMiddleware)
    assert await _lifespan_answer(app) == {
        "type": "lifespan.startup.failed",
        "message": f"micafence cannot start: {app.startup_error}"}
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as http:
        response = await http.get("/", headers={"X-Forwarded-For": "2a02:d000::1"})
    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-store"


async def test_a_middleware_that_started_reports_no_error() -> None:
    app = MicafenceMiddleware(echo_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB, watch=False)
    assert app.startup_error is None
    assert type(app) is MicafenceMiddleware


def test_an_app_without_lifespan_still_gets_its_log_closed_on_sigterm(tmp_path: Path) -> None:
    # Django's ASGI handler raises on the lifespan scope: uvicorn took that for "lifespan
    # unsupported", micafence's hooks never ran, and SIGTERM left the decision log unclosed
    # (`audit verify`: "ends without a close record"), records still queued lost.
    from micafence.audit.keys import AuditKey
    from micafence.audit.reader import load_log

    key = "test-audit-key-0123456789abcdef"
    audit_dir = tmp_path / "audit"
    env = environment(STARTUP_POLICY=str(DEFAULT_POLICY), STARTUP_AUDIT_DIR=str(audit_dir),
                      MICAFENCE_AUDIT_KEY=key)
    command = server_command("uvicorn", "http_only_app", free_port())
    with serving(command, env) as (url, output):
        statuses = [httpx.post(url + "/api/accounts", headers={"X-Forwarded-For": SE},
                               timeout=5).status_code for _ in range(30)]
    assert statuses == [451] * 30
    assert "appears unsupported" not in output[0], output[0]
    assert "Application shutdown complete" in output[0], output[0]
    loaded = load_log([str(audit_dir)], AuditKey.from_text(key), require_closed=True)
    assert loaded.ok, loaded.problems
    assert sum(1 for r in loaded.records if r.get("route_class") == "account_creation") == 30

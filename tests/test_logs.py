"""Structured logs: one JSON object a line, with the event name and every extra field."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import httpx
import pytest

from micafence.logs import JsonFormatter, log_config_file, log_event, logging_config
from micafence_tools.bench.ports import free_port
from tests.conftest import DEFAULT_POLICY
from tests.server_process import serving

ROOT = Path(__file__).resolve().parent.parent
SE = "89.160.20.112"


@pytest.mark.parametrize(("emit", "expected"), [
    (lambda: log_event(logging.ERROR, "audit.sink_failed", "sink failing", sink="/var/log/m",
                       backlog=3),
     {"level": "error", "event": "audit.sink_failed", "message": "sink failing",
      "sink": "/var/log/m", "backlog": 3}),
    (lambda: logging.getLogger("micafence").warning(
        "policy reloaded", extra={"event": "reload.loaded", "kind": "policy", "path": "/p.yaml"}),
     {"level": "warning", "event": "reload.loaded", "kind": "policy", "path": "/p.yaml"}),
    (lambda: logging.getLogger("micafence.audit.log").info("plain %s", "message"),
     {"level": "info", "event": None, "message": "plain message", "logger": "micafence.audit.log"}),
])
def test_records_render_as_one_json_line(emit: object, expected: dict[str, object]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("micafence")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.DEBUG
    try:
        emit()  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert {key: entry[key] for key in expected} == expected
    assert entry["time"].endswith("+00:00")


def test_the_shipped_file_is_the_function_s_config() -> None:
    shipped = json.loads(log_config_file().read_text(encoding="utf-8"))
    assert shipped == logging_config()


def test_uvicorn_s_colour_copy_of_the_message_is_left_out() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started server process [%d]",
                               (7,), None)
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "Started server process [7]"
    assert "color_message" not in entry


def server_command(server: str, port: int) -> list[str]:
    """The documented mounting under the server, with the shipped log configuration."""
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", "tests.startup_apps:fastapi_app",
                "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
                "--log-config", str(log_config_file())]
    return [sys.executable, "-m", "gunicorn", "-k", "micafence.workers.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", "--log-config-json", str(log_config_file()),
            "tests.startup_apps:fastapi_app()"]


@pytest.mark.server
@pytest.mark.parametrize(("server", "loggers"), [
    ("uvicorn", {"uvicorn.error", "uvicorn.access", "micafence"}),
    ("gunicorn", {"gunicorn.error", "uvicorn.error", "uvicorn.access", "micafence"}),
])
def test_a_real_server_logs_json_lines_only(server: str, loggers: set[str]) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICAFENCE_", "STARTUP_"))}
    env.update(STARTUP_POLICY=str(DEFAULT_POLICY), PYTHONUNBUFFERED="1")
    with serving(server_command(server, port), port=port, cwd=ROOT, env=env) as served:
        blocked = httpx.post(served.url + "/api/accounts", headers={"X-Forwarded-For": SE})
    assert blocked.status_code == 451
    assert served.lines, served.stdout
    entries = []
    for line in served.lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{served.stderr}")
    assert all("color_message" not in entry for entry in entries)
    assert loggers <= {entry["logger"] for entry in entries}
    access = [e["message"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any('"POST /api/accounts HTTP/1.1" 451' in message for message in access), access
    events = {entry["event"] for entry in entries if entry["logger"] == "micafence"}
    assert "startup.no_audit" in events  # micafence's own events, with their names
    assert any(entry["message"].startswith("Application startup complete")
               for entry in entries)

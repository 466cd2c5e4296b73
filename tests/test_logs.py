"""Structured logs: one JSON object a line, with the event name and every extra field."""

from __future__ import annotations

import io
import json
import logging

import pytest

from micafence.logs import JsonFormatter, log_event


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

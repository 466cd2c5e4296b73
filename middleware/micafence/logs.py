"""Structured logs: one JSON object per line for the events ops and compliance act on.

Events are logged on the ``micafence`` logger with ``extra={"event": ..., "fields": {...}}``
through :func:`log_event`; :class:`JsonFormatter` renders any record (those without an event
too) as JSON, so a log shipper needs no parsing rules::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("micafence").addHandler(handler)

The same lines for micafence's and the server's loggers, without touching code:
:func:`logging_config` is a :func:`logging.config.dictConfig` for micafence, uvicorn and
gunicorn (``logconfig_dict = logging_config()`` in ``gunicorn.conf.py``), and
:func:`log_config_file` the same as a JSON file for ``uvicorn --log-config FILE`` (or
``gunicorn --log-config-json FILE``).

Event names in use (``event`` key): ``audit.sink_failed``, ``audit.sink_recovered``,
``audit.refused``, ``audit.aggregating``, ``audit.lost_on_shutdown``, plus those of the other
modules (``policy.reloaded``, ``policy.refused``, ``store.outage``, ``store.recovered``,
``breakglass.changed``) when they log through :func:`log_event`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger("micafence")
# Attributes every LogRecord has; anything else on a record came in through ``extra``.
# uvicorn's records carry ``color_message`` too, the message with terminal colour codes: a
# second copy of ``message`` no log shipper wants.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message"}
#: The loggers :func:`logging_config` gives the JSON handler: micafence's and the servers'.
SERVER_LOGGERS = ("micafence", "uvicorn", "uvicorn.access", "gunicorn.error", "gunicorn.access")
_CONFIG_FILE = "log-config.json"


def log_event(level: int, event: str, message: str, **fields: Any) -> None:
    """Log ``message`` with a stable ``event`` name and machine-readable ``fields``."""
    logger.log(level, message, extra={"event": event, "fields": fields})


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "event", "message", ...extra fields}`` on one line.

    Every record gives one JSON object (RFC 8259) on one line, whatever it carries: a message
    whose arguments do not fit its format is written unformatted, with why; a value JSON cannot
    hold (``NaN``, a mapping with other keys than text, a cycle) is written as its text; a
    surrogate (a file name's undecodable byte) as its escape, ``\\udcff``, in the text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[Any, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None),
            "message": _message(record),
        }
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        fields = extras.pop("fields", None)
        if isinstance(fields, dict):
            extras.update(fields)
        entry.update({k: v for k, v in extras.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:  # logger.info(..., stack_info=True): where it was logged from
            entry["stack"] = self.formatStack(record.stack_info)
        return _SURROGATE.sub(lambda found: f"\\\\u{ord(found.group()):04x}", _json(entry))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # a logging call whose arguments do not fit its format
        return (f"{_text(record.msg)} (not formatted: {type(exc).__name__}: {_text(exc)}; "
                f"arguments: {_text(record.args)})")


def _text(value: object) -> str:
    """``str(value)``, or its type and address when its ``__str__`` fails."""
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


def _json(entry: dict[Any, Any]) -> str:
    try:
        return json.dumps(entry, default=_text, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # each value JSON cannot hold as its text
        return json.dumps({_text(key): _fits(value) for key, value in entry.items()},
                          ensure_ascii=False)


def _fits(value: object) -> object:
    try:
        json.dumps(value, default=_text, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _text(value)
    return value


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` writing one JSON line per record to stderr for
    micafence's, uvicorn's and gunicorn's loggers (``level`` and up) and any other library's
    warnings (the root logger). Under gunicorn, ``uvicorn_worker`` hands gunicorn's handlers to
    uvicorn's loggers, so those lines are JSON too."""
    own = {"level": level, "handlers": ["json"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json",
                              "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            **{name: dict(own) for name in SERVER_LOGGERS},
            "uvicorn.error": {"level": level},  # through "uvicorn"'s handler
        },
    }


def log_config_file() -> Path:
    """:func:`logging_config` as a file, for ``uvicorn --log-config`` (shipped in the package;
    a test keeps it equal to the function's)."""
    return Path(str(resources.files("micafence") / "data" / _CONFIG_FILE))

"""Structured logs: one JSON object per line for the events ops and compliance act on.

Events are logged on the ``micafence`` logger with ``extra={"event": ..., "fields": {...}}``
through :func:`log_event`; :class:`JsonFormatter` renders any record (those without an event
too) as JSON, so a log shipper needs no parsing rules::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("micafence").addHandler(handler)

Event names in use (``event`` key): ``audit.sink_failed``, ``audit.sink_recovered``,
``audit.refused``, ``audit.aggregating``, ``audit.lost_on_shutdown``, plus those of the other
modules (``policy.reloaded``, ``policy.refused``, ``store.outage``, ``store.recovered``,
``breakglass.changed``) when they log through :func:`log_event`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

logger = logging.getLogger("micafence")
# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def log_event(level: int, event: str, message: str, **fields: Any) -> None:
    """Log ``message`` with a stable ``event`` name and machine-readable ``fields``."""
    logger.log(level, message, extra={"event": event, "fields": fields})


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "event", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None),
            "message": record.getMessage(),
        }
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        fields = extras.pop("fields", None)
        if isinstance(fields, dict):
            extras.update(fields)
        entry.update({k: v for k, v in extras.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)

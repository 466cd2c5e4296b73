"""The demo's decision log and metrics: a local audit directory and ``/metrics``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from micafence.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey
from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from micafence.metrics import Metrics


def demo_key(audit_dir: Path) -> AuditKey:
    """``$MICAFENCE_AUDIT_KEY[_FILE]``, else a key file next to the directory (made once).

    A key beside the log is for the demo only: in production keep it where whoever can
    write the log cannot read it.
    """
    if os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV):
        return AuditKey.from_env()
    path = audit_dir.with_name(audit_dir.name + ".key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return AuditKey.from_file(path)


def demo_observers(
    audit_dir: str | os.PathLike[str] | None,
) -> tuple[AuditLog | None, Metrics]:
    """An audit log into ``audit_dir`` (None: no log) and metrics (the middleware serves them
    at ``/metrics``)."""
    metrics = Metrics()
    if audit_dir is None:
        return None, metrics
    directory = Path(audit_dir).absolute()
    return AuditLog(FileSink(directory), key=demo_key(directory)), metrics

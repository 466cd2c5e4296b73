"""How many worker processes serve this app, as far as one of them can tell.

The middleware asks at start-up (:func:`worker_count`) to warn when the memory store, which is
each worker's own, runs under more than one worker: each would hold different grants,
onboarding tokens and solicitation evidence. What can be told, first answer wins:

1. **gunicorn with micafence's worker class** (``-k micafence.workers.UvicornWorker``): the
   worker count gunicorn settled on (``-w``, ``--workers``, ``$WEB_CONCURRENCY``, a config
   file, ``$GUNICORN_CMD_ARGS``), recorded by the worker before it loads the app. Exact.
2. **uvicorn with several workers** (``--workers N``, ``uvicorn.run(..., workers=N)`` or
   ``$WEB_CONCURRENCY``, which uvicorn reads): each worker is a process uvicorn spawned with
   its configuration, read from there (``--reload`` runs one). Exact, while uvicorn spawns its
   workers this way (``multiprocessing`` with the ``config`` argument; 0.3x to 0.55 do).
3. **the command line** of ``uvicorn`` or ``gunicorn`` (a forked or spawned worker keeps its
   parent's): ``--workers N`` / ``-w N``, and ``$GUNICORN_CMD_ARGS`` for gunicorn. A gunicorn
   config file is not read.
4. **``$WEB_CONCURRENCY``**: the count uvicorn and gunicorn take when none is given, and the
   one platforms such as Heroku set.

Not told: other servers' own flags (hypercorn ``-w``, granian, daphne), a gunicorn config file
with another worker class, a ``--preload`` app built before gunicorn's workers exist (only 3
and 4 then), and several servers or pods side by side: those return what 3 and 4 say, or
``None``.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True, slots=True)
class WorkerCount:
    """A number of worker processes and what said so."""

    count: int
    source: str  # for people: "uvicorn --workers", "WEB_CONCURRENCY=4", ...


_declared: WorkerCount | None = None


def declare_workers(count: int, source: str) -> None:
    """Record the worker count the server settled on (called by micafence's gunicorn worker
    class before the app is loaded)."""
    global _declared
    _declared = WorkerCount(count, source)


def worker_count(
    argv: Sequence[str] | None = None, environ: dict[str, str] | None = None,
) -> WorkerCount | None:
    """How many workers serve this app, or ``None`` when nothing says (see the module)."""
    if _declared is not None:
        return _declared
    argv = sys.argv if argv is None else argv
    environ = dict(os.environ) if environ is None else environ
    return _uvicorn_spawned() or _command_line(argv, environ) or _web_concurrency(environ)


def _uvicorn_spawned() -> WorkerCount | None:
    """In a worker uvicorn spawned (``--workers`` > 1, or ``--reload``): its configuration."""
    process = multiprocessing.current_process()
    kwargs = getattr(process, "_kwargs", None)  # what the process was started with
    config = kwargs.get("config") if isinstance(kwargs, dict) else None
    if config is None or type(config).__module__ != "uvicorn.config":
        return None
    if getattr(config, "reload", False):
        return WorkerCount(1, "uvicorn --reload")
    workers = getattr(config, "workers", None)
    return WorkerCount(workers, "uvicorn's workers setting") if isinstance(workers, int) else None


def _program(argv: Sequence[str]) -> str | None:
    if not argv:
        return None
    path = PurePath(argv[0])
    name = path.parent.name if path.name == "__main__.py" else path.name  # python -m uvicorn
    return name if name in ("uvicorn", "gunicorn") else None


def _command_line(argv: Sequence[str], environ: dict[str, str]) -> WorkerCount | None:
    program = _program(argv)
    if program is None:
        return None
    args = list(argv[1:])
    flags: tuple[str, ...] = ("--workers",)
    if program == "gunicorn":
        flags = ("-w", "--workers")
        # gunicorn reads $GUNICORN_CMD_ARGS before the command line, which wins.
        args = shlex.split(environ.get("GUNICORN_CMD_ARGS", "")) + args
    elif "--reload" in args:
        return WorkerCount(1, "uvicorn --reload")
    found: int | None = None
    for index, arg in enumerate(args):
        value: str | None = None
        for flag in flags:
            if arg == flag and index + 1 < len(args):
                value = args[index + 1]
            elif arg.startswith(flag + "="):
                value = arg[len(flag) + 1:]
            elif flag == "-w" and arg.startswith("-w") and len(arg) > 2:
                value = arg[2:]
        if value is not None and value.strip().isdigit():
            found = int(value)
    if found is None:
        return None
    return WorkerCount(found, f"{program} --workers")


def _web_concurrency(environ: dict[str, str]) -> WorkerCount | None:
    value = environ.get("WEB_CONCURRENCY", "").strip()
    if not value.isdigit():
        return None
    return WorkerCount(int(value), f"WEB_CONCURRENCY={value}")

"""The demo exchange served by a real server process configured as ops might (issue 15.5).

:func:`exchange` is an app factory for ``uvicorn --factory tests.rewrite_apps:exchange`` and
``gunicorn 'tests.rewrite_apps:exchange()'``: the demo exchange behind micafence, its policy
read from ``$REWRITE_POLICY`` (watched, so a test can hot-reload it), readiness at
``/healthz``. :class:`Served` runs such a command on a free 127.0.0.1 port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from micafence import MicafenceMiddleware
from micafence_tools.bench.ports import free_port
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB

REPO = Path(__file__).resolve().parents[1]
POLICY_ENV = "REWRITE_POLICY"


def exchange() -> Any:
    """The demo exchange behind micafence, with its readiness endpoint at ``/healthz``."""
    guarded = MicafenceMiddleware(build_demo_app(), policy=os.environ[POLICY_ENV],
                                  geoip_db=COUNTRY_DB, reload_interval=0.1)
    health = guarded.health_app()

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await health(scope, receive, send)
            return
        await guarded(scope, receive, send)

    return app


def uvicorn_command(port: int, *options: str) -> list[str]:
    """``uvicorn --factory tests.rewrite_apps:exchange`` on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "uvicorn", "--factory", "tests.rewrite_apps:exchange",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *options]


def gunicorn_command(port: int, worker_class: str, *options: str) -> list[str]:
    """One gunicorn worker of ``worker_class`` serving :func:`exchange` on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "gunicorn", "-k", worker_class, "--workers", "1",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning", *options,
            "tests.rewrite_apps:exchange()"]


class Served:
    """``command(port)`` serving on a free port with ``$REWRITE_POLICY`` = ``policy``; stopped
    with SIGTERM by :meth:`stop`, which returns the server's stderr."""

    def __init__(self, command: Callable[[int], list[str]], policy: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            command(self.port), cwd=REPO, env={**os.environ, POLICY_ENV: str(policy)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._stderr: str | None = None

    def __enter__(self) -> Served:
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, self.stop()
            assert time.monotonic() < deadline, "the server did not start within 20 s"
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> str:
        """SIGTERM, wait for the graceful shutdown; the server's stderr."""
        if self._stderr is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                _, stderr = self.process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _, stderr = self.process.communicate(timeout=10)
            self._stderr = stderr.decode(errors="replace")
        return self._stderr

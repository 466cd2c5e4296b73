"""App factories for the fault and multi-node tests, served by a real ``uvicorn --factory``
subprocess (``tests.fault_apps:audited`` or ``tests.fault_apps:shared_store``).

Configured by environment, since uvicorn calls a factory without arguments (once per worker):
``FAULT_AUDIT_DIR`` (a small audit queue writing there), ``FAULT_STORE`` (a store URL) and the
usual ``MICAFENCE_AUDIT_KEY`` / ``MICAFENCE_GRANT_KEY``. Every answer names the worker process
in ``x-worker-pid``, so a test can see that each worker answered.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from micafence import MicafenceMiddleware
from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from micafence.grants.signing import GrantKey
from micafence_tools.bench.ports import free_port
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

ASGIApp = Any


def _with_pid(app: ASGIApp) -> ASGIApp:
    pid = str(os.getpid()).encode()

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_with_pid(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-worker-pid", pid)]
            await send(message)

        await app(scope, receive, send_with_pid if scope["type"] == "http" else send)

    return wrapper


def audited() -> ASGIApp:
    """The demo exchange with a decision log whose queue fills fast (capacity 60)."""
    log = AuditLog(FileSink(os.environ["FAULT_AUDIT_DIR"]), capacity=60, flush_interval=0.05)
    return _with_pid(MicafenceMiddleware(build_demo_app(), policy=DEFAULT_POLICY,
                                         geoip_db=COUNTRY_DB, audit=log))


def shared_store() -> ASGIApp:
    """The demo exchange on the shared store ``$FAULT_STORE`` (grant key from the environment)."""
    return _with_pid(MicafenceMiddleware(build_demo_app(), policy=DEFAULT_POLICY,
                                         geoip_db=COUNTRY_DB, store=os.environ["FAULT_STORE"],
                                         grant_key=GrantKey.from_env()))


def flood_target() -> ASGIApp:
    """The demo exchange on the store ``$FAULT_STORE`` (default ``memory://``), with its
    Prometheus metrics at ``/metrics`` (served beside micafence, not through it)."""
    from micafence.metrics import Metrics

    metrics = Metrics()
    guarded = MicafenceMiddleware(build_demo_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                                  store=os.environ.get("FAULT_STORE", "memory://"),
                                  metrics=metrics)
    exposition = metrics.asgi_app()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await exposition(scope, receive, send)
        else:
            await guarded(scope, receive, send)

    return _with_pid(app)


class Uvicorn:
    """``uvicorn --factory tests.fault_apps:<factory>`` as a subprocess on a free port."""

    def __init__(self, factory: str, env: dict[str, str], workers: int = 1,
                 preexec: Any = None) -> None:
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", f"tests.fault_apps:{factory}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
             "--no-proxy-headers", "--log-level", "warning"],
            cwd=Path(__file__).parent.parent, env={**os.environ, **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, workers: int = 1, within: float = 20) -> None:
        """Until ``workers`` distinct worker processes have answered."""
        import time

        import httpx

        seen: set[str] = set()
        deadline = time.monotonic() + within
        while len(seen) < workers:
            assert self.process.poll() is None, self.stop()
            assert time.monotonic() < deadline, f"only workers {seen} answered"
            try:  # a new connection per request: the kernel hands it to either worker
                seen.add(httpx.get(self.url + "/", timeout=1).headers["x-worker-pid"])
            except httpx.TransportError:
                time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, wait for the graceful shutdown; uvicorn's stderr."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate(timeout=10)
        return stderr.decode(errors="replace")

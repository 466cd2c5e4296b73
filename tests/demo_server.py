"""The real ``micafence demo`` command, started on a free port for a test and stopped after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from micafence_tools.bench.ports import free_port

MICAFENCE = str(Path(sys.executable).with_name("micafence"))


@contextmanager
def running_demo(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``micafence demo ARGS`` on 127.0.0.1 and a free port: its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [MICAFENCE, "demo", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else ""
                    raise RuntimeError(f"micafence demo did not start:\n{output}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()

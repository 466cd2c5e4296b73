"""A real server (uvicorn, gunicorn) in a process of its own, for the tests that need its
output: started on a free 127.0.0.1 port, stopped with SIGTERM, its stdout and stderr kept.

Output goes to files rather than pipes, so a chatty server never blocks on a full pipe (and
what it wrote so far can be read while it runs); the server runs in a session of its own, so
stopping it stops its workers too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

START_WITHIN = 30.0  # seconds, imports and workers included, on a loaded 2-core machine


@dataclass
class Served:
    """The running server's URL; its output once it has stopped."""

    url: str
    stderr_file: Path
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)  # stderr's lines, once stopped

    def stderr_now(self) -> str:
        """What the server has written to stderr so far."""
        return self.stderr_file.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(command: list[str], *, port: int, cwd: Path, env: dict[str, str],
            ready_path: str = "/") -> Iterator[Served]:
    """Run ``command`` (which listens on ``port``) until ``ready_path`` answers; stop it on
    leaving, then fill in its output."""
    with tempfile.TemporaryDirectory() as directory:
        out_file, err_file = Path(directory, "stdout"), Path(directory, "stderr")
        served = Served(f"http://127.0.0.1:{port}", err_file)
        with out_file.open("w") as out, err_file.open("w") as err:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err,
                                       text=True, start_new_session=True)

        def stop() -> None:
            if process.poll() is None:
                stop_group(process, timeout=20)
            served.returncode = process.returncode
            served.stdout = out_file.read_text(encoding="utf-8", errors="replace")
            served.stderr = served.stderr_now()
            served.lines = served.stderr.splitlines()

        try:
            deadline = time.monotonic() + START_WITHIN
            while True:
                try:
                    httpx.get(served.url + ready_path, timeout=2)
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        stop()
                        raise AssertionError(f"no server: {command}\n{served.stdout}"
                                             f"{served.stderr}") from None
                    time.sleep(0.1)
            yield served
        finally:
            stop()


def stop_group(process: subprocess.Popen[str], timeout: float) -> None:
    """Stop a server started in its own session: SIGTERM to its group, SIGKILL if it has not
    ended within ``timeout`` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

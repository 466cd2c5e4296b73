"""A private, throw-away ``redis-server`` on a free 127.0.0.1 port: never the machine's own Redis.

The benchmark's grant check runs on one, and so do the tests (``tests/redis_server.py``). It keeps
nothing on disk (``--save ''``, ``--appendonly no``, its files in ``directory``) and is killed by
:meth:`RedisServer.stop`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from micafence.errors import MicafenceError
from micafence_tools.bench.ports import free_port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a free (or the given) 127.0.0.1 port, its files in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise MicafenceError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()  # a given port: restart a stopped server there
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MicafenceError(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

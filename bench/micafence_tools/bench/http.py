"""HTTP benchmark: real uvicorn servers on 127.0.0.1, loaded by ``wrk`` in paired runs.

Throughput on a 2-core machine drifts by ±10% between separate runs, so the bare app and
micafence (and the naive peer and the send-only floor) run side by side as servers and take
turns in short ``wrk`` runs; each figure is the median over rounds and ratios are taken
within a round.
``wrk`` rotates ``X-Forwarded-For`` through a Lua script so every server sees many visitors.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from micafence.errors import MicafenceError
from micafence_tools.bench.ports import free_port
from micafence_tools.bench.progress import ProgressReport, quiet

_FACTORIES = {
    "bare": "micafence_tools.bench.apps:bare_app",
    "micafence": "micafence_tools.bench.apps:micafence_app",
    "naive": "micafence_tools.bench.apps:naive_app",
    "floor": "micafence_tools.bench.apps:floor_app",
}

# Requests are (method, path, body, forwarded-for) rows; wrk cycles through them.
_LUA_ROWS = """
local rows = {%s}
local i = 0
request = function()
  i = i %% #rows + 1
  local r = rows[i]
  local headers = {["X-Forwarded-For"] = r[4]}
  if r[3] ~= "" then headers["Content-Type"] = "application/json" end
  return wrk.format(r[1], r[2], headers, r[3] ~= "" and r[3] or nil)
end
"""

# Every request from a fresh IPv6 address: no cache can help.
_LUA_ROTATING_V6 = """
math.randomseed(7)
request = function()
  local ip = string.format("2a00:%x:%x:%x:%x:%x:%x:%x", math.random(0, 65535),
    math.random(0, 65535), math.random(0, 65535), math.random(0, 65535),
    math.random(0, 65535), math.random(0, 65535), math.random(0, 65535))
  return wrk.format("GET", "/healthz", {["X-Forwarded-For"] = ip})
end
"""


@dataclass(frozen=True, slots=True)
class Row:
    method: str
    path: str
    body: str
    ip: str


@dataclass(frozen=True, slots=True)
class Throughput:
    scenario: str
    rps: dict[str, float]  # median requests/s per app
    ratio_to_bare: float  # median over rounds of micafence / bare
    ratio_to_naive: float | None
    floor_ratio: float | None  # the send-only floor / bare: what any such middleware scores
    gap_to_floor: float | None  # median over rounds of (floor - micafence) / bare


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rows_script(rows: Sequence[Row]) -> str:
    body = ",".join(
        "{" + ",".join(_lua_string(v) for v in (r.method, r.path, r.body, r.ip)) + "}"
        for r in rows
    )
    return _LUA_ROWS % body


def rotating_v6_script() -> str:
    return _LUA_ROTATING_V6


@contextmanager
def servers(names: Sequence[str], env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Start one uvicorn server per app name; yields ``{name: base URL}``."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in names:
            port = free_port()
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", _FACTORIES[name],
                 "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
                 "--no-access-log", "--log-level", "warning"],
                env={**os.environ, **env}, stdout=subprocess.DEVNULL,
            ))
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            _wait_ready(url, name)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(url: str, name: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise MicafenceError(f"benchmark server {name!r} did not start on {url}")


def _wrk(url: str, script: str, seconds: int, connections: int) -> float:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise MicafenceError("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        run = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", path, url],
            capture_output=True, text=True, timeout=seconds + 30,
        )
    finally:
        os.unlink(path)
    if run.returncode != 0:
        raise MicafenceError(f"wrk failed ({run.returncode}): {run.stderr or run.stdout}")
    out = run.stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise MicafenceError(f"could not read wrk's output:\n{out}")
    return float(match.group(1))


def paired_throughput(
    scenario: str, urls: dict[str, str], script: str, rounds: int, seconds: int,
    connections: int = 32, progress: ProgressReport = quiet,
) -> Throughput:
    """Alternate short wrk runs across the servers; ratios are taken within each round."""
    runs: dict[str, list[float]] = {name: [] for name in urls}
    for number in range(rounds):
        progress("HTTP", f"{scenario}, round {number + 1}/{rounds}: {', '.join(urls)} under wrk "
                 f"for {seconds} s each")
        for name, url in urls.items():
            runs[name].append(_wrk(url, script, seconds, connections))

    def paired(top: str, bottom: str) -> float:
        return statistics.median(t / b for t, b in zip(runs[top], runs[bottom], strict=True))

    return Throughput(
        scenario,
        {name: statistics.median(values) for name, values in runs.items()},
        paired("micafence", "bare"),
        paired("micafence", "naive") if "naive" in runs else None,
        paired("floor", "bare") if "floor" in runs else None,
        statistics.median((f - m) / b for f, m, b in zip(
            runs["floor"], runs["micafence"], runs["bare"], strict=True))
        if "floor" in runs else None,
    )

"""Request floods against a real uvicorn worker: what a client varies costs it time, never the
worker memory (issue 15, item 3: the decision cache) or disk (item 4: solicitation evidence).

Requests go over raw sockets, pipelined in batches on a few connections, so 50,000 of them take
seconds; the worker's memory is its resident set (``VmRSS`` in ``/proc/<pid>/status``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault_apps import Uvicorn

pytestmark = pytest.mark.server

PROXY_TRUSTED_EU = "89.160.20.112"  # SE: the client address the trusted proxy (loopback) adds
BATCH = 50  # requests written before their answers are read, per connection
CONNECTIONS = 4


def rss_mib(pid: int) -> float:
    """The resident set of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def _answers(reader: asyncio.StreamReader, count: int) -> list[int]:
    """The statuses of ``count`` HTTP/1.1 answers read from ``reader`` (Content-Length ones)."""
    statuses = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines
                       if line.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        statuses.append(int(lines[0].split()[1]))
    return statuses


async def flood(port: int, requests: Iterator[bytes], total: int, within: float) -> list[int]:
    """Send ``total`` raw requests from ``requests`` (pipelined in batches, on a few keep-alive
    connections); every answer's status. Fails after ``within`` seconds."""
    lock = asyncio.Lock()
    sent = 0
    statuses: list[int] = []

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            while True:
                async with lock:
                    batch = [next(requests) for _ in range(min(BATCH, total - sent))]
                    sent += len(batch)
                if not batch:
                    return
                writer.write(b"".join(batch))
                await writer.drain()
                statuses.extend(await _answers(reader, len(batch)))
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(CONNECTIONS))), within)
    return statuses


def raw_get(target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: exchange.test",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def flood_requests(make: Callable[[int], bytes]) -> Iterator[bytes]:
    index = 0
    while True:
        yield make(index)
        index += 1


# -- item 3: the decision cache --------------------------------------------------------------

def rotating_left_entry(index: int) -> bytes:
    """An EU visitor behind the trusted proxy, whose own (left) X-Forwarded-For entry changes
    on every request, asking for a new 12 KB path each time."""
    spoofed = f"198.18.{index // 256 % 256}.{index % 256}, junk-{index}"
    path = f"/flood/{index:06d}/" + "a" * 12_000
    return raw_get(path, {"X-Forwarded-For": f"{spoofed}, {PROXY_TRUSTED_EU}"})


def rotating_visitors(index: int) -> bytes:
    """EU addresses (the proxy's own, right-hand entry) from a /17, 32,768 of them in turn,
    each time with a new 12 KB path: many restricted visitors, each with many request lines."""
    address = f"89.160.{index // 256 % 128}.{index % 256}"  # 89.160.0.0/17: Sweden
    path = f"/flood/{index:06d}/" + "b" * 12_000
    return raw_get(path, {"X-Forwarded-For": address})


@pytest.mark.parametrize("make", [
    pytest.param(rotating_left_entry, id="rotating-left-xff-entry"),
    pytest.param(rotating_visitors, id="rotating-eu-visitors"),
])
async def test_a_flood_of_50000_requests_grows_the_worker_by_less_than_64_mib(
    make: Callable[[int], bytes],
) -> None:
    server = Uvicorn("flood_target", {})
    try:
        server.wait_ready()
        pid = server.process.pid
        # Warm up: the first requests of any kind allocate what every later one reuses.
        warm = await flood(server.port, flood_requests(lambda i: make(10**6 + i)), 2000, 30)
        assert set(warm) == {404}  # decided, allowed (neutral browsing), answered by the app
        before = rss_mib(pid)
        started = time.monotonic()
        statuses = await flood(server.port, flood_requests(make), 50_000, 300)
        elapsed = time.monotonic() - started
        after = rss_mib(pid)
    finally:
        server.stop()
    assert len(statuses) == 50_000 and set(statuses) == {404}
    assert after - before < 64, f"RSS {before:.0f} -> {after:.0f} MiB in {elapsed:.1f} s"


# -- item 4: solicitation evidence ------------------------------------------------------------

def metric(text: str, name: str, outcome: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{outcome="{outcome}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {outcome}")


async def test_a_marker_flood_adds_at_most_the_documented_evidence(tmp_path: Path) -> None:
    """The issue's flood (``GET /?utm_<10 KB name>=1`` again and again from one EU visitor),
    then the same visitor with a new marker each time, then a new visitor each time: the
    evidence file grows by at most what the default policy's limits allow (one record per
    visitor and marker, 20 per visitor, 1000 per worker per hour; 2 KiB a record)."""
    from micafence.policy.promotions import EvidenceLimits
    from micafence.promotions.solicitation import MAX_RECORD_BYTES

    limits = EvidenceLimits()  # the default policy's
    path = tmp_path / "evidence.jsonl"
    long_name = "utm_" + "n" * 10_000
    phases: list[Callable[[int], bytes]] = [
        lambda i: raw_get(f"/?{long_name}=1", {"X-Forwarded-For": PROXY_TRUSTED_EU}),
        lambda i: raw_get(f"/?utm_{i:04d}{long_name}=1", {"X-Forwarded-For": PROXY_TRUSTED_EU}),
        lambda i: raw_get(f"/?utm_{i:04d}{long_name}=1",
                          {"X-Forwarded-For": f"2a02:cfc0:0:{i:x}::1"}),  # a /64 each (FR)
    ]
    server = Uvicorn("flood_target", {"FAULT_STORE": f"file://{path}"})
    try:
        server.wait_ready()
        started = time.time()
        statuses = [await flood(server.port, flood_requests(make), 1500, 60) for make in phases]
        ended = time.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw_get("/metrics", {"Connection": "close"}))
        exposition = (await asyncio.wait_for(reader.read(), 10)).decode()
        writer.close()
    finally:
        server.stop()
    assert all(set(phase) == {200} for phase in statuses)  # every page answered (suppressed)
    windows = int(ended // limits.window_seconds) - int(started // limits.window_seconds) + 1
    lines = path.read_bytes().splitlines(keepends=True)
    assert max(len(line) for line in lines) <= MAX_RECORD_BYTES
    assert len(lines) <= limits.per_worker * windows
    assert path.stat().st_size <= limits.per_worker * windows * MAX_RECORD_BYTES
    first_marker = f'"marker": "{long_name[:64]}=1"'.encode()
    # 1,500 arrivals of one visitor with one marker: one record (a window each).
    assert 1 <= sum(first_marker in line for line in lines) <= windows
    name = "micafence_solicitation_evidence_total"
    assert metric(exposition, name, "recorded") == len(lines)
    assert metric(exposition, name, "repeat") >= 1500 - windows
    assert metric(exposition, name, "dropped_visitor_rate") >= 1500 - limits.per_visitor * windows
    assert metric(exposition, name, "dropped_worker_cap") >= 1500 - limits.per_worker * windows

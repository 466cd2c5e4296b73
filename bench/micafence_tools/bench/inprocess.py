"""In-process benchmark: call the ASGI apps directly and time each request.

Each traffic class is a list of requests; the bare app, micafence and the naive peer take turns
in short blocks over the same requests, so drift on a shared machine hits all three alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from micafence.policy.probe import build_scope

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
_BLOCK = 250


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a traffic class."""

    ip: str
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Timing:
    p50_us: float
    p99_us: float
    count: int


@dataclass(frozen=True, slots=True)
class ClassResult:
    name: str
    bare: Timing
    micafence: Timing
    naive: Timing | None
    statuses: dict[str, frozenset[int]]  # every status each app answered in the class

    @property
    def overhead_us(self) -> float:
        return self.micafence.p50_us - self.bare.p50_us

    @property
    def ratio_to_bare(self) -> float:
        return self.micafence.p50_us / self.bare.p50_us


def _scope(request: Request) -> dict[str, Any]:
    headers = [("host", "exchange.test"), ("user-agent", "micafence-bench"), ("accept", "*/*"),
               *request.headers]
    if request.body:
        headers.append(("content-type", "application/json"))
        headers.append(("content-length", str(len(request.body))))
    return build_scope(request.ip, request.method, request.path, headers)


async def _call(app: ASGIApp, request: Request, template: dict[str, Any] | None = None) -> int:
    # A fresh shallow copy per call: middleware writes to the scope ("state", headers).
    scope = dict(template) if template is not None else _scope(request)
    scope["state"] = {}
    status = 0
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if sent_body:
            await asyncio.sleep(3600)  # a disconnect never comes in a benchmark
        sent_body = True
        return {"type": "http.request", "body": request.body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _time_block(
    app: ASGIApp, requests: Sequence[tuple[Request, dict[str, Any]]], out: list[int]
) -> None:
    clock = time.perf_counter_ns
    for request, template in requests:
        start = clock()
        await _call(app, request, template)
        out.append(clock() - start)


def _timing(samples: list[int]) -> Timing:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Timing(statistics.median(ordered) / 1000, p99 / 1000, len(ordered))


async def measure(
    name: str,
    requests: Sequence[Request],
    bare: ASGIApp,
    micafence: ASGIApp,
    naive: ASGIApp | None,
) -> ClassResult:
    """Time one traffic class on the three apps, interleaved in blocks, caches warm."""
    apps: dict[str, ASGIApp] = {"bare": bare, "micafence": micafence}
    if naive is not None:
        apps["naive"] = naive
    statuses: dict[str, frozenset[int]] = {}
    for label, app in apps.items():  # warm caches, as a server's are after its first minutes
        statuses[label] = frozenset([await _call(app, request)
                                     for request in dict.fromkeys(requests)])
    samples: dict[str, list[int]] = {label: [] for label in apps}
    prepared = [(request, _scope(request)) for request in requests]
    for start in range(0, len(prepared), _BLOCK):
        block = prepared[start:start + _BLOCK]
        for label, app in apps.items():
            await _time_block(app, block, samples[label])
    return ClassResult(
        name,
        _timing(samples["bare"]),
        _timing(samples["micafence"]),
        _timing(samples["naive"]) if "naive" in samples else None,
        statuses,
    )

"""In-process benchmark: call the ASGI apps directly and time each request.

Each traffic class is a list of requests; the bare app and each middleware in front of it (the
send-only floor, micafence, the naive peer) take turns in rounds of short blocks over the same
requests, so drift on a shared machine hits them all alike. Every figure is a median, and every
overhead a fraction of the bare app's own time in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
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


#: The latency distribution kept for the report: percentiles over every sample.
PERCENTILES = {"p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999}


@dataclass(frozen=True, slots=True)
class Timing:
    p50_us: float  # the median over rounds of each round's median
    p99_us: float  # over every sample
    count: int
    distribution_us: dict[str, float] = field(default_factory=dict)  # PERCENTILES, every sample


@dataclass(frozen=True, slots=True)
class ClassResult:
    """One traffic class timed on the bare app and on each middleware in front of it."""

    name: str
    timings: dict[str, Timing]  # "bare", "floor", "micafence" and, where it applies, "naive"
    statuses: dict[str, frozenset[int]]  # every status each app answered in the class

    @property
    def bare(self) -> Timing:
        return self.timings["bare"]

    @property
    def micafence(self) -> Timing:
        return self.timings["micafence"]

    @property
    def naive(self) -> Timing | None:
        return self.timings.get("naive")

    def overhead_us(self, app: str = "micafence") -> float:
        """What ``app`` adds to the bare route, in µs (medians)."""
        return self.timings[app].p50_us - self.bare.p50_us

    def overhead(self, app: str = "micafence") -> float:
        """What ``app`` adds, as a fraction of the bare route's own time: (app - bare) / bare."""
        return self.overhead_us(app) / self.bare.p50_us


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


def _timing(rounds: list[list[int]]) -> Timing:
    every = sorted(sample for samples in rounds for sample in samples)

    def at(quantile: float) -> float:
        return every[min(len(every) - 1, int(len(every) * quantile))] / 1000

    p50 = statistics.median(statistics.median(samples) for samples in rounds)
    return Timing(p50 / 1000, at(0.99), len(every),
                  {name: at(quantile) for name, quantile in PERCENTILES.items()})


async def measure(name: str, requests: Sequence[Request], apps: dict[str, ASGIApp]) -> ClassResult:
    """Time one traffic class on ``apps`` (``"bare"`` first), caches warm, in paired rounds.

    Each round times every app on the same block of requests, the apps' order rotating from
    round to round, so drift on a shared machine and the order itself hit all apps alike.
    """
    statuses: dict[str, frozenset[int]] = {}
    for label, app in apps.items():  # warm caches, as a server's are after its first minutes
        statuses[label] = frozenset([await _call(app, request)
                                     for request in dict.fromkeys(requests)])
    labels = list(apps)
    rounds: dict[str, list[list[int]]] = {label: [] for label in labels}
    prepared = [(request, _scope(request)) for request in requests]
    for number, start in enumerate(range(0, len(prepared), _BLOCK)):
        block = prepared[start:start + _BLOCK]
        turn = number % len(labels)
        for label in labels[turn:] + labels[:turn]:
            samples: list[int] = []
            await _time_block(apps[label], block, samples)
            rounds[label].append(samples)
    return ClassResult(name, {label: _timing(rounds[label]) for label in labels}, statuses)

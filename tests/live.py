"""Helpers for the live-operations tests: an app that shows its decision, a settable clock,
MaxMind databases built on the spot, and write-then-rename file replacement."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import COUNTRY_DB

PROXY = "127.0.0.1"
SE = "89.160.20.112"  # SE / registered DE in MaxMind's test data
CH = "2a02:d000::1"
#: Build time of MaxMind's test databases (2026-02-04T22:49:29Z).
TEST_DB_EPOCH = 1770245369


def decision_app() -> Starlette:
    """An app that answers every request with micafence's decision as JSON (201 for sign-up)."""

    async def show(request: Request) -> JSONResponse:
        decision = request.state.micafence
        status = 201 if request.url.path == "/api/accounts" else 200
        return JSONResponse(decision.as_dict(), status_code=status)

    return Starlette(routes=[
        Route("/{path:path}", show, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
    ])


def client_for(app: Any, peer: str = PROXY) -> httpx.AsyncClient:
    """An in-process client for ``app``, connecting from ``peer`` (the local proxy)."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://exchange.test")


class Clock:
    """A clock the test sets: ``clock.now = ...``."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def build_country_db(path: Path, networks: dict[str, str], epoch: int) -> Path:
    """A ``GeoIP2-Country`` database (network → country, registered the same) built at epoch."""

    class Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            return {**super()._build_meta(), "build_epoch": epoch}

    writer = Writer(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country",
                    languages=["en"], description={"en": "micafence live-ops test database"})
    for network, country in networks.items():
        record = {"country": {"iso_code": country}, "registered_country": {"iso_code": country}}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def replace_file(source: Path, target: Path) -> None:
    """Replace ``target`` as geoipupdate does: write a new file beside it, rename it over."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    os.close(handle)
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def write_file(target: Path, text: str) -> None:
    """Write text to a new file and rename it over ``target``."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, target)


def copy_country_db(folder: Path) -> Path:
    """A private copy of MaxMind's Country test database, free to be replaced."""
    target = folder / "GeoIP2-Country.mmdb"
    shutil.copyfile(COUNTRY_DB, target)
    return target


@dataclass
class Sample:
    """One request sent under load: when it started and ended (epoch seconds), and its answer."""

    name: str
    started: float
    ended: float
    status: int  # 0: the request failed (connection error, timeout)
    body: dict[str, Any]


class Load:
    """Clients sending requests back to back against a server until the block ends.

    ``requests`` are ``(name, method, path, headers)``; each client cycles through them.
    """

    def __init__(
        self, url: str, requests: list[tuple[str, str, str, dict[str, str]]], clients: int = 4
    ) -> None:
        self.url = url
        self.requests = requests
        self.clients = clients
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        await self.wait_for(lambda sample: True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, offset: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            index = offset
            while not self._stop.is_set():
                name, method, path, headers = self.requests[index % len(self.requests)]
                index += 1
                started = time.time()
                try:
                    response = await client.request(
                        method, path, headers={"Accept": "application/json", **headers}
                    )
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    status, body = 0, {"error": repr(exc)}
                self.samples.append(Sample(name, started, time.time(), status, body))

    async def wait_for(
        self, predicate: Callable[[Sample], bool], timeout: float = 5.0, after: float = 0.0
    ) -> Sample:
        """The first sample started after ``after`` that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.samples:
                if sample.started >= after and predicate(sample):
                    return sample
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching request within {timeout} s")

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def answer_lifespan(receive: Any, send: Any) -> None:
    """A raw test app's whole lifespan: start-up and shutdown both complete."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return

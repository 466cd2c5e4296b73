"""Faults under load, as an operator meets them: the audit disk fills up while EU clients are
withdrawing (evidence) and browsing (neutral), then frees again.

The other faults under load live beside the feature they test: Redis killed and restarted
(tests/test_redis_instances.py), corrupt then good GeoIP database and invalid then valid
policy (tests/test_reload.py), SIGTERM (tests/test_audit.py).
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import httpx
import pytest

from micafence.audit.reader import load_log
from tests.audit_support import KEY, KEY_TEXT, SE
from tests.fault_apps import Uvicorn

pytestmark = pytest.mark.server

FILE_LIMIT = 24 * 1024  # bytes per file: the "disk" is full a few dozen records in


def _small_files() -> None:
    # Runs in the server process before exec. Python ignores SIGXFSZ, so a write past the
    # limit fails with EFBIG (as ENOSPC would) instead of killing the worker.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


def test_audit_disk_full_under_load_refuses_evidence_loses_nothing_and_recovers(
    tmp_path: Path,
) -> None:
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    server = Uvicorn("audited", {"FAULT_AUDIT_DIR": str(audit_dir),
                                 "MICAFENCE_AUDIT_KEY": KEY_TEXT}, preexec=_small_files)
    answers: list[tuple[float, str, str, int, str]] = []  # (time, kind, client, status, reason)
    try:
        server.wait_ready()
        full_at, freed_at = asyncio.run(_load(server, answers))
    finally:
        stderr = server.stop()
    assert server.process.returncode in (0, -15), stderr[-2000:]

    evidence = [a for a in answers if a[1] == "withdrawal"]
    refused = [a for a in evidence if a[3] == 503]
    # Documented outcome: evidence that cannot be queued is refused 503 audit_unavailable...
    assert refused and {a[4] for a in refused} == {"audit_unavailable"}
    assert all(full_at <= t < freed_at + 1.0 for t, *_ in refused)
    # ...every other answer is the normal one (withdrawals are wind-down: 201), neutral pages
    # are served throughout, and nothing failed at the transport level (no crashed worker).
    assert {a[3] for a in evidence} <= {201, 503}
    assert {a[3] for a in answers if a[1] == "browse"} == {200}
    # Automatic recovery: once space is back, withdrawals pass again without a restart.
    recovered = [t for t, _, _, status, _ in evidence if t > freed_at and status == 201]
    assert recovered, "no withdrawal passed after the disk was freed"
    recovery = min(recovered) - freed_at
    # Evidence records == acknowledged evidence decisions, and the chain verifies.
    loaded = load_log([str(audit_dir)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    on_disk = {r["client_id"] for r in loaded.records
               if r.get("kind") == "decision" and r.get("class") == "evidence"}
    acknowledged = {client for _, _, client, status, _ in evidence if status == 201}
    assert on_disk == acknowledged
    print(f"disk full: {len(refused)} withdrawals refused 503, {len(acknowledged)} recorded; "
          f"first pass {recovery * 1000:.0f} ms after space was freed")
    assert recovery < 2.0


async def _load(server: Uvicorn, answers: list[tuple[float, str, str, int, str]]
                ) -> tuple[float, float]:
    """Four clients for about 3 s; the file limit is lifted once evidence is refused."""
    stop = asyncio.Event()

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            sequence = 0
            while not stop.is_set():
                sequence += 1
                client_id = f"w{number}-{sequence}"
                headers = {"X-Forwarded-For": SE, "X-Client-Id": client_id,
                           "Accept": "application/json"}
                if sequence % 2:
                    kind, response = "withdrawal", await http.post(
                        "/api/withdrawals", headers=headers,
                        json={"asset": "BTC", "amount": "1", "address": "addr-1"})
                else:
                    kind, response = "browse", await http.get("/", headers=headers)
                reason = response.json().get("reason", "") if response.status_code == 503 else ""
                answers.append((time.monotonic(), kind, client_id, response.status_code, reason))

    tasks = [asyncio.create_task(client(n)) for n in range(4)]
    started = time.monotonic()
    while not any(a[3] == 503 for a in answers):
        assert time.monotonic() - started < 10, "the audit queue never filled"
        await asyncio.sleep(0.01)
    full_at = min(a[0] for a in answers if a[3] == 503)
    await asyncio.sleep(0.5)  # refusing under load for a while
    # Space is back: lift the limit of the running server (same user, soft up to the hard one).
    resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    freed_at = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*tasks)
    return full_at, freed_at

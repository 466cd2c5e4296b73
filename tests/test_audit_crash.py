"""The decision log survives every way a writer can stop: SIGTERM at any moment (every answered
decision on disk exactly once, chain closed), SIGKILL and a file cut at any byte (everything up
to the last complete record kept, and the next start signs a record naming the loss).

Writers are real child processes (``tests/audit_child.py``) stopped by real signals at random
moments; the seed of each test is in its failure message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence.audit.log import AuditLog
from micafence.audit.reader import load_log
from micafence.audit.sinks import FileSink
from micafence_tools.bench.ports import free_port
from tests.audit_support import KEY, KEY_TEXT

ROOT = Path(__file__).parent.parent
RECORDED = {"451", "200", "event"}  # answers that must have a record (503 would not)
SIGTERM_ROUNDS = 26
SIGKILL_ROUNDS = 26


@dataclass
class Round:
    """What one child writer said in its journal, and how it ended."""

    writer: str = ""
    asked: list[str] = field(default_factory=list)
    answered: dict[str, str] = field(default_factory=dict)
    durable: int = 0
    closed: bool = False
    returncode: int | None = None
    stderr: str = ""

    @property
    def recorded(self) -> list[str]:
        """Entries whose answer promises a record, in the order they were made."""
        return [e for e in self.asked if self.answered.get(e) in RECORDED]

    @property
    def may_be_recorded(self) -> list[str]:
        """Also the entry in flight when the writer was killed (decided, not yet answered)."""
        return [e for e in self.asked if self.answered.get(e, "200") in RECORDED]


class Writer:
    """A child writer process (``tests/audit_child.py``) on ``directory``."""

    def __init__(self, directory: Path, journal: Path) -> None:
        self.journal = journal
        self.child = subprocess.Popen(
            [sys.executable, "-m", "tests.audit_child", str(directory), str(journal)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while not journal.exists() or not journal.read_bytes().startswith(b"ready"):
            if self.child.poll() is not None or time.monotonic() > deadline:
                self.child.kill()
                raise AssertionError("the child writer did not start: "
                                     + self.child.communicate()[1].decode()[-2000:])
            time.sleep(0.01)

    def stop(self, signum: int, delay: float = 0.0) -> Round:
        """Send ``signum`` after ``delay`` seconds; what the journal says once it has ended."""
        try:
            time.sleep(delay)
            self.child.send_signal(signum)
            _, stderr = self.child.communicate(timeout=20)
        finally:
            if self.child.poll() is None:
                self.child.kill()
                self.child.communicate()
        result = Round(returncode=self.child.returncode, stderr=stderr.decode(errors="replace"))
        for line in self.journal.read_text().splitlines():
            word, _, rest = line.partition(" ")
            if word == "ready":
                result.writer = rest
            elif word == "asked":
                result.asked.append(rest)
            elif word == "answered":
                entry, status = rest.split()
                result.answered[entry] = status
            elif word == "durable":
                result.durable = int(rest)
            elif word == "closed":
                result.closed = True
        return result


def run_writer(directory: Path, journal: Path, signum: int, delay: float) -> Round:
    """Start a child writer, send ``signum`` ``delay`` seconds after it is ready."""
    return Writer(directory, journal).stop(signum, delay)


def entries_of(records: list[dict[str, Any]], writer: str) -> list[str]:
    """The ids of a writer's decisions and events on disk, in chain order."""
    ids = []
    for record in sorted((r for r in records if r.get("writer") == writer),
                         key=lambda r: int(r["seq"])):
        if record.get("kind") == "decision":
            ids.append(str(record["client_id"]))
        elif record.get("kind") == "event":
            ids.append(str(record["data"]["token"]))
        assert record.get("kind") != "aggregate", "records were aggregated: counts unusable"
    return ids


def writer_files(directory: Path, *writers: str) -> list[str]:
    return [str(p) for w in writers for p in sorted(directory.glob(f"audit.{w}.*.jsonl"))]


def test_sigterm_at_any_moment_records_every_answered_decision_exactly_once(
    tmp_path: Path,
) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    audit = tmp_path / "audit"
    started = time.monotonic()
    for number in range(SIGTERM_ROUNDS):
        where = f"seed {seed}, round {number}"
        run = run_writer(audit, tmp_path / f"journal-{number}", signal.SIGTERM,
                         rng.uniform(0.02, 0.3))
        assert run.returncode == 0 and run.closed, f"{where}: {run.stderr[-2000:]}"
        assert len(run.recorded) > 5, where
        loaded = load_log(writer_files(audit, run.writer), KEY, require_closed=True)
        assert loaded.ok, (where, loaded.problems)
        on_disk = entries_of(loaded.records, run.writer)
        assert on_disk == run.recorded, (
            f"{where}: {len(on_disk)} records ({len(on_disk) - len(set(on_disk))} duplicated) "
            f"for {len(run.recorded)} answered decisions and events")
    # Every writer's chain, read together as `micafence audit verify DIR` does.
    assert load_log([str(audit)], KEY, require_closed=True).ok
    assert time.monotonic() - started < 90


async def next_start(directory: Path) -> str:
    """A writer starting on the directory (what a restarted worker does), then closing."""
    log = AuditLog(FileSink(directory), key=KEY)
    assert log.record_event("onboarding.token_used", {"token": "next-start"})
    await log.aclose()
    return log.writer


def recoveries_of(directory: Path, writer: str) -> list[dict[str, Any]]:
    """The recovery records in the chain of ``writer``."""
    return [json.loads(line) for path in writer_files(directory, writer)
            for line in Path(path).read_bytes().split(b"\n")[:-1]
            if json.loads(line)["kind"] == "recovery"]


def tail_after_last_line(path: Path) -> bytes:
    data = path.read_bytes()
    return data[data.rfind(b"\n") + 1:]


def check_recovered(directory: Path, run: Round, successor: str, *,
                    cut: bool) -> list[str]:
    """The dead writer's chain verifies thanks to its successor's record; its entries."""
    loaded = load_log(writer_files(directory, run.writer, successor), KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    [recovery] = recoveries_of(directory, successor)
    own = sorted((r for r in loaded.records if r["writer"] == run.writer),
                 key=lambda r: int(r["seq"]))
    assert recovery["dead_writer"] == run.writer
    assert (recovery["last_seq"], recovery["last_hash"]) == (
        (own[-1]["seq"], own[-1]["hash"]) if own else (-1, "0" * 64))
    newest = sorted(directory.glob(f"audit.{run.writer}.*.jsonl"))[-1]
    assert recovery["torn"]["bytes"] == len(tail_after_last_line(newest))
    on_disk = entries_of(loaded.records, run.writer)
    # In order, none twice, none skipped: a prefix of what the writer was asked to record...
    assert on_disk == run.may_be_recorded[:len(on_disk)]
    if not cut:  # ...and, unless a power loss took some, at least everything it made durable.
        assert len(on_disk) >= run.durable
    return on_disk


def test_sigkill_at_any_moment_keeps_what_was_durable_and_the_next_start_names_the_end(
    tmp_path: Path,
) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    audit = tmp_path / "audit"
    started = time.monotonic()
    cuts = 0
    for number in range(SIGKILL_ROUNDS):
        where = f"seed {seed}, round {number}"
        run = run_writer(audit, tmp_path / f"journal-{number}", signal.SIGKILL,
                         rng.uniform(0.02, 0.3))
        assert run.returncode == -signal.SIGKILL, where
        newest = sorted(audit.glob(f"audit.{run.writer}.*.jsonl"))[-1]
        cut = number % 2 == 1  # every other round a power loss too: the file cut at any byte
        if cut:
            os.truncate(newest, rng.randrange(newest.stat().st_size + 1))
            cuts += len(tail_after_last_line(newest)) > 0
        successor = asyncio.run(next_start(audit))
        try:
            check_recovered(audit, run, successor, cut=cut)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
    assert cuts > 0, f"seed {seed}: no cut fell inside a line"
    loaded = load_log([str(audit)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert not list(audit.glob("audit.*.lock")), "a recovered writer's lock file was left"
    assert time.monotonic() - started < 90


def test_a_file_cut_at_any_byte_keeps_every_complete_record(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    original = tmp_path / "original"
    run = run_writer(original, tmp_path / "journal", signal.SIGKILL, 0.15)
    [path] = original.glob(f"audit.{run.writer}.*.jsonl")
    data = path.read_bytes()
    ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    offsets = {0, 1, len(data), ends[0], ends[0] - 1, ends[-1] - 1}
    offsets |= {rng.randrange(len(data) + 1) for _ in range(30)}
    for number, offset in enumerate(sorted(offsets)):
        copy = tmp_path / f"cut-{number}"
        shutil.copytree(original, copy)
        os.truncate(copy / path.name, offset)
        successor = asyncio.run(next_start(copy))
        try:
            on_disk = check_recovered(copy, run, successor, cut=True)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, cut at byte {offset}: {exc}") from exc
        complete = data[:offset].count(b"\n")  # records whose line survived whole
        [recovery] = recoveries_of(copy, successor)
        assert recovery["last_seq"] == complete - 1
        assert recovery["torn"]["offset"] == data.rfind(b"\n", 0, offset) + 1
        assert len(on_disk) <= complete


def test_a_live_sibling_is_never_declared_dead(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    alive = Writer(audit, tmp_path / "alive")  # another worker on the same directory
    dead = run_writer(audit, tmp_path / "dead", signal.SIGKILL, 0.1)
    successor = asyncio.run(next_start(audit))
    assert [r["dead_writer"] for r in recoveries_of(audit, successor)] == [dead.writer]
    survivor = alive.stop(signal.SIGTERM)
    assert survivor.closed
    # The dead writer's own start found the live worker's lock held and named nobody.
    assert recoveries_of(audit, dead.writer) == recoveries_of(audit, survivor.writer) == []
    loaded = load_log([str(audit)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert {c.writer: c.status for c in loaded.chains} == {
        survivor.writer: "closed", successor: "closed",
        dead.writer: f"ended: the writer died, its end recorded by {successor}"}
    assert entries_of(loaded.records, survivor.writer) == survivor.recorded


# -- the demo server, stopped by SIGTERM in a burst of EU sign-ups --------------------------------


DEMO_ROUNDS = 3


@pytest.mark.server
def test_demo_stopped_in_a_burst_of_eu_sign_ups_records_each_answer_once(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    audit = tmp_path / "audit"
    for number in range(DEMO_ROUNDS):
        where = f"seed {seed}, round {number}"
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "micafence", "demo", "--port", str(port),
             "--audit-dir", str(audit)],
            env={**os.environ, "MICAFENCE_AUDIT_KEY": KEY_TEXT}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_demo(server, f"http://127.0.0.1:{port}")
            asked, answered = asyncio.run(sign_up_burst(
                f"http://127.0.0.1:{port}", server, f"r{number}", rng.uniform(0.2, 1.0)))
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
            _, stderr = server.communicate(timeout=30)
        assert server.returncode in (0, -signal.SIGTERM), f"{where}: {stderr.decode()[-2000:]}"
        assert len(answered) > 50 and set(answered.values()) == {451}, where
        loaded = load_log([str(audit)], KEY, require_closed=True)
        assert loaded.ok, (where, loaded.problems)
        on_disk = Counter(r["client_id"] for r in loaded.records
                          if r.get("kind") == "decision" and str(r["client_id"]).startswith(
                              f"r{number}-"))
        assert set(answered) <= set(on_disk), f"{where}: answered sign-ups without a record"
        assert set(on_disk) <= asked, f"{where}: records of requests never made"
        twice = [c for c, count in on_disk.items() if count > 1]
        assert not twice, f"{where}: {len(twice)} sign-ups recorded more than once"
    verify = subprocess.run(
        [sys.executable, "-m", "micafence", "audit", "verify", str(audit), "--require-closed"],
        env={**os.environ, "MICAFENCE_AUDIT_KEY": KEY_TEXT}, capture_output=True, text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout[-2000:]
    assert f"OK: {DEMO_ROUNDS} chain(s)" in verify.stdout


def wait_for_demo(server: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(base + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            if server.poll() is not None:
                reason = server.stderr.read().decode()[-2000:] if server.stderr else ""
                raise AssertionError(f"demo exited: {reason}") from None
            assert time.monotonic() < deadline, "no demo server"
            time.sleep(0.05)


async def sign_up_burst(base: str, server: subprocess.Popen[bytes], prefix: str,
                        stop_after: float) -> tuple[set[str], dict[str, int]]:
    """16 EU visitors signing up as fast as they can; SIGTERM after ``stop_after`` seconds and
    at least 60 answers (a loaded machine answers fewer per second: the burst waits for them,
    up to 30 s). The ids asked for, and the answers received."""
    asked: set[str] = set()
    answered: dict[str, int] = {}

    async def visitor(number: int, http: httpx.AsyncClient) -> None:
        for sequence in range(2000):
            client_id = f"{prefix}-{number}-{sequence}"
            asked.add(client_id)
            try:
                response = await http.post(
                    "/api/accounts", json={"email": f"{client_id}@example.se"},
                    headers={"X-Forwarded-For": "89.160.20.112", "X-Client-Id": client_id})
            except httpx.TransportError:
                return  # the server has stopped taking requests
            answered[client_id] = response.status_code

    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
        visitors = [asyncio.create_task(visitor(n, http)) for n in range(16)]
        await asyncio.sleep(stop_after)
        deadline = time.monotonic() + 30
        while len(answered) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*visitors), 30)
    return asked, answered


# -- a writer killed before its first flush -------------------------------------------------------

_KILLED_EARLY = """
import asyncio, sys
from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from tests.audit_support import KEY

async def main():
    log = AuditLog(FileSink(sys.argv[1]), key=KEY, flush_interval=60)
    await log.start()  # what the server's lifespan startup does, before any request
    assert log.record_event("onboarding.token_used", {"token": "answered"})
    print(log.writer, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_writer_killed_before_its_first_flush_is_named_by_the_next_start(
    tmp_path: Path,
) -> None:
    # The open record went out with the first batch, a flush interval (200 ms by default) after
    # the start: a worker killed in that window (a crash loop, an OOM kill) left no file, so no
    # successor could name it and `audit verify` passed over decisions it had answered.
    audit = tmp_path / "audit"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_EARLY, str(audit)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        writer = child.stdout.readline().strip()
        assert writer, child.communicate(timeout=10)[1]
    finally:
        child.kill()
        child.communicate(timeout=10)
    successor = asyncio.run(next_start(audit))
    [recovery] = recoveries_of(audit, successor)
    assert recovery["dead_writer"] == writer
    loaded = load_log([str(audit)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert {c.writer for c in loaded.chains} == {writer, successor}

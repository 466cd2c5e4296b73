"""The decision log survives every way a writer can stop: SIGTERM at any moment (every answered
decision on disk exactly once, chain closed), SIGKILL and a file cut at any byte (everything up
to the last complete record kept, and the next start signs a record naming the loss).

Writers are real child processes (``tests/audit_child.py``) stopped by real signals at random
moments; the seed of each test is in its failure message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from micafence.audit.reader import load_log
from tests.audit_support import KEY

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


def run_writer(directory: Path, journal: Path, signum: int, delay: float) -> Round:
    """Start a child writer, send ``signum`` ``delay`` seconds after it is ready."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.audit_child", str(directory), str(journal)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not journal.exists() or not journal.read_bytes().startswith(b"ready"):
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the child writer never became ready"
            time.sleep(0.01)
        time.sleep(delay)
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    result = Round(returncode=child.returncode, stderr=stderr.decode(errors="replace"))
    for line in journal.read_text().splitlines():
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

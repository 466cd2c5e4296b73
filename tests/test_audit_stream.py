"""The audit commands on years of records: a log of a quarter of a gigabyte, written by the
real writer, verified, exported and reported in bounded memory (``micafence audit verify``,
``export``, ``report``), with progress on stderr.

Each command runs in its own process and its peak resident memory is read from the kernel
(``wait4``): the log is four times the limit, so a command that held it would fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pty
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from micafence.asgi import Scope
from micafence.audit.export import verify_export
from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from micafence.audit.spill import SpillingSort
from micafence.decision import Decision
from tests.audit_support import DE6, KEY, KEY_TEXT, SE, client, guarded, policy_with
from tests.test_audit_cli import a_grant

MIB = 1024 * 1024
LOG_SIZE = 256 * MIB
RSS_LIMIT = 64 * MIB
ROUND = 9_000  # decisions between two flushes: past 80% of CAPACITY, blocks are aggregated
CAPACITY = 10_000
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
STEP = 100.0  # seconds between decisions: the log spans a year


class Capturing(AuditLog):
    """An audit log that also keeps the decisions it is given, to replay them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[Decision, Scope]] = []

    def record(self, decision: Decision, scope: Scope) -> bool:
        self.seen.append((decision, scope))
        return super().record(decision, scope)


async def real_decisions(directory: Path) -> list[tuple[Decision, Scope]]:
    """What the middleware decides for a few EU visitors: blocks of three kinds and one
    wind-down pass (evidence). No neutral pages: every record that is aggregated is a block."""
    log = Capturing(FileSink(directory), key=KEY)
    async with client(guarded(log, policy_with())) as http:
        for method, path, ip, client_id in [
            ("POST", "/api/accounts", SE, None),
            ("POST", "/api/withdrawals", SE, "c-1"),
            ("GET", "/r/FRIEND10", DE6, "c-2"),
            ("POST", "/api/orders", SE, "c-1"),
        ]:
            headers = {"X-Forwarded-For": ip} | ({"X-Client-Id": client_id} if client_id else {})
            await http.request(method, path, headers=headers)
    await log.aclose()
    return log.seen


@dataclass
class BigLog:
    directory: Path
    lines: int = 0
    decisions: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (reason, blocked)
    aggregated: int = 0
    aggregates: int = 0  # aggregate records
    grants_per_month: Counter[str] = field(default_factory=Counter)

    @property
    def exported(self) -> int:
        """Records a full export holds besides the grant events."""
        return sum(self.decisions.values()) - self.aggregated + self.aggregates


async def write_big_log(directory: Path, samples: list[tuple[Decision, Scope]]) -> BigLog:
    clock = [START.timestamp()]
    log = AuditLog(FileSink(directory), key=KEY, clock=lambda: clock[0], batch_size=5_000,
                   capacity=CAPACITY)
    big = BigLog(directory)
    size = 0
    while size < LOG_SIZE:
        aggregated = log.aggregated
        for n in range(ROUND):
            decision, scope = samples[n % len(samples)]
            assert log.record(decision, scope)
            big.decisions[decision.reason, decision.blocked] += 1
            clock[0] += STEP
        grant_time = dt.datetime.fromtimestamp(clock[0], dt.UTC)
        grant_id = f"g-{sum(big.grants_per_month.values())}"
        assert log.record_grant(a_grant(grant_id, "c-1", grant_time))
        big.grants_per_month[grant_time.strftime("%Y-%m")] += 1
        big.aggregates += log.aggregated > aggregated
        await log.flush()
        size = sum(path.stat().st_size for path in directory.glob("audit.*.jsonl"))
    await log.aclose()
    big.aggregated = log.aggregated
    for path in directory.glob("audit.*.jsonl"):
        with open(path, "rb") as handle:
            big.lines += sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(MIB), b""))
    return big


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> BigLog:
    root = tmp_path_factory.mktemp("big")
    samples = asyncio.run(real_decisions(root / "samples"))
    assert len({d.reason for d, _ in samples}) == 4
    big = asyncio.run(write_big_log(root / "log", samples))
    assert big.aggregated and big.aggregates  # aggregate records: times out of order
    return big


@dataclass
class Run:
    code: int
    out: str
    err: str
    max_rss: int  # bytes


# Started by a small process of its own: a child's peak RSS counts the process it was forked
# from (until exec), and the test process holds far more than the limit.
_MEASURED = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_command(tmp_path: Path, *argv: str) -> Run:
    """``micafence ARGV`` in its own process, with stdout and stderr to files (not a TTY)."""
    out, err, rss = tmp_path / "stdout", tmp_path / "stderr", tmp_path / "max_rss"
    env = os.environ | {"MICAFENCE_AUDIT_KEY": KEY_TEXT}
    env.pop("MICAFENCE_AUDIT_KEY_FILE", None)
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        code = subprocess.call([sys.executable, "-c", _MEASURED, str(rss), sys.executable,
                                "-m", "micafence", *argv], stdout=stdout, stderr=stderr, env=env)
    return Run(code, out.read_text(), err.read_text(), int(rss.read_text()) * 1024)


def test_verify_reads_a_quarter_gigabyte_in_bounded_memory(
    big_log: BigLog, tmp_path: Path
) -> None:
    run = run_command(tmp_path, "audit", "verify", str(big_log.directory), "--require-closed")
    assert run.code == 0, run.out
    assert run.out.splitlines()[-1].startswith(f"OK: 1 chain(s), {big_log.lines} records")
    assert run.err == ""  # no progress: stderr is not a terminal and --progress not given
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / MIB:.1f} MiB"


def test_export_writes_every_record_in_time_order_in_bounded_memory(
    big_log: BigLog, tmp_path: Path
) -> None:
    out = tmp_path / "case"
    run = run_command(tmp_path, "audit", "export", str(big_log.directory), "--out", str(out),
                      "--require-closed", "--progress")
    assert run.code == 0, run.err
    grants = sum(big_log.grants_per_month.values())
    assert f"{big_log.exported} records, {grants} grant events" in run.out
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / MIB:.1f} MiB"
    # --progress: a last line per phase, even into a file.
    reading = re.search(r"^micafence audit export: reading: (\d+\.\d)/(\d+\.\d) MiB, "
                        rf"{big_log.lines} records, .* done in ", run.err, re.M)
    assert reading is not None and reading[1] == reading[2], run.err
    assert f"writing records.jsonl: {big_log.exported}/{big_log.exported} records" in run.err

    times, kinds = [], Counter()
    with open(out / "records.jsonl", "rb") as records:
        for line in records:
            record = json.loads(line)
            times.append(record["time"])
            kinds[record["kind"]] += 1
    assert times == sorted(times)  # aggregates are written after earlier decisions: re-sorted
    assert kinds["aggregate"] == big_log.aggregates
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == len(manifest["files"]["records.jsonl"]["records"])
    assert manifest["counts"]["aggregated_requests"] == big_log.aggregated
    check = verify_export(out)  # the streamed manifest is signed and lists every record
    assert check.ok, check.problems[:5]
    assert check.records == {"records.jsonl": big_log.exported, "grants.jsonl": grants}


def test_report_counts_a_quarter_gigabyte_in_bounded_memory(
    big_log: BigLog, tmp_path: Path
) -> None:
    run = run_command(tmp_path, "report", str(big_log.directory), "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    blocked = {reason: n for (reason, is_block), n in big_log.decisions.items() if is_block}
    assert report["blocks_by_reason"] == dict(sorted(blocked.items()))
    assert sum(report["blocks_per_month"].values()) == sum(blocked.values())
    assert report["wind_down_passes"] == big_log.decisions["eu.wind_down", False]
    assert report["grants_opened_per_month"] == dict(sorted(big_log.grants_per_month.items()))
    assert report["log_problems"] == []
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / MIB:.1f} MiB"


def test_a_record_edited_in_the_middle_is_found_in_bounded_memory(
    big_log: BigLog, tmp_path: Path
) -> None:
    files = sorted(big_log.directory.glob("audit.*.jsonl"))
    middle = files[len(files) // 2]
    copy = tmp_path / "log"
    copy.mkdir()
    for path in files:  # the other files are the same files: linked, not copied
        if path == middle:
            shutil.copy(path, copy / path.name)
        else:
            os.link(path, copy / path.name)
    edited = copy / middle.name
    data = bytearray(edited.read_bytes())
    at = data.index(b'"country":"SE"', len(data) // 2)  # a decision halfway through the file
    number = data.count(b"\n", 0, at) + 1
    data[at:at + 14] = b'"country":"CH"'
    edited.write_bytes(data)
    run = run_command(tmp_path, "audit", "verify", str(copy))
    assert run.code == 1
    assert run.out.splitlines()[1:-1] == [f"  {edited}:{number}: hash mismatch: the record was "
                                          "edited"]
    assert run.out.splitlines()[-1].startswith("FAILED: 1 problem(s)")
    assert run.max_rss < RSS_LIMIT, f"peak RSS {run.max_rss / MIB:.1f} MiB"


def test_progress_is_shown_in_place_on_a_terminal(tmp_path: Path) -> None:
    samples = tmp_path / "log"
    asyncio.run(real_decisions(samples))
    leader, follower = pty.openpty()
    env = os.environ | {"MICAFENCE_AUDIT_KEY": KEY_TEXT}
    process = subprocess.run([sys.executable, "-m", "micafence", "audit", "verify",
                              str(samples)], stdout=subprocess.PIPE, stderr=follower, env=env,
                             check=False)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal is closed once everything is read
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.returncode == 0
    # The status line is rewritten in place (carriage return, erase line); the last one stays.
    assert re.fullmatch(rb"\r\x1b\[Kmicafence audit verify: reading: \d+\.\d/\d+\.\d MiB, "
                        rb"\d+ records, [\d.]+ MiB/s, done in [\d.]+ s\r?\n", shown), shown
    silent = subprocess.run([sys.executable, "-m", "micafence", "audit", "verify",
                             str(samples), "--no-progress"], capture_output=True, env=env,
                            check=False)
    assert silent.returncode == 0 and silent.stderr == b""


@pytest.mark.parametrize(("budget", "fan_in"), [(10**9, 128), (2_000, 2), (20_000, 3)])
def test_the_spilling_sort_gives_what_sorted_gives(tmp_path: Path, budget: int,
                                                   fan_in: int) -> None:
    rng = random.Random(21)
    items = [(f"2025-01-{rng.randint(1, 28):02d}", rng.choice("ab"), n) for n in range(3_000)]
    rng.shuffle(items)
    spill = SpillingSort(tmp_path, "test", budget=budget, fan_in=fan_in)
    for key in items:
        spill.add(key, {"key": list(key), "text": "é\ud800" * (key[2] % 5)})
    assert len(spill) == len(items)
    assert [tuple(item["key"]) for item in spill] == sorted(items)
    assert list(tmp_path.iterdir()) == []  # run files removed once read

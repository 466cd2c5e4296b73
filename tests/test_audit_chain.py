"""Tamper evidence: an edited, deleted or truncated line is caught, and the file and line named."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from micafence.audit.chain import AuditKey, ChainWriter, record_hash
from micafence.audit.log import AuditLog
from micafence.audit.reader import load_log
from micafence.audit.sinks import FileSink
from tests.audit_support import KEY

Lines = list[bytes]


async def write_log(directory: Path, batches: int = 3) -> Path:
    """A closed log of ``batches`` batches of 3 events, each batch sealed by a checkpoint."""
    log = AuditLog(FileSink(directory), key=KEY, flush_interval=60)
    for batch in range(batches):
        for n in range(3):
            assert log.record_event("onboarding.token_used", {"token": f"b{batch}-{n}"})
        await log.flush()
    await log.aclose()
    [path] = directory.glob("audit.*.jsonl")
    return path


def kinds(lines: Lines) -> list[str]:
    return [json.loads(line)["kind"] for line in lines]


def edit_reason(lines: Lines) -> tuple[Lines, int]:
    record = json.loads(lines[2])
    record["data"]["token"] = "forged"
    return [*lines[:2], json.dumps(record).encode() + b"\n", *lines[3:]], 3


def edit_and_rehash(lines: Lines) -> tuple[Lines, int]:
    """Edit a record and recompute every later hash: only the signature can tell."""
    records = [json.loads(line) for line in lines]
    records[2]["data"]["token"] = "forged"
    for index in range(2, len(records)):
        records[index]["prev"] = records[index - 1]["hash"]
        records[index]["hash"] = record_hash(records[index])
    first_signed = next(i for i in range(2, len(records)) if records[i]["kind"] == "checkpoint")
    return [json.dumps(r).encode() + b"\n" for r in records], first_signed + 1


def delete_line(lines: Lines) -> tuple[Lines, int]:
    return [*lines[:3], *lines[4:]], 4  # line 4 now holds what was line 5


def delete_first_line(lines: Lines) -> tuple[Lines, int]:
    return lines[1:], 1


def cut_last_line(lines: Lines) -> tuple[Lines, int]:
    return [*lines[:-1], lines[-1][: len(lines[-1]) // 2]], len(lines)


def cut_mid_batch(lines: Lines) -> tuple[Lines, int]:
    """Truncate the file inside the second batch: the records left there are not sealed."""
    checkpoints = [i for i, kind in enumerate(kinds(lines)) if kind == "checkpoint"]
    keep = checkpoints[0] + 3
    return lines[:keep], checkpoints[0] + 2


def swap_lines(lines: Lines) -> tuple[Lines, int]:
    return [*lines[:2], lines[3], lines[2], *lines[4:]], 4


def append_after_close(lines: Lines) -> tuple[Lines, int]:
    return [*lines, lines[2]], len(lines) + 1


TAMPERING = [
    pytest.param(edit_reason, "hash mismatch: the record was edited", id="edited-line"),
    pytest.param(edit_and_rehash, "checkpoint signature does not verify",
                 id="edited-and-rehashed"),
    pytest.param(delete_line, "records deleted or moved", id="deleted-line"),
    pytest.param(delete_first_line, "without its open record", id="deleted-first-line"),
    pytest.param(cut_last_line, "not a complete record", id="truncated-line"),
    pytest.param(cut_mid_batch, "after the last signed checkpoint", id="truncated-mid-batch"),
    pytest.param(swap_lines, "duplicated or reordered", id="reordered-lines"),
    pytest.param(append_after_close, "after the close record", id="appended-after-close"),
]


async def test_untouched_log_verifies(tmp_path: Path) -> None:
    # The log the tampering tests start from is sound before it is touched.
    await write_log(tmp_path)
    loaded = load_log([str(tmp_path)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert [c.status for c in loaded.chains] == ["closed"]


@pytest.mark.parametrize(("tamper", "problem"), TAMPERING)
async def test_tampering_is_caught_at_its_line(
    tmp_path: Path, tamper: Callable[[Lines], tuple[Lines, int]], problem: str
) -> None:
    path = await write_log(tmp_path)
    lines, line_number = tamper(path.read_bytes().splitlines(keepends=True))
    path.write_bytes(b"".join(lines))
    loaded = load_log([str(tmp_path)], KEY)
    assert not loaded.ok
    assert any(problem in p and f"{path}:{line_number}" in p for p in loaded.problems), \
        loaded.problems


async def test_lines_removed_at_the_end_are_caught(tmp_path: Path) -> None:
    path = await write_log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # the close record: the file ends on a checkpoint
    # A live writer's file also ends on a checkpoint: fresh, that is fine by default…
    assert load_log([str(tmp_path)], KEY).ok
    # …once the workers are stopped, every chain must be closed…
    closed = load_log([str(tmp_path)], KEY, require_closed=True)
    assert any("without a close record" in p for p in closed.problems)
    # …and a chain whose last checkpoint is older than the heartbeat allows is an error.
    later = load_log([str(tmp_path)], KEY, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert any("older than" in p for p in later.problems)


async def test_idle_writer_keeps_its_chain_fresh_with_checkpoints(tmp_path: Path) -> None:
    now = [dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC).timestamp()]
    log = AuditLog(FileSink(tmp_path), key=KEY, flush_interval=60, clock=lambda: now[0])
    await log.flush()
    for _ in range(3):
        now[0] += 61  # past audit.checkpoint_interval (PT1M): an idle checkpoint is due
        await log.flush()
    now[0] += 10  # not yet due
    await log.flush()
    [path] = tmp_path.glob("audit.*.jsonl")
    assert kinds(path.read_bytes().splitlines()) == ["open"] + ["checkpoint"] * 4
    at = dt.datetime.fromtimestamp(now[0], dt.UTC)
    assert load_log([str(tmp_path)], KEY, now=at).ok
    stale = load_log([str(tmp_path)], KEY, now=at + dt.timedelta(minutes=10))
    assert not stale.ok


async def test_wrong_key_is_reported(tmp_path: Path) -> None:
    await write_log(tmp_path)
    loaded = load_log([str(tmp_path)], AuditKey.from_text("another-key-0123456789"))
    assert any("signed with another key" in p for p in loaded.problems)
    assert any("signature does not verify" in p for p in loaded.problems)


async def test_each_writer_has_its_own_chain(tmp_path: Path) -> None:
    await write_log(tmp_path)
    await write_log(tmp_path / "second")
    [second] = (tmp_path / "second").glob("audit.*.jsonl")
    second.rename(tmp_path / second.name)
    loaded = load_log([str(tmp_path)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    assert len(loaded.chains) == 2
    assert len({c.writer for c in loaded.chains}) == 2


# -- a writer that died, and the record the next start writes about it ---------------------------


async def dead_writer_and_successor(directory: Path) -> tuple[Path, Path]:
    """A writer that stopped without closing (its lock let go, as the kernel does when a
    process dies) with a torn last line, and the writer that started next: their files."""
    dead = AuditLog(FileSink(directory), key=KEY, flush_interval=60)
    for batch in range(2):
        for n in range(3):
            assert dead.record_event("onboarding.token_used", {"token": f"b{batch}-{n}"})
        await dead.flush()
    await dead.sink.close()
    [dead_file] = directory.glob(f"audit.{dead.writer}.*.jsonl")
    with open(dead_file, "ab") as torn:
        torn.write(b'{"kind":"decision","seq":')  # a batch cut short by a power loss
    successor = AuditLog(FileSink(directory), key=KEY)
    await successor.aclose()
    [successor_file] = directory.glob(f"audit.{successor.writer}.*.jsonl")
    return dead_file, successor_file


def reseal_after(lines: Lines) -> bytes:
    """A record chained after the last complete line, sealed with the key: a writer's
    records appended to the dead file after its end was recorded."""
    last = json.loads(lines[-1])
    chain = ChainWriter(last["writer"], KEY)
    chain.seq, chain.head = last["seq"] + 1, last["hash"]
    return chain.seal({"v": 1, "kind": "checkpoint", "time": last["time"]})


def complete(path: Path) -> Lines:
    return path.read_bytes().split(b"\n")[:-1]


async def test_a_dead_writer_s_chain_verifies_once_its_end_is_on_record(tmp_path: Path) -> None:
    dead_file, _ = await dead_writer_and_successor(tmp_path)
    loaded = load_log([str(tmp_path)], KEY, require_closed=True)
    assert loaded.ok, loaded.problems
    [recovery] = [r for r in loaded.records if r["kind"] == "recovery"]
    last = json.loads(complete(dead_file)[-1])
    assert (recovery["last_seq"], recovery["last_hash"]) == (last["seq"], last["hash"])
    assert recovery["torn"] == {
        "file": dead_file.name, "offset": dead_file.read_bytes().rfind(b"\n") + 1,
        "bytes": 25, "sha256": hashlib.sha256(b'{"kind":"decision","seq":').hexdigest()}
    assert KEY.public_key.verify(recovery["hash"], recovery["sig"])  # signed like a checkpoint
    # Without the successor's file, the same chain is a cut file, as before.
    alone = load_log([str(dead_file)], KEY)
    assert any("not a complete record" in p for p in alone.problems)


RECOVERY_TAMPERING = [
    pytest.param(lambda dead, successor: dead.write_bytes(
        b"".join(line + b"\n" for line in complete(dead)) + reseal_after(complete(dead))),
        "records appended later", id="appended-after-the-recorded-end"),
    pytest.param(lambda dead, successor: dead.write_bytes(
        b"".join(line + b"\n" for line in complete(dead)[:-1])),
        "records removed from the end", id="last-records-removed"),
    pytest.param(lambda dead, successor: dead.write_bytes(
        dead.read_bytes().replace(b'"seq":', b'"SEQ":')),
        "the tail was changed after the crash", id="torn-bytes-changed"),
    pytest.param(lambda dead, successor: successor.write_bytes(
        b"".join(line + b"\n" for line in complete(successor) if b'"recovery"' not in line)),
        "no recovery record names this writer's death", id="recovery-record-deleted"),
]


@pytest.mark.parametrize(("tamper", "problem"), RECOVERY_TAMPERING)
async def test_a_recovered_end_that_was_tampered_with_is_caught(
    tmp_path: Path, tamper: Callable[[Path, Path], object], problem: str
) -> None:
    dead_file, successor_file = await dead_writer_and_successor(tmp_path)
    tamper(dead_file, successor_file)
    loaded = load_log([str(tmp_path)], KEY)
    assert any(problem in p for p in loaded.problems), loaded.problems

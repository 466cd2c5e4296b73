"""``micafence audit keygen|verify|export|prune``: the decision log as a supervisor gets it.

``verify`` checks every writer's chain and names the file and line of each break; ``export``
writes the records a supervisor asked for (time range, client, reason) with the grant history
and a signed manifest (counts, chain heads, policy revisions); ``prune`` applies the retention
period by removing whole files, after writing a signed record of what it removed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fnmatch
import hashlib
import json
import os
import secrets
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from micafence.audit.chain import AuditKey, ChainWriter, canonical, format_time, parse_time
from micafence.audit.reader import PRUNE_WRITER_PREFIX, LoadedLog, in_range, load_log
from micafence.audit.sinks import FileSink
from micafence.policy.durations import parse_duration

CSV_COLUMNS = (
    "time", "id", "kind", "class", "event", "reason", "rule", "mode", "outcome", "blocked",
    "zone", "zones", "country", "registered_country", "residence_country", "anonymizer",
    "client_ip", "client_id", "transport", "method", "route", "route_class", "grant_id",
    "promotions", "policy_revision", "database_build", "breakglass", "data", "counts",
    "writer", "seq", "hash",
)


def register(commands: Any) -> None:
    """Add ``micafence audit …`` to the CLI's sub-commands."""
    audit = commands.add_parser("audit", help="verify, export and prune the decision log",
                                description="The decision log: verify its hash chains, export "
                                "records for a supervisor, apply retention.")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    keygen = sub.add_parser("keygen", help="create an audit key file (mode 0600)")
    keygen.add_argument("path", help="key file to create (refuses to overwrite)")
    keygen.set_defaults(func=_cmd_keygen)

    verify = sub.add_parser("verify", help="check every chain; exit 1 naming each break",
                            description="Verify hash chains and signed checkpoints of every "
                            "writer in the given directories, files or redis:// streams.")
    _common(verify)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_cmd_verify)

    export = sub.add_parser("export", help="records + grant history + signed manifest",
                            description="Write the records matching the filters, the grant "
                            "history and a signed manifest into --out.")
    _common(export)
    export.add_argument("--since", type=parse_cli_time, help="from (inclusive), ISO date/time")
    export.add_argument("--until", type=parse_cli_time, help="until (exclusive)")
    export.add_argument("--client", help="client id (matches its pseudonym too)")
    export.add_argument("--reason", help="reason code or pattern, e.g. 'eu.*'")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--store", help="grant store URL: also export its full grant history")
    export.add_argument("--out", required=True, help="output directory (created; must be empty)")
    export.add_argument("--allow-broken", action="store_true",
                        help="export even if verification fails (the manifest says so)")
    export.set_defaults(func=_cmd_export)

    prune = sub.add_parser("prune", help="apply the retention period (whole files only)",
                           description="Remove audit files whose records are all older than "
                           "--before (or the policy's audit.retention), after writing a signed "
                           "prune record naming them.")
    prune.add_argument("directory", help="audit directory")
    prune.add_argument("--key-file", help="audit key (default $MICAFENCE_AUDIT_KEY[_FILE])")
    prune.add_argument("--before", type=parse_cli_time, help="cut-off time")
    prune.add_argument("--policy", help="take the cut-off from this policy's audit.retention")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.set_defaults(func=_cmd_prune)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="PATH",
                        help="audit directory, audit file or redis://HOST/DB#STREAM")
    parser.add_argument("--key-file", help="audit key (default $MICAFENCE_AUDIT_KEY[_FILE])")
    parser.add_argument("--stale-after", default="PT5M", type=parse_duration,
                        help="an open chain whose last checkpoint is older is an error "
                        "(ISO 8601 duration, default PT5M)")
    parser.add_argument("--require-closed", action="store_true",
                        help="every chain must end with a close record (workers stopped)")


def parse_cli_time(text: str) -> dt.datetime:
    """``2025-03-01`` (midnight UTC) or an ISO 8601 instant (UTC when no offset is given)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _load(args: argparse.Namespace) -> tuple[AuditKey, LoadedLog]:
    key = AuditKey.from_env(args.key_file)
    log = load_log(args.targets, key, stale_after=args.stale_after,
                   require_closed=args.require_closed)
    return key, log


def chain_summary(log: LoadedLog) -> list[dict[str, Any]]:
    return [{
        "writer": c.writer, "status": c.status, "records": c.records, "last_seq": c.last_seq,
        "head": c.head, "first_time": c.first_time, "last_time": c.last_time,
        "closed": c.closed, "problems": c.problems,
    } for c in log.chains]


def _cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"micafence: {path} exists; a key is never overwritten", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    print(f"{path}: new audit key, id {AuditKey.from_file(path).key_id}. Keep it out of the "
          "audit directory and back it up: without it the log cannot be verified.")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    key, log = _load(args)
    if args.json:
        print(json.dumps({"ok": log.ok, "key_id": key.key_id, "chains": chain_summary(log)},
                         indent=2))
        return 0 if log.ok else 1
    for chain in log.chains:
        span = f"{chain.first_time or '-'} .. {chain.last_time or '-'}"
        print(f"{chain.writer}: {chain.status}, {chain.records} records, {span}, "
              f"head {chain.head[:16]}")
        for problem in chain.problems:
            print(f"  {problem}")
    records = sum(c.records for c in log.chains)
    verdict = "OK" if log.ok else f"FAILED: {len(log.problems)} problem(s)"
    print(f"{verdict}: {len(log.chains)} chain(s), {records} records (key id {key.key_id})")
    return 0 if log.ok else 1


def _matches(record: dict[str, Any], args: argparse.Namespace, pseudonym: str | None) -> bool:
    if not in_range(record, args.since, args.until):
        return False
    if args.client is not None:
        data = record.get("data")
        client = record.get("client_id") or (data.get("client_id") if isinstance(data, dict)
                                             else None)
        if client not in (args.client, pseudonym):
            return False
    if args.reason is not None:
        if record.get("kind") == "aggregate":
            counts = [c for c in record.get("counts", ())
                      if fnmatch.fnmatchcase(str(c.get("reason")), args.reason)]
            record["counts"] = counts  # the export keeps only the matching counts
            return bool(counts)
        return fnmatch.fnmatchcase(str(record.get("reason")), args.reason)
    return True


def _cmd_export(args: argparse.Namespace) -> int:
    key, log = _load(args)
    if not log.ok and not args.allow_broken:
        print("micafence: the audit log does not verify; nothing exported "
              "(see `micafence audit verify`, or pass --allow-broken):", file=sys.stderr)
        for problem in log.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        print(f"micafence: {out} is not empty", file=sys.stderr)
        return 1
    pseudonym = key.pseudonym(args.client) if args.client else None
    entries = log.entries()
    selected = [r for r in entries if r.get("kind") != "event" or not _is_grant(r)]
    selected = [r for r in selected if _matches(r, args, pseudonym)]
    reason_filter, args.reason = args.reason, None  # the grant history ignores --reason
    grants = [r for r in entries if _is_grant(r) and _matches(r, args, pseudonym)]
    args.reason = reason_filter
    files: dict[str, dict[str, Any]] = {}
    name = f"records.{args.format}"
    if args.format == "csv":
        _write_csv(out / name, selected)
    else:
        _write_jsonl(out / name, selected)
    files[name] = _file_facts(out / name, len(selected))
    _write_jsonl(out / "grants.jsonl", grants)
    files["grants.jsonl"] = _file_facts(out / "grants.jsonl", len(grants))
    if args.store:
        history = _store_history(args.store, args.client)
        _write_jsonl(out / "grant-store.jsonl", history)
        files["grant-store.jsonl"] = _file_facts(out / "grant-store.jsonl", len(history))
    times = [str(r["time"]) for r in selected + grants if "time" in r]
    manifest: dict[str, Any] = {
        "generated_at": format_time(dt.datetime.now(dt.UTC)),
        "sources": list(args.targets),
        "filters": {
            "since": args.since.isoformat() if args.since else None,
            "until": args.until.isoformat() if args.until else None,
            "client": args.client, "client_pseudonym": pseudonym, "reason": args.reason,
            "format": args.format,
        },
        "verification": {"ok": log.ok, "key_id": key.key_id, "problems": log.problems},
        "chains": chain_summary(log),
        "counts": {
            "records": len(selected), "grant_events": len(grants),
            "by_kind": dict(Counter(str(r.get("kind")) for r in selected)),
            "by_class": dict(Counter(str(r.get("class")) for r in selected)),
            "by_reason": dict(Counter(str(r["reason"]) for r in selected if "reason" in r)),
            "aggregated_requests": sum(int(c.get("count", 0)) for r in selected
                                       if r.get("kind") == "aggregate" for c in r["counts"]),
        },
        "policy_revisions": sorted({str(r["policy_revision"]) for r in selected
                                    if r.get("policy_revision")}),
        "time_range": {"first": min(times, default=None), "last": max(times, default=None)},
        "files": files,
    }
    manifest["mac"] = key.sign(hashlib.sha256(canonical(manifest)).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"{out}: {len(selected)} records, {len(grants)} grant events, manifest.json "
          f"({'verified' if log.ok else 'VERIFICATION FAILED'})")
    return 0


def verify_manifest(path: Path, key: AuditKey) -> bool:
    """Does ``manifest.json`` carry a valid signature, and do the files match their hashes?"""
    manifest = json.loads(path.read_text(encoding="utf-8"))
    mac = manifest.pop("mac", None)
    if mac != key.sign(hashlib.sha256(canonical(manifest)).hexdigest()):
        return False
    return all(
        hashlib.sha256((path.parent / name).read_bytes()).hexdigest() == facts["sha256"]
        for name, facts in manifest["files"].items()
    )


def _is_grant(record: dict[str, Any]) -> bool:
    return record.get("kind") == "event" and str(record.get("event", "")).startswith("grant.")


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def _write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for record in records:
            writer.writerow([_cell(record.get(column)) for column in CSV_COLUMNS])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value)
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    # A cell a spreadsheet would run as a formula is quoted with a leading apostrophe.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _file_facts(path: Path, lines: int) -> dict[str, Any]:
    return {"lines": lines, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _store_history(url: str, client: str | None) -> list[dict[str, Any]]:
    import asyncio

    from micafence.scopes.grants import event_to_json
    from micafence.store.base import open_store

    async def read() -> list[dict[str, Any]]:
        store = open_store(url)
        try:
            return [event_to_json(e) for e in await store.grant_events(client)]
        finally:
            await store.close()

    return asyncio.run(read())


# -- retention ----------------------------------------------------------------------------------


def _cmd_prune(args: argparse.Namespace) -> int:
    key = AuditKey.from_env(args.key_file)
    if (args.before is None) == (args.policy is None):
        print("micafence: give exactly one of --before and --policy", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.UTC)
    if args.policy is not None:
        from micafence.policy.loader import load_policy

        retention = load_policy(args.policy).audit.retention
        cutoff = now - retention
    else:
        cutoff = args.before
    # Open chains (running workers, however quiet) are fine here; any break is not.
    log = load_log([args.directory], key, stale_after=dt.timedelta(days=365_000))
    if not log.ok:
        print("micafence: the audit log does not verify; nothing pruned:", file=sys.stderr)
        for problem in log.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    # Ended chains: closed, or ended where a recovery record says their writer died.
    closed = {c.writer for c in log.chains if c.closed or c.recovered_by is not None}
    plan = []
    for writer, files in log.files.items():
        if writer.startswith(PRUNE_WRITER_PREFIX):
            continue  # prune records are kept for as long as the log exists
        pruned = []
        for index, path in enumerate(files):
            # Complete lines only: a dead writer's last file may end in torn bytes.
            records = [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]
            last_file = index == len(files) - 1
            if not records or (last_file and writer not in closed):
                break
            if parse_time(str(records[-1]["time"])) >= cutoff:
                break
            pruned.append((path, records))
        if pruned:
            last = pruned[-1][1][-1]
            plan.append({
                "writer": writer, "files": [p.name for p, _ in pruned],
                "records": sum(len(r) for _, r in pruned), "last_seq": last["seq"],
                "last_hash": last["hash"], "first_time": pruned[0][1][0]["time"],
                "last_time": last["time"],
                "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in pruned},
            })
    for entry in plan:
        print(f"{'would remove' if args.dry_run else 'removing'} {len(entry['files'])} file(s) "
              f"of {entry['writer']}: {entry['records']} records up to {entry['last_time']}")
    if args.dry_run or not plan:
        print(f"{len(plan)} writer(s) with files older than {format_time(cutoff)}")
        return 0
    writer = f"{PRUNE_WRITER_PREFIX}{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    chain, sink = ChainWriter(writer, key), FileSink(args.directory)
    stamp = format_time(now)
    # The signed record is on disk before anything is removed.
    sink.write_sync(writer, b"".join([
        chain.seal({"v": 1, "kind": "open", "time": stamp, "key_id": key.key_id}),
        chain.seal({"v": 1, "kind": "prune", "time": stamp, "before": format_time(cutoff),
                    "writers": plan}),
        chain.seal({"v": 1, "kind": "close", "time": stamp}),
    ]))
    sink.end_chain(writer)
    for entry in plan:
        for name in entry["files"]:
            (Path(args.directory) / name).unlink()
    print(f"pruned {sum(len(e['files']) for e in plan)} file(s); signed prune record by "
          f"{writer}")
    return 0

"""``micafence audit keygen|public-key|verify|export|verify-export|prune``: the decision log
as a supervisor gets it.

``keygen`` makes the audit secret (and its public key); ``verify`` checks every writer's chain
and names the file and line of each break; ``export`` writes the records a supervisor asked for
(time range, client, reason) with the grant history and a manifest signed with Ed25519 (counts,
chain heads, policy revisions, every exported record); ``verify-export`` checks an export with
the public key alone; ``prune`` applies the retention period by removing whole files, after
writing a signed record of what it removed. Keys: :mod:`micafence.audit.keys`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import hashlib
import json
import os
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from micafence.audit.chain import ChainWriter, format_time
from micafence.audit.export import verify_export, write_csv, write_jsonl, write_manifest
from micafence.audit.keys import KEY_ENV, KEY_FILE_ENV, AuditKey, AuditKeyError, AuditPublicKey
from micafence.audit.progress import Progress, add_progress_argument
from micafence.audit.reader import (
    PRUNE_WRITER_PREFIX,
    LoadedLog,
    LogReader,
    entry_time,
    in_range,
    load_log,
)
from micafence.audit.sinks import FileSink
from micafence.audit.spill import SpillingSort, Spool
from micafence.instants import instant_argument, parse_duration, parse_instant


def register(commands: Any) -> None:
    """Add ``micafence audit …`` to the CLI's sub-commands."""
    audit = commands.add_parser("audit", help="verify, export and prune the decision log",
                                description="The decision log: verify its hash chains, export "
                                "records for a supervisor, apply retention.")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    keygen = sub.add_parser(
        "keygen", help="create the audit secret (mode 0600) and its public key (FILE.pub)",
        description="Create the audit secret in FILE (mode 0600; give it to the workers as "
        f"${KEY_FILE_ENV} or ${KEY_ENV}) and write its Ed25519 public key to FILE.pub (give "
        "that, or its fingerprint, to the supervisor). The secret signs checkpoints and "
        "exports and keys pseudonyms; keep it away from whoever can write the log.")
    keygen.add_argument("path", help="key file to create (refuses to overwrite)")
    keygen.set_defaults(func=_cmd_keygen)

    public = sub.add_parser(
        "public-key", help="print the audit key's Ed25519 public key and fingerprint",
        description="Print the public key (PEM) that verifies the log's and the exports' "
        "signatures without being able to make them; the fingerprint goes to stderr.")
    public.add_argument("--key-file", help=f"audit key (default ${KEY_ENV}[_FILE])")
    public.add_argument("--out", help="write the PEM to this file instead")
    public.set_defaults(func=_cmd_public_key)

    verify = sub.add_parser("verify", help="check every chain; exit 1 naming each break",
                            description="Verify hash chains and signed checkpoints of every "
                            "writer in the given directories, files or redis:// streams.")
    _common(verify)
    verify.add_argument("--public-key", metavar="FILE",
                        help="verify with the Ed25519 public key alone, no secret (records "
                        "signed the old way, with an HMAC, are then reported unverifiable)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_cmd_verify)

    export = sub.add_parser("export", help="records + grant history + signed manifest",
                            description="Write the records matching the filters, the grant "
                            "history and a signed manifest into --out.")
    _common(export)
    export.add_argument("--since", type=instant_argument,
                        help="from (inclusive): ISO 8601 time with a timezone, or a date "
                        "(midnight UTC)")
    export.add_argument("--until", type=instant_argument, help="until (exclusive)")
    export.add_argument("--client", help="client id (matches its pseudonym too)")
    export.add_argument("--reason", help="reason code or pattern, e.g. 'eu.*'")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--store", help="grant store URL: also export its full grant history")
    export.add_argument("--out", required=True, help="output directory (created; must be empty)")
    export.add_argument("--allow-broken", action="store_true",
                        help="export even if verification fails (the manifest says so)")
    export.set_defaults(func=_cmd_export)

    check = sub.add_parser(
        "verify-export", help="check an export with no secret; exit 1 naming each problem",
        description="Check an export's signed manifest and every record against it "
        "(changed, removed, added or moved records are named by position). Needs no secret: "
        "without --public-key it uses the key inside the manifest and prints its fingerprint, "
        "to be compared with the one the firm gave you out of band.")
    check.add_argument("export", metavar="EXPORT", help="export directory (with manifest.json)")
    check.add_argument("--public-key", metavar="FILE",
                       help="the firm's public key (PEM or hex): the export must be signed "
                       "with it")
    check.add_argument("--key-file", help="audit secret: only for exports made before Ed25519 "
                       "(signed with an HMAC)")
    check.set_defaults(func=_cmd_verify_export)

    prune = sub.add_parser("prune", help="apply the retention period (whole files only)",
                           description="Remove audit files whose records are all older than "
                           "--before (or the policy's audit.retention), after writing a signed "
                           "prune record naming them.")
    prune.add_argument("directory", help="audit directory")
    prune.add_argument("--key-file", help="audit key (default $MICAFENCE_AUDIT_KEY[_FILE])")
    prune.add_argument("--before", type=instant_argument, help="cut-off time")
    prune.add_argument("--policy", help="take the cut-off from this policy's audit.retention")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.set_defaults(func=_cmd_prune)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="PATH",
                        help="audit directory, audit file or redis://HOST/DB#STREAM")
    parser.add_argument("--key-file", help="audit key (default $MICAFENCE_AUDIT_KEY[_FILE]; "
                        "a key file must be mode 0600 or stricter)")
    parser.add_argument("--stale-after", default="PT5M", type=parse_duration,
                        help="an open chain whose last checkpoint is older is an error "
                        "(ISO 8601 duration, default PT5M)")
    parser.add_argument("--require-closed", action="store_true",
                        help="every chain must end with a close record (workers stopped)")
    add_progress_argument(parser)


def _key_facts(key: AuditKey | AuditPublicKey) -> str:
    public = key.public_key if isinstance(key, AuditKey) else key
    secret = f"key id {key.key_id}, " if isinstance(key, AuditKey) else ""
    return f"{secret}key fingerprint {public.fingerprint}"


def chain_summary(log: LoadedLog) -> list[dict[str, Any]]:
    return [{
        "writer": c.writer, "status": c.status, "records": c.records, "last_seq": c.last_seq,
        "head": c.head, "first_time": c.first_time, "last_time": c.last_time,
        "closed": c.closed, "recovered_by": c.recovered_by, "problems": c.problems,
    } for c in log.chains]


def _cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    public = path.with_name(path.name + ".pub")
    for target in (path, public):
        if target.exists():
            print(f"micafence: {target} exists; a key is never overwritten", file=sys.stderr)
            return 1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    key = AuditKey.from_file(path)
    public.write_text(key.public_key.pem(), encoding="utf-8")
    print(f"{path}: new audit key, id {key.key_id}. Keep it out of the audit directory and "
          "back it up: without it the log cannot be verified.\n"
          f"{public}: its public key, fingerprint {key.public_key.fingerprint}. Give it (or the "
          "fingerprint) to whoever verifies exports: it verifies, it cannot sign.")
    return 0


def _cmd_public_key(args: argparse.Namespace) -> int:
    key = AuditKey.from_env(args.key_file)
    if args.out:
        Path(args.out).write_text(key.public_key.pem(), encoding="utf-8")
    else:
        print(key.public_key.pem(), end="")
    print(f"fingerprint {key.public_key.fingerprint}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    key: AuditKey | AuditPublicKey
    if args.public_key:
        key = AuditPublicKey.from_file(args.public_key)
    else:
        key = AuditKey.from_env(args.key_file)
    progress = Progress.for_command("micafence audit verify", args.progress)
    reader = LogReader(args.targets, key, progress=progress)
    for _ in reader.records():
        pass
    log = reader.verdict(stale_after=args.stale_after, require_closed=args.require_closed)
    if args.json:
        public = key.public_key if isinstance(key, AuditKey) else key
        print(json.dumps({"ok": log.ok, "key_id": getattr(key, "key_id", None),
                          "key_fingerprint": public.fingerprint,
                          "chains": chain_summary(log)}, indent=2))
        return 0 if log.ok else 1
    for chain in log.chains:
        span = f"{chain.first_time or '-'} .. {chain.last_time or '-'}"
        print(f"{chain.writer}: {chain.status}, {chain.records} records, {span}, "
              f"head {chain.head[:16]}")
        for problem in chain.problems:
            print(f"  {problem}")
    records = sum(c.records for c in log.chains)
    verdict = "OK" if log.ok else f"FAILED: {len(log.problems)} problem(s)"
    print(f"{verdict}: {len(log.chains)} chain(s), {records} records ({_key_facts(key)})")
    return 0 if log.ok else 1


def _matches(record: dict[str, Any], args: argparse.Namespace, pseudonym: str | None,
             reason: str | None) -> bool:
    if not in_range(record, args.since, args.until):
        return False
    if args.client is not None:
        data = record.get("data")
        client = record.get("client_id") or (data.get("client_id") if isinstance(data, dict)
                                             else None)
        if client not in (args.client, pseudonym):
            return False
    if reason is not None:
        if record.get("kind") == "aggregate":
            counts = [c for c in record.get("counts", ())
                      if fnmatch.fnmatchcase(str(c.get("reason")), reason)]
            record["counts"] = counts  # the export keeps only the matching counts
            return bool(counts)
        return fnmatch.fnmatchcase(str(record.get("reason")), reason)
    return True


def _cmd_export(args: argparse.Namespace) -> int:
    key = AuditKey.from_env(args.key_file)
    progress = Progress.for_command("micafence audit export", args.progress)
    # Records are sorted by time, and the manifest lists each of them: both on disk, not in
    # memory, until written (under $TMPDIR; removed at the end).
    with tempfile.TemporaryDirectory(prefix="micafence-export-") as spill:
        return _export(args, key, Path(spill), progress)


def _export(args: argparse.Namespace, key: AuditKey, spill: Path, progress: Progress) -> int:
    pseudonym = key.pseudonym(args.client) if args.client else None
    reader = LogReader(args.targets, key, progress=progress)
    selected, grants = SpillingSort(spill, "records"), SpillingSort(spill, "grants")
    for place, record in reader.entries():
        if _is_grant(record):  # the grant history ignores --reason
            if _matches(record, args, pseudonym, None):
                grants.add((entry_time(record), *place), record)
        elif _matches(record, args, pseudonym, args.reason):
            selected.add((entry_time(record), *place), record)
    log = reader.verdict(stale_after=args.stale_after, require_closed=args.require_closed)
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
    counts = _ExportCounts()
    files: dict[str, dict[str, Any]] = {}
    name = f"records.{args.format}"
    progress.begin(f"writing {name}", total_records=len(selected))
    # The manifest lists every record: read back from disk to sign it, then to write it.
    listed = [Spool(spill / f"{name}.entries", progress=progress),
              Spool(spill / "grants.entries", progress=progress)]
    files[name] = (write_csv if args.format == "csv" else write_jsonl)(
        out / name, counts.selected(selected, progress), listed[0])
    progress.end()
    files["grants.jsonl"] = write_jsonl(out / "grants.jsonl", counts.grants(grants), listed[1])
    if args.store:
        history = _store_history(args.store, args.client)
        files["grant-store.jsonl"] = write_jsonl(out / "grant-store.jsonl", history)
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
            "by_kind": dict(counts.by_kind), "by_class": dict(counts.by_class),
            "by_reason": dict(counts.by_reason),
            "aggregated_requests": counts.aggregated_requests,
        },
        "policy_revisions": sorted(counts.policy_revisions),
        "time_range": {"first": counts.first, "last": counts.last},
        "files": files,
    }
    progress.begin("signing and writing manifest.json",
                   total_records=2 * sum(len(spool) for spool in listed))
    write_manifest(out / "manifest.json", manifest, key)
    progress.end()
    for spool in listed:
        spool.close()
    print(f"{out}: {len(selected)} records, {len(grants)} grant events, manifest.json "
          f"({'verified' if log.ok else 'VERIFICATION FAILED'}), signed by the key "
          f"{key.public_key.fingerprint}")
    return 0


class _ExportCounts:
    """The manifest's counts, taken as the records are written (in the order written: the
    manifest lists kinds, classes and reasons in the order they first appear)."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.by_class: Counter[str] = Counter()
        self.by_reason: Counter[str] = Counter()
        self.aggregated_requests = 0
        self.policy_revisions: set[str] = set()
        self.first: str | None = None
        self.last: str | None = None

    def selected(self, records: Iterable[dict[str, Any]],
                 progress: Progress) -> Iterator[dict[str, Any]]:
        for record in records:
            self.by_kind[str(record.get("kind"))] += 1
            self.by_class[str(record.get("class"))] += 1
            if "reason" in record:
                self.by_reason[str(record["reason"])] += 1
            if record.get("kind") == "aggregate":
                self.aggregated_requests += sum(int(c.get("count", 0)) for c in record["counts"])
            if record.get("policy_revision"):
                self.policy_revisions.add(str(record["policy_revision"]))
            self._time(record)
            progress.advance()
            yield record

    def grants(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self._time(record)
            yield record

    def _time(self, record: dict[str, Any]) -> None:
        if "time" in record:
            time = str(record["time"])
            self.first = time if self.first is None else min(self.first, time)
            self.last = time if self.last is None else max(self.last, time)


def verify_manifest(path: Path, key: AuditKey) -> bool:
    """Does the export whose ``manifest.json`` is ``path`` verify, signed by ``key``?"""
    return verify_export(path.parent, public_key=key.public_key, secret=key).ok


def _cmd_verify_export(args: argparse.Namespace) -> int:
    directory = Path(args.export)
    if not (directory / "manifest.json").is_file():
        print(f"micafence: {directory} holds no manifest.json", file=sys.stderr)
        return 2
    public = AuditPublicKey.from_file(args.public_key) if args.public_key else None
    secret = None
    if args.key_file or os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV):
        secret = AuditKey.from_env(args.key_file)  # for an export signed the old way
    try:
        check = verify_export(directory, public_key=public, secret=secret)
    except (AuditKeyError, ValueError) as exc:
        print(f"micafence: {exc}", file=sys.stderr)
        return 2
    if check.fingerprint is None:
        print(f"{directory}: signed the old way (HMAC), checked with the audit key")
    elif public is not None:
        print(f"{directory}: signed by the key {check.fingerprint}"
              f"{' (the key given)' if public.fingerprint == check.fingerprint else ''}")
    else:
        print(f"{directory}: signed by the key with fingerprint\n  {check.fingerprint}\n"
              "Compare it with the fingerprint the firm gave you out of band (not with one "
              "found in this export) before trusting this result, or pass --public-key.")
    for name, count in check.records.items():
        print(f"  {name}: {count} record(s)")
    for problem in check.problems:
        print(f"  {problem}")
    print("OK" if check.ok else f"FAILED: {len(check.problems)} problem(s)")
    return 0 if check.ok else 1


def _is_grant(record: dict[str, Any]) -> bool:
    return record.get("kind") == "event" and str(record.get("event", "")).startswith("grant.")


def _store_history(url: str, client: str | None) -> list[dict[str, Any]]:
    import asyncio

    from micafence.records import event_to_json
    from micafence.store.opener import open_store

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
    candidates: dict[str, list[tuple[Path, list[dict[str, Any]]]]] = {}
    for writer, files in log.files.items():
        if writer.startswith(PRUNE_WRITER_PREFIX):
            continue  # prune records are kept for as long as the log exists
        pruned = candidates.setdefault(writer, [])
        for index, path in enumerate(files):
            # Complete lines only: a dead writer's last file may end in torn bytes.
            records = [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]
            last_file = index == len(files) - 1
            if not records or (last_file and writer not in closed):
                break
            if parse_instant(str(records[-1]["time"]), allow_date=False) >= cutoff:
                break
            pruned.append((path, records))
    _keep_needed_recoveries(candidates, log.files)
    plan = []
    for writer, pruned in candidates.items():
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


def _keep_needed_recoveries(candidates: dict[str, list[tuple[Path, list[dict[str, Any]]]]],
                            files: dict[str, list[Path]]) -> None:
    """Keep every file holding a recovery record about a writer some of whose files stay: that
    record is what lets the dead writer's unclosed chain verify. Until nothing changes: a
    writer kept for that may itself have died and been named by another."""
    changed = True
    while changed:
        changed = False
        staying = {w for w, paths in files.items() if len(candidates.get(w, ())) < len(paths)}
        for pruned in candidates.values():
            for index, (_, records) in enumerate(pruned):
                if any(r.get("kind") == "recovery" and r.get("dead_writer") in staying
                       for r in records):
                    del pruned[index:]
                    changed = True
                    break

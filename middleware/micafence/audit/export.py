"""An export's files and its signed manifest, and checking them with no secret at all.

``micafence audit export`` writes ``records.jsonl`` (or ``records.csv``), ``grants.jsonl``,
optionally ``grant-store.jsonl``, and ``manifest.json``. For every file the manifest lists each
exported record in order: its ``writer``, ``seq`` and ``hash`` in the decision log (what ties
it to a chain that ``micafence audit verify`` checked) and the SHA-256 of the line or row as
exported. So even in a filtered export (where the chain's own ``seq`` jumps by design) a
record that was changed, removed, added or moved is found, and named by its position.

The manifest is signed with the audit key's Ed25519 key (:mod:`micafence.audit.keys`) and
carries the public key and its fingerprint: ``micafence audit verify-export DIR`` checks an
export with the public key alone, and a supervisor compares the fingerprint it prints with the
one the firm gave out of band (or passes the key file, ``--public-key``). The signature is over
the SHA-256 (hex) of the manifest's canonical JSON (sorted keys, no spaces, UTF-8) without
``signature``. Exports made before (``mac`` instead of ``signature``, no record list) still
verify, with the audit secret: the HMAC and each file's SHA-256.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from micafence.audit.chain import CANONICAL_JSON
from micafence.audit.keys import AuditKey, AuditKeyError, AuditPublicKey
from micafence.audit.spill import Spool

EXPORT_FORMAT = 2
CSV_COLUMNS = (
    "time", "id", "kind", "class", "event", "reason", "rule", "mode", "outcome", "blocked",
    "zone", "zones", "country", "registered_country", "residence_country", "anonymizer",
    "client_ip", "client_id", "transport", "method", "route", "route_class", "grant_id",
    "promotions", "signals", "policy_revision", "database_build", "breakglass", "data", "counts",
    "writer", "seq", "hash",
)
#: The columns of exports written before the ``signals`` column (record version 1): they verify.
_EARLIER_COLUMNS = (tuple(c for c in CSV_COLUMNS if c != "signals"),)
_SIGNATURE = "signature"
_EXPORTED = json.JSONEncoder(sort_keys=True, ensure_ascii=False)  # a line of records.jsonl


# -- writing -----------------------------------------------------------------------------------


def write_jsonl(path: Path, records: Iterable[dict[str, Any]],
                entries: Spool | None = None) -> dict[str, Any]:
    """Write one record a line as they come; the file's manifest entry (its ``records`` list
    kept in ``entries`` when given, else in memory)."""
    listed: Spool | list[dict[str, Any]] = entries if entries is not None else []
    with _HashedFile(path) as out:
        for record in records:
            line = _EXPORTED.encode(record).encode()
            out.write_bytes(line + b"\n")
            listed.append(_entry(record, hashlib.sha256(line).hexdigest()))
    return _file_facts(out, listed)


def write_csv(path: Path, records: Iterable[dict[str, Any]],
              entries: Spool | None = None) -> dict[str, Any]:
    """Write a header and one row a record (:data:`CSV_COLUMNS`) as they come; the file's
    manifest entry (see :func:`write_jsonl`)."""
    listed: Spool | list[dict[str, Any]] = entries if entries is not None else []
    with _HashedFile(path) as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for record in records:
            row = [_cell(record.get(column)) for column in CSV_COLUMNS]
            writer.writerow(row)
            listed.append(_entry(record, _row_digest(row)))
    return _file_facts(out, listed)


def sign_manifest(manifest: dict[str, Any], key: AuditKey) -> None:
    """Add the Ed25519 signature, the public key and its fingerprint."""
    public = key.public_key
    manifest["format"] = EXPORT_FORMAT
    manifest.pop(_SIGNATURE, None)
    manifest[_SIGNATURE] = {
        "algorithm": "ed25519", "public_key": public.pem(),
        "key_fingerprint": public.fingerprint, "value": key.sign(_manifest_digest(manifest)),
    }


def write_manifest(path: Path, manifest: dict[str, Any], key: AuditKey) -> None:
    """Sign ``manifest`` and write it as ``json.dumps(manifest, indent=2)`` would, reading its
    spooled record lists from disk (twice: once to sign, once to write)."""
    sign_manifest(manifest, key)
    with open(path, "w", encoding="utf-8") as out:
        write_json(manifest, out.write, canonical=False)
        out.write("\n")


def write_json(value: Any, write: Callable[[str], object], *, canonical: bool,
               depth: int = 0) -> None:
    """Write ``value`` piece by piece as ``json.dumps`` would: canonical (sorted keys, no
    spaces, UTF-8: what is signed) or pretty (``indent=2``, keys in order, ASCII). A
    :class:`~micafence.audit.spill.Spool` is written as the list it holds, read as it goes."""
    if isinstance(value, dict):
        items = sorted(value.items()) if canonical else list(value.items())
        if not items:
            write("{}")
            return
        separator = ":" if canonical else ": "
        for index, (name, item) in enumerate(items):
            write(("{" if index == 0 else ",") + _gap(canonical, depth + 1)
                  + _dumps(name, canonical, depth + 1) + separator)
            write_json(item, write, canonical=canonical, depth=depth + 1)
        write(_gap(canonical, depth) + "}")
    elif isinstance(value, list | tuple | Spool):
        if not len(value):
            write("[]")
            return
        # A spool's items (a record each) are written whole, not piece by piece.
        whole = _item_writer(canonical, depth + 1) if isinstance(value, Spool) else None
        for index, item in enumerate(value):
            write(("[" if index == 0 else ",") + _gap(canonical, depth + 1))
            if whole is not None:
                write(whole(item))
            else:
                write_json(item, write, canonical=canonical, depth=depth + 1)
        write(_gap(canonical, depth) + "]")
    else:
        write(_dumps(value, canonical, depth))


def _gap(canonical: bool, depth: int) -> str:
    return "" if canonical else "\n" + "  " * depth


def _dumps(value: Any, canonical: bool, depth: int) -> str:
    if canonical:
        return CANONICAL_JSON.encode(value)
    # A newline in json.dumps' output is always indentation (newlines in strings are escaped).
    return json.dumps(value, indent=2).replace("\n", "\n" + "  " * depth)


def _item_writer(canonical: bool, depth: int) -> Callable[[Any], str]:
    """:func:`_dumps` for the items of a spool, fast for a flat dict (the manifest lists
    millions): json's C encoder with the indentation as its item separator."""
    if canonical:
        return CANONICAL_JSON.encode
    pad = "\n" + "  " * depth
    flat = json.JSONEncoder(separators=("," + pad + "  ", ": "))

    def pretty(item: Any) -> str:
        if isinstance(item, dict) and item and not any(
                isinstance(v, dict | list | tuple) for v in item.values()):
            return "{" + pad + "  " + flat.encode(item)[1:-1] + pad + "}"
        return _dumps(item, False, depth)

    return pretty


class _HashedFile:
    """A file written as UTF-8 bytes and hashed on the way (csv.writer writes text to it)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed by __exit__)
        self._sha256 = hashlib.sha256()

    def write(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_bytes(self, data: bytes) -> None:
        self._sha256.update(data)
        self._file.write(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def __enter__(self) -> _HashedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _entry(record: dict[str, Any], digest: str) -> dict[str, Any]:
    if "writer" in record and "seq" in record:
        return {"writer": record["writer"], "seq": record["seq"], "hash": record.get("hash"),
                "sha256": digest}
    return {"sha256": digest}  # a grant-store record: not part of a chain


def _file_facts(out: _HashedFile, entries: Spool | list[dict[str, Any]]) -> dict[str, Any]:
    return {"lines": len(entries), "sha256": out.hexdigest(), "records": entries}


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


def _row_digest(cells: Sequence[str]) -> str:
    # Over the cells, not the bytes: a CSV row may span lines, and its quoting is the writer's.
    return hashlib.sha256(json.dumps(list(cells), ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != _SIGNATURE}
    digest = hashlib.sha256()
    write_json(body, lambda text: digest.update(text.encode()), canonical=True)
    return digest.hexdigest()


# -- checking ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ExportCheck:
    """What :func:`verify_export` found."""

    #: The fingerprint of the key that signed the manifest (None: signed the old way).
    fingerprint: str | None = None
    problems: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)  # file -> records checked

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Found:
    position: int
    key: tuple[str, int] | None  # (writer, seq) of a chain record
    hash: str | None
    sha256: str

    def label(self, name: str) -> str:
        where = f" (writer {self.key[0]}, seq {self.key[1]})" if self.key else ""
        return f"{name} record {self.position}{where}"


def verify_export(directory: Path, *, public_key: AuditPublicKey | None = None,
                  secret: AuditKey | None = None) -> ExportCheck:
    """Check an export: its manifest's signature, then every file against the manifest.

    ``public_key``: the key the firm gave the supervisor (else the manifest's own key is used,
    and the caller must show :attr:`ExportCheck.fingerprint` to be compared). ``secret``: only
    needed for an export signed the old way (HMAC). Raises ``AuditKeyError`` for an old export
    without the secret, ``ValueError`` for a manifest that is not one.
    """
    check = ExportCheck()
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{directory / 'manifest.json'} is not an export manifest")
    if _SIGNATURE in manifest:
        _check_signature(manifest, public_key, check)
    else:
        _check_old_signature(manifest, secret, check)
    for name, facts in manifest["files"].items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            check.problems.append(f"{name}: listed in the manifest, missing from the export")
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() == facts.get("sha256"):
            check.records[name] = int(facts.get("lines", 0))
            continue
        expected = facts.get("records")
        if not isinstance(expected, list):  # an old manifest: the file hash is all there is
            check.problems.append(f"{name}: SHA-256 differs from the manifest: the file was "
                                  "changed")
            continue
        found = _read_found(path, name, check)
        before = len(check.problems)
        _compare(name, expected, found, check.problems)
        if len(check.problems) == before:  # same records, other bytes (spacing, header…)
            check.problems.append(f"{name}: SHA-256 differs from the manifest, though every "
                                  "record matches: the file was re-written")
        check.records[name] = len(found)
    # The export directory held only what the manifest lists: anything else was put there
    # later, and a reader would take it for part of the signed export.
    for path in sorted(directory.iterdir()):
        if path.name != "manifest.json" and path.name not in manifest["files"]:
            check.problems.append(f"{path.name}: not in the manifest: added after the export")
    return check


def _check_signature(manifest: dict[str, Any], given: AuditPublicKey | None,
                     check: ExportCheck) -> None:
    signature = manifest[_SIGNATURE]
    try:
        embedded = AuditPublicKey.from_text(str(signature["public_key"]), "the manifest's key")
        value = str(signature["value"])
    except (KeyError, TypeError, AuditKeyError) as exc:
        check.problems.append(f"manifest.json: unusable signature block ({exc})")
        return
    check.fingerprint = embedded.fingerprint
    if signature.get("key_fingerprint") != embedded.fingerprint:
        check.problems.append("manifest.json: the fingerprint written beside the public key is "
                              "not that key's")
    if given is not None and given != embedded:
        check.problems.append(f"manifest.json: signed with the key {embedded.fingerprint}, "
                              f"not with the key given ({given.fingerprint})")
    if not embedded.verify(_manifest_digest(manifest), value):
        check.problems.append("manifest.json: the signature does not verify: the manifest was "
                              "changed after it was signed")


def _check_old_signature(manifest: dict[str, Any], secret: AuditKey | None,
                         check: ExportCheck) -> None:
    if secret is None:
        raise AuditKeyError("this export is signed the old way (HMAC, no public key): "
                            "verifying it needs the audit key (--key-file)")
    mac = manifest.pop("mac", None)
    body = json.dumps({k: v for k, v in manifest.items() if k not in ("hash", "sig")},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if not isinstance(mac, str) or not hmac.compare_digest(
            mac, secret.mac(hashlib.sha256(body).hexdigest())):
        check.problems.append("manifest.json: the signature (HMAC) does not verify: the "
                              "manifest was changed, or the key is another")


def _read_found(path: Path, name: str, check: ExportCheck) -> list[_Found]:
    found = []
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        header = tuple(rows[0]) if rows else ()
        if header != CSV_COLUMNS and header not in _EARLIER_COLUMNS:
            check.problems.append(f"{name}: the header row was changed")
            return []
        for position, row in enumerate(rows[1:], 1):
            cells = dict(zip(header, row, strict=False))
            found.append(_Found(position, _key(cells.get("writer"), cells.get("seq")),
                                cells.get("hash"), _row_digest(row)))
        return found
    for position, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
            fields = record if isinstance(record, dict) else {}
        except ValueError:
            fields = {}
        found.append(_Found(position, _key(fields.get("writer"), fields.get("seq")),
                            fields.get("hash"), hashlib.sha256(line).hexdigest()))
    return found


def _key(writer: object, seq: object) -> tuple[str, int] | None:
    try:
        return (str(writer), int(str(seq))) if writer else None
    except ValueError:
        return None


def _compare(name: str, expected: list[dict[str, Any]], found: list[_Found],
             problems: list[str]) -> None:
    """Name every record changed, added, removed or moved, by its position."""
    index = {(str(e["writer"]), int(e["seq"])): j for j, e in enumerate(expected)
             if "writer" in e}
    seen: dict[tuple[str, int], int] = {}
    placed: list[tuple[_Found, int]] = []
    for entry in found:
        j = index.get(entry.key) if entry.key else entry.position - 1
        if j is None or j >= len(expected) or (entry.key is None and "writer" in expected[j]):
            problems.append(f"{entry.label(name)}: not in the manifest: added, or its writer "
                            "or seq edited")
            continue
        if entry.key is not None:
            if entry.key in seen:
                problems.append(f"{entry.label(name)}: a second copy of record "
                                f"{seen[entry.key]}")
                continue
            seen[entry.key] = entry.position
        if entry.sha256 != expected[j].get("sha256") or (
                entry.key is not None and entry.hash != expected[j].get("hash")):
            problems.append(f"{entry.label(name)}: changed since the export")
        placed.append((entry, j))
    present = {j for _, j in placed}
    for j, listed in enumerate(expected):
        if j not in present:
            what = (f" (writer {listed['writer']}, seq {listed['seq']})" if "writer" in listed
                    else "")
            problems.append(f"{name}: record {j + 1} of the manifest{what} is missing: "
                            "removed")
    in_order = _longest_increasing([j for _, j in placed])
    for index_in_placed, (entry, j) in enumerate(placed):
        if index_in_placed not in in_order:
            problems.append(f"{entry.label(name)}: out of place (record {j + 1} in the "
                            "manifest): moved")


def _longest_increasing(values: list[int]) -> set[int]:
    """Indexes of one longest strictly increasing subsequence: the records in their order."""
    tails: list[int] = []  # value ending the best subsequence of each length
    tail_index: list[int] = []
    parent = [-1] * len(values)
    for i, value in enumerate(values):
        length = bisect_left(tails, value)
        if length == len(tails):
            tails.append(value)
            tail_index.append(i)
        else:
            tails[length] = value
            tail_index[length] = i
        parent[i] = tail_index[length - 1] if length else -1
    kept, i = set(), tail_index[-1] if tail_index else -1
    while i >= 0:
        kept.add(i)
        i = parent[i]
    return kept

"""What ``micafence check`` and ``micafence test`` write for CI: text, JSON, GitHub annotations
and JUnit XML.

Text lines are ``file:line: key.path: problem`` with nothing before them, so any ``file:line:``
matcher (an editor, a GitHub problem matcher, ``grep``) finds them; a control character or a
surrogate in a file name or a key is written as its escape, so one error stays one line. GitHub
annotations are workflow commands (``::error file=F,line=L,title=T::message``) with the escaping
GitHub documents for their properties and message; the other lines come after them, between
``::stop-commands::`` and its token, so nothing a file or policy name holds is run as a command.
"""

from __future__ import annotations

import json
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from micafence.errors import MicafenceError, PolicyError
from micafence.policy.casefile import CaseResult
from micafence.policy.coverage import Note
from micafence.policy.model import Policy

FORMATS = ("text", "json", "github")


@dataclass(frozen=True, slots=True)
class Checked:
    """One file given to ``micafence check``: its policy, or its errors."""

    file: str
    policy: Policy | None
    errors: list[PolicyError]
    notes: Sequence[Note] = ()  # a valid policy's warnings and notices (policy.coverage)


def check_report(checked: Sequence[Checked], form: str) -> str:
    """The report of ``micafence check`` in ``form`` (one of :data:`FORMATS`)."""
    if form == "json":
        return json.dumps(_check_json(checked), indent=2) + "\n"
    if form == "github":
        return _github_report(checked)
    lines: list[str] = []
    for item in checked:
        if item.policy is not None:
            lines.extend(_ok_lines(item.file, item.policy))
        lines.extend(str(note) for note in item.notes)
        lines.extend(str(error) for error in item.errors)
    lines.append(check_summary(checked))
    return "".join(f"{one_line(line)}\n" for line in lines)


def _github_report(checked: Sequence[Checked]) -> str:
    """The annotations, then the other lines with the runner's command processing stopped:
    a policy's name or a file's name could otherwise hold ``##[command]`` or a line break."""
    annotations: list[str] = []
    plain: list[str] = []
    for item in checked:
        if item.policy is not None:
            plain.extend(_ok_lines(item.file, item.policy))
        annotations.extend(github_note(note) for note in item.notes)
        annotations.extend(github_error(error) for error in item.errors)
    plain.append(check_summary(checked))
    token = secrets.token_hex(16)
    lines = [*annotations, f"::stop-commands::{token}", *map(one_line, plain), f"::{token}::"]
    return "".join(f"{line}\n" for line in lines)


# C0 and C1 controls (line breaks among them), DEL, and surrogates (no UTF-8 stream takes them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def one_line(text: str) -> str:
    """``text`` with control characters and surrogates written as escapes (``\\n``,
    ``\\x1b``, ``\\udcff``), so it is one line any stream can write."""
    return _UNPRINTABLE.sub(lambda found: ascii(found.group())[1:-1], text)


def check_summary(checked: Sequence[Checked]) -> str:
    errors = sum(len(item.errors) for item in checked)
    files = len(checked)
    checked_text = f"{files} file{'s' if files != 1 else ''} checked"
    notes = sum(len(item.notes) for item in checked)
    if notes:
        checked_text = f"{notes} note{'s' if notes != 1 else ''}; {checked_text}"
    if not errors:
        return f"no errors ({checked_text})"
    failed = sum(bool(item.errors) for item in checked)
    return (f"{errors} error{'s' if errors != 1 else ''} in {failed} "
            f"file{'s' if failed != 1 else ''} ({checked_text})")


def _ok_lines(file: str, policy: Policy) -> list[str]:
    zones = ", ".join(f"{z.name} ({len(z.countries)})" for z in policy.zones if z.countries)
    return [
        f"{file}: OK — policy {policy.name!r} revision {policy.revision}",
        f"  zones: {zones}; {len(policy.routes)} routes (format version {policy.version}, "
        f"unlisted safe: {policy.unlisted.safe}, unsafe: {policy.unlisted.unsafe}); "
        f"{len(policy.rules)} rules; mode {policy.mode.value}",
    ]


def _check_json(checked: Sequence[Checked]) -> dict[str, object]:
    files: list[dict[str, object]] = []
    for item in checked:
        entry: dict[str, object] = {"file": item.file, "ok": not item.errors,
                                    "errors": [error_json(e) for e in item.errors],
                                    "notes": [note_json(n) for n in item.notes]}
        if item.policy is not None:
            entry["policy"] = {"name": item.policy.name, "revision": item.policy.revision,
                               "mode": item.policy.mode.value, "version": item.policy.version}
        files.append(entry)
    count = sum(len(item.errors) for item in checked)
    notes = sum(len(item.notes) for item in checked)
    return {"ok": count == 0, "error_count": count, "note_count": notes, "files": files}


def error_json(error: PolicyError) -> dict[str, object]:
    return {"file": error.file, "line": error.line, "key_path": error.key_path or None,
            "problem": error.problem, "message": str(error)}


def note_json(note: Note) -> dict[str, object]:
    return {"file": note.file, "line": note.line, "key_path": note.key_path,
            "level": note.level, "problem": note.problem, "message": str(note)}


def github_note(note: Note) -> str:
    """``note`` as a GitHub Actions ``::warning`` or ``::notice`` annotation."""
    properties = [f"file={_property(note.file)}"]
    if note.line is not None:
        properties.append(f"line={note.line}")
    properties.append(f"title={_property(f'micafence: {note.key_path}')}")
    return f"::{note.level} {','.join(properties)}::{_data(note.problem)}"


def github_error(error: PolicyError) -> str:
    """``error`` as a GitHub Actions ``::error`` annotation on its file and line."""
    properties = [f"file={_property(error.file)}"]
    if error.line is not None:
        properties.append(f"line={error.line}")
    title = f"micafence: {error.key_path}" if error.key_path else "micafence"
    properties.append(f"title={_property(title)}")
    return f"::error {','.join(properties)}::{_data(error.problem)}"


def _data(text: str) -> str:
    escaped = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return one_line(escaped)


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


# What XML 1.0 cannot hold: controls other than tab and line breaks, surrogates, U+FFFE/U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda found: ascii(found.group())[1:-1], text)


def write_junit(path: str, suite: str, results: Sequence[CaseResult],
                errors: Sequence[PolicyError] = ()) -> None:
    """A JUnit XML report: one ``testcase`` per case (a ``failure`` with the expected and the
    actual decision when it failed), and one ``error`` testcase per file error (when the policy
    or the cases could not be loaded, so CI shows why nothing ran). Missing directories of
    ``path`` are made."""
    failures = sum(not r.passed for r in results)
    seconds = sum(r.seconds for r in results)
    root = ET.Element("testsuites", name="micafence test", tests=str(len(results) + len(errors)),
                      failures=str(failures), errors=str(len(errors)), time=f"{seconds:.6f}")
    element = ET.SubElement(root, "testsuite", name=suite,
                            tests=str(len(results) + len(errors)), failures=str(failures),
                            errors=str(len(errors)), skipped="0", time=f"{seconds:.6f}")
    for error in errors:
        case = ET.SubElement(element, "testcase", name=f"load {error.file}", classname=suite,
                             file=error.file, time="0")
        if error.line is not None:
            case.set("line", str(error.line))
        ET.SubElement(case, "error", message=str(error), type="PolicyError").text = str(error)
    for result in results:
        case = ET.SubElement(element, "testcase", name=result.case.name, classname=suite,
                             file=suite, time=f"{result.seconds:.6f}")
        if result.case.line is not None:
            case.set("line", str(result.case.line))
        if result.passed:
            continue
        failure = ET.SubElement(case, "failure", message="; ".join(result.failures),
                                type="DecisionMismatch")
        failure.text = "\n".join([
            f"expected: {json.dumps(result.case.expect, sort_keys=True)}",
            f"actual:   {json.dumps(result.actual, sort_keys=True)}",
            f"decision: {json.dumps(result.decision, sort_keys=True, default=str)}",
        ])
    for node in root.iter():  # a case's name or a path may hold what XML cannot
        node.attrib = {key: _xml_text(value) for key, value in node.attrib.items()}
        node.text = node.text and _xml_text(node.text)
    ET.indent(root)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(Path(path), encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise MicafenceError(f"cannot write the JUnit report {path}: "
                             f"{exc.strerror or exc}") from exc

"""The policy archive: every policy revision ever loaded, kept by its hash, for audits.

Each decision names the policy revision that produced it (``sha256:<hex>``, a hash of the
file's bytes). With an archive directory configured (``archive_dir=`` on the middleware), every
policy a worker loads — at start-up and on each reload — is copied there as
``sha256-<hex>.yaml`` (once per revision: the bytes are the revision) and a line is appended to
``revisions.jsonl`` saying when it was loaded. ``micafence explain --revision REV`` then decides
with that exact file, and ``--at TIME`` with the revision last loaded at or before ``TIME``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from micafence.errors import ArchiveError, MicafenceError
from micafence.instants import parse_instant
from micafence.live.atomicfile import write_atomically
from micafence.policy.loader import load_policy, policy_revision
from micafence.policy.model import Policy

INDEX_FILE = "revisions.jsonl"
ARCHIVE_ENV = "MICAFENCE_ARCHIVE_DIR"
_MIN_PREFIX = 6


@dataclass(frozen=True, slots=True)
class ArchivedRevision:
    """One load of a policy revision by a worker."""

    revision: str
    name: str
    source: str
    loaded_at: dt.datetime


class PolicyArchive:
    """A directory of policy revisions and the journal of when each was loaded."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def file_for(self, revision: str) -> Path:
        return self.directory / (revision.replace(":", "-") + ".yaml")

    def record(self, raw: bytes, policy: Policy, loaded_at: dt.datetime) -> Path:
        """Keep ``raw`` (the bytes ``policy`` was built from) and note that it was loaded."""
        if policy_revision(raw) != policy.revision:
            raise ArchiveError(f"{policy.source}: the bytes given are not revision "
                               f"{policy.revision}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.file_for(policy.revision)
        if not path.exists():
            write_atomically(path, raw)
        line = json.dumps({"revision": policy.revision, "name": policy.name,
                           "source": policy.source, "loaded_at": loaded_at.isoformat()})
        # One short O_APPEND write per load: lines from several workers do not interleave.
        with open(self.directory / INDEX_FILE, "a", encoding="utf-8") as index:
            index.write(line + "\n")
        return path

    def history(self) -> list[ArchivedRevision]:
        """Every load, in the order they were recorded."""
        path = self.directory / INDEX_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{path}: cannot read ({exc})") from exc
        entries = []
        for number, line in enumerate(lines, 1):
            try:
                data = json.loads(line)
                entries.append(ArchivedRevision(
                    str(data["revision"]), str(data["name"]), str(data["source"]),
                    parse_instant(data["loaded_at"], allow_date=False),
                ))
            except (ValueError, TypeError, KeyError, AttributeError):
                raise ArchiveError(f"{path}:{number}: not an archive entry") from None
        return entries

    def resolve(self, revision: str) -> str:
        """The full revision for ``sha256:<hex>``, ``<hex>`` or a unique prefix of either."""
        wanted = revision.strip().removeprefix("sha256:").removeprefix("sha256-")
        if len(wanted) < _MIN_PREFIX:
            raise ArchiveError(f"revision {revision!r}: give at least {_MIN_PREFIX} hex digits")
        known = sorted({entry.revision for entry in self.history()})
        matches = [r for r in known if r.removeprefix("sha256:").startswith(wanted)]
        if not matches:
            raise ArchiveError(f"revision {revision!r} is not in the archive {self.directory}")
        if len(matches) > 1:
            raise ArchiveError(f"revision {revision!r} is ambiguous: {', '.join(matches)}")
        return matches[0]

    def load(self, revision: str) -> Policy:
        """The policy of an archived revision, checked against its hash."""
        full = self.resolve(revision)
        path = self.file_for(full)
        if not path.is_file():
            raise ArchiveError(f"{path}: archived revision {full} is missing")
        policy = load_policy(path)
        if policy.revision != full:
            raise ArchiveError(f"{path}: content changed since it was archived "
                               f"(now {policy.revision}, was {full})")
        return policy

    def revision_at(self, at: dt.datetime) -> ArchivedRevision:
        """The revision last loaded at or before ``at``."""
        earlier = [entry for entry in self.history() if entry.loaded_at <= at]
        if not earlier:
            raise ArchiveError(f"no policy revision was loaded at or before {at.isoformat()} "
                               f"(archive {self.directory})")
        return max(earlier, key=lambda entry: entry.loaded_at)


def policy_for_explain(
    current: Path, archive_dir: str | None, revision: str | None, at: dt.datetime | None
) -> Policy:
    """The policy ``explain`` decides with: an archived revision, or the current file.

    ``revision`` picks an archived revision; otherwise, with an archive and ``at``, the
    revision in force at ``at``; otherwise the policy file ``current``.
    """
    if archive_dir is None:
        if revision is not None:
            raise ArchiveError(f"--revision needs the archive (--archive or ${ARCHIVE_ENV})")
        return load_policy(current)
    archive = PolicyArchive(archive_dir)
    try:
        if revision is not None:
            return archive.load(revision)
        if at is not None:
            return archive.load(archive.revision_at(at).revision)
    except ArchiveError:
        raise
    except MicafenceError as exc:  # an archived file that no longer validates
        raise ArchiveError(str(exc)) from exc
    return load_policy(current)

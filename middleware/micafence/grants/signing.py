"""Signed grant records: an HMAC over each record, so write access to the store is not enough.

Whoever can write to the grant store (the Redis server, the JSON Lines file) could otherwise add
a grant and open a scope. With a :class:`GrantKey`, every record a ``file://`` or ``redis://``
store writes (grants, approvals, revocations, account bindings, onboarding tickets) carries
``key_id`` and ``mac``: HMAC-SHA256 over the record's canonical JSON (sorted keys, no spaces,
UTF-8, without ``mac``) under a key derived from the grant key. A record read back that is
unsigned, signed with another key or altered is **ignored** and logged (``grant.record_rejected``,
once per record and process): it cannot open a scope. The key itself is never stored with the
records; give it to the middleware (``grant_key=``) and to ``micafence grant``
(``--grant-key-file``), else both read ``$MICAFENCE_GRANT_KEY`` or the file named by
``$MICAFENCE_GRANT_KEY_FILE``. Make one with ``micafence grant keygen FILE`` (mode 0600); a key
file that is missing, or that its group or others may open, is refused with an error naming it
(:mod:`micafence.keyfiles`).

What a signature cannot do: prove that no record was *deleted* (a deleted revocation reopens a
grant). Keep Redis behind ACLs and compare with the signed audit log's ``grant.revoked`` events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micafence.caches import BoundedCache
from micafence.errors import StoreError
from micafence.keyfiles import read_key_file
from micafence.logs import log_event

KEY_ENV = "MICAFENCE_GRANT_KEY"
KEY_FILE_ENV = "MICAFENCE_GRANT_KEY_FILE"
MIN_KEY_LENGTH = 32
_MAC = "mac"
_KEY_ID = "key_id"
_REJECTED_LIMIT = 10_000  # distinct bad records remembered, so each is logged once


class GrantKeyError(StoreError):
    """No usable grant key, or a key file that cannot be read or written."""


@dataclass(frozen=True, slots=True)
class GrantKey:
    """The secret that signs grant records. Never written to the store."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_LENGTH:
            raise GrantKeyError(f"the grant key must be at least {MIN_KEY_LENGTH} bytes long "
                                "(make one with `micafence grant keygen FILE`)")

    def _derive(self, purpose: str) -> bytes:
        return hmac.new(self.secret, purpose.encode(), hashlib.sha256).digest()

    @property
    def key_id(self) -> str:
        """A public fingerprint, written with every signed record, to tell keys apart."""
        return self._derive("micafence-grant-key-id").hex()[:16]

    def sign(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``record`` with ``key_id`` and ``mac`` added."""
        signed = {k: v for k, v in record.items() if k != _MAC}
        signed[_KEY_ID] = self.key_id
        signed[_MAC] = self._mac(signed)
        return signed

    def problem(self, record: Mapping[str, Any]) -> str | None:
        """Why ``record`` does not verify under this key, or ``None`` when it does."""
        mac = record.get(_MAC)
        if not isinstance(mac, str):
            return "unsigned"
        if record.get(_KEY_ID) != self.key_id:
            return f"signed with another key ({record.get(_KEY_ID)!r}, this one is {self.key_id})"
        if not hmac.compare_digest(mac, self._mac(record)):
            return "signature does not match: the record was altered"
        return None

    def _mac(self, record: Mapping[str, Any]) -> str:
        return hmac.new(self._derive("micafence-grant-mac"), canonical(record),
                        hashlib.sha256).hexdigest()

    @classmethod
    def from_text(cls, text: str) -> GrantKey:
        return cls(text.strip().encode())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GrantKey:
        """The key in ``path``: refused when missing or open to its group or others."""
        return cls.from_text(read_key_file(path, "grant key", GrantKeyError))

    @classmethod
    def from_env(cls) -> GrantKey | None:
        """``$MICAFENCE_GRANT_KEY``, else the file ``$MICAFENCE_GRANT_KEY_FILE``, else ``None``."""
        if os.environ.get(KEY_ENV):
            return cls.from_text(os.environ[KEY_ENV])
        if os.environ.get(KEY_FILE_ENV):
            return cls.from_file(os.environ[KEY_FILE_ENV])
        return None


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's MAC covers: sorted keys, no spaces, UTF-8, without ``mac``."""
    body = {k: v for k, v in record.items() if k != _MAC}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def resolve_key(given: GrantKey | str | os.PathLike[str] | None) -> GrantKey | None:
    """A key given as an object, as the *path* of a key file, or ``None``: from the environment."""
    if isinstance(given, GrantKey):
        return given
    if given is not None:
        return GrantKey.from_file(given)
    return GrantKey.from_env()


def write_key_file(path: str | os.PathLike[str]) -> GrantKey:
    """Create a new key file (mode 0600; refuses to overwrite one) and return its key."""
    text = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise GrantKeyError(f"{path} exists: a grant key is never overwritten "
                            "(records signed with it would no longer verify)") from None
    except OSError as exc:
        raise GrantKeyError(f"cannot create grant key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return GrantKey.from_text(text)


def key_file_for_demo(path: str | os.PathLike[str]) -> GrantKey:
    """The key in ``path``, created first if missing (``micafence demo``)."""
    return GrantKey.from_file(path) if Path(path).exists() else write_key_file(path)


class RecordSeal:
    """Signs records on the way into a store and checks them on the way out.

    Without a key (a ``file://`` store nobody gave one) records are written and read as they
    are. With one, :meth:`verified` returns ``None`` for a record that does not verify, and logs it.
    """

    def __init__(self, key: GrantKey | None, location: str) -> None:
        self.key = key
        self.location = location
        self._rejected: BoundedCache[bytes, bool] = BoundedCache(_REJECTED_LIMIT)
        self._unverified_told = False

    def sign(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record to write: signed when there is a key."""
        return self.key.sign(record) if self.key is not None else dict(record)

    def verified(self, record: Mapping[str, Any], where: str) -> Mapping[str, Any] | None:
        """The record read at ``where`` if it may be trusted, else ``None`` (logged).

        Without a key every record is taken as it is; the first signed one read says so (once):
        whoever reads with the key (the middleware, say) ignores what does not verify, so a
        reader without it may see records they never see."""
        if self.key is None:
            if not self._unverified_told and "mac" in record:
                self._unverified_told = True
                log_event(logging.WARNING, "grant.records_not_verified",
                          f"micafence: the records in {self.location} are signed, but no grant "
                          "key was given: they are read as written, not verified (an unsigned "
                          "or altered record counts here, and not where the key is given); "
                          "give the grant key (--grant-key-file, $MICAFENCE_GRANT_KEY or "
                          "$MICAFENCE_GRANT_KEY_FILE)",
                          location=self.location)
            return record
        problem = self.key.problem(record)
        if problem is None:
            return record
        self.reject(record, where, problem)
        return None

    def suspect(self, record: Mapping[str, Any], where: str) -> str | None:
        """Why a piece of solicitation evidence read at ``where`` does not verify (logged once
        per record), or ``None``. Evidence that does not verify is **kept**, not ignored: it
        can only refuse (a grant, a token, a sign-up), so reading it as written is the safe
        side, and evidence recorded before it was signed still counts."""
        if self.key is None:
            return None
        problem = self.key.problem(record)
        if problem is None:
            return None
        digest = hashlib.sha256(canonical(record)).digest()
        if not self._rejected.get(digest):
            self._rejected.put(digest, True)
            log_event(logging.WARNING, "solicitation.unverified",
                      f"micafence: solicitation evidence at {where} does not verify ({problem}); "
                      "it still counts against its subject", where=where, problem=problem,
                      subject=record.get("subject"))
        return problem

    def reject(self, record: Mapping[str, Any], where: str, problem: str) -> None:
        """Log a record that is ignored (once per distinct record)."""
        digest = hashlib.sha256(canonical(record)).digest()
        if self._rejected.get(digest):
            return
        self._rejected.put(digest, True)
        log_event(
            logging.ERROR, "grant.record_rejected",
            f"micafence: ignoring a grant record at {where}: {problem}",
            where=where, problem=problem, record_event=record.get("event"),
            grant_id=record.get("id") or record.get("grant_id"),
            client_id=record.get("client_id"),
        )

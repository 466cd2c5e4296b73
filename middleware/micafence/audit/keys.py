"""The decision log's keys: the firm's audit secret, and the Ed25519 key pair derived from it.

**One secret.** ``micafence audit keygen FILE`` writes it (64 hex digits, mode 0600) and the
public key beside it (``FILE.pub``). The log and the CLI take it as ``key=`` /
``--key-file FILE``, else ``$MICAFENCE_AUDIT_KEY`` (the secret itself), else the file named by
``$MICAFENCE_AUDIT_KEY_FILE``. A key *file* is refused when missing or open to its group or to
others (:mod:`micafence.keyfiles`). From the secret, each purpose derives its own key
(HMAC-SHA256 of the secret and a purpose label):

- **signing** (Ed25519, the 32-byte derived seed): every ``open``, ``checkpoint``, ``close``,
  ``prune`` and ``recovery`` record carries ``sig``, an Ed25519 signature of its ``hash``, and
  every export's manifest is signed the same way. The public key verifies them and cannot sign:
  ``micafence audit public-key`` prints it (PEM) and its fingerprint, for a supervisor;
- **pseudonyms** (HMAC): ``hmac:…`` client ids and hashed addresses, stable for as long as the
  secret is;
- **the old signatures** (HMAC ``mac``): logs and exports written before Ed25519 still verify,
  with the secret only.

Why derived rather than a second key file: one secret to guard, back up and rotate, nothing to
change in a running deployment, and the holders are the same (the workers sign checkpoints and
pseudonymise; the compliance officer signs exports and looks clients up by pseudonym). The
price: the signing key and the pseudonyms rotate together.

**The fingerprint** is the SHA-256 of the raw 32-byte public key, in hex; a supervisor can
compute it from the PEM alone: ``openssl pkey -pubin -in audit.pub -outform DER | tail -c 32 |
sha256sum``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from micafence.errors import MicafenceError
from micafence.keyfiles import read_key_file

KEY_ENV = "MICAFENCE_AUDIT_KEY"
KEY_FILE_ENV = "MICAFENCE_AUDIT_KEY_FILE"
MIN_KEY_LENGTH = 16


class AuditKeyError(MicafenceError):
    """No usable audit key: the log cannot be signed or verified without one."""


class AuditPublicKey:
    """The Ed25519 public key that verifies the log's and the exports' signatures."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise AuditKeyError("an Ed25519 public key is 32 bytes")
        self.raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, hex: what a supervisor compares out of band."""
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, digest: str, signature: str) -> bool:
        """Is ``signature`` (hex) this key's signature of ``digest`` (a record's hash)?"""
        try:
            self._key.verify(bytes.fromhex(signature), digest.encode())
        except (ValueError, InvalidSignature):
            return False
        return True

    def pem(self) -> str:
        return self._key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    @classmethod
    def from_text(cls, text: str, source: str = "public key") -> AuditPublicKey:
        """A PEM public key (``-----BEGIN PUBLIC KEY-----``) or the raw key in 64 hex digits."""
        text = text.strip()
        try:
            if text.startswith("-----BEGIN"):
                key = load_pem_public_key(text.encode())
                if not isinstance(key, Ed25519PublicKey):
                    raise ValueError
                return cls(key.public_bytes(Encoding.Raw, PublicFormat.Raw))
            return cls(bytes.fromhex(text))
        except (ValueError, AuditKeyError):
            raise AuditKeyError(f"{source}: not an Ed25519 public key (PEM, or 64 hex "
                                "digits)") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AuditPublicKey:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditKeyError(f"cannot read public key file {path}: {exc}") from exc
        return cls.from_text(text, str(path))


@dataclass(frozen=True, slots=True)
class AuditKey:
    """The firm's audit secret: signs (Ed25519) and keys the pseudonyms. Never in the log."""

    secret: bytes
    _signer: Ed25519PrivateKey = field(init=False, repr=False, compare=False)
    _public: AuditPublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_LENGTH:
            raise AuditKeyError(f"the audit key must be at least {MIN_KEY_LENGTH} bytes long")
        signer = Ed25519PrivateKey.from_private_bytes(self._derive("micafence-audit-ed25519"))
        object.__setattr__(self, "_signer", signer)
        object.__setattr__(self, "_public", AuditPublicKey(
            signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)))

    def _derive(self, purpose: str) -> bytes:
        return hmac.new(self.secret, purpose.encode(), hashlib.sha256).digest()

    @property
    def key_id(self) -> str:
        """A short id of the secret, in every ``open`` record: which key made the pseudonyms."""
        return self._derive("micafence-audit-key-id").hex()[:16]

    @property
    def public_key(self) -> AuditPublicKey:
        return self._public

    def sign(self, digest: str) -> str:
        """The Ed25519 signature (hex) of ``digest`` (a record's or a manifest's hash)."""
        return self._signer.sign(digest.encode()).hex()

    def mac(self, digest: str) -> str:
        """The old signature (HMAC-SHA256), kept to verify logs and exports made with it."""
        return hmac.new(self._derive("micafence-audit-mac"), digest.encode(),
                        hashlib.sha256).hexdigest()

    def pseudonym(self, value: str) -> str:
        """A stable keyed pseudonym (``hmac:<hex>``) for a client id or an address."""
        digest = hmac.new(self._derive("micafence-audit-pseudonym"), value.encode(),
                          hashlib.sha256).hexdigest()
        return "hmac:" + digest[:24]

    @classmethod
    def from_text(cls, text: str) -> AuditKey:
        return cls(text.strip().encode())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AuditKey:
        """The key in ``path``: refused when missing or open to its group or others."""
        return cls.from_text(read_key_file(path, "audit key", AuditKeyError))

    @classmethod
    def from_env(cls, key_file: str | None = None) -> AuditKey:
        """The key from ``key_file``, else ``$MICAFENCE_AUDIT_KEY``, else its ``_FILE`` variant."""
        if key_file:
            return cls.from_file(key_file)
        if os.environ.get(KEY_ENV):
            return cls.from_text(os.environ[KEY_ENV])
        if os.environ.get(KEY_FILE_ENV):
            return cls.from_file(os.environ[KEY_FILE_ENV])
        raise AuditKeyError(
            f"no audit key: pass --key-file, or set ${KEY_ENV} or ${KEY_FILE_ENV} "
            "(create one with `micafence audit keygen`)"
        )


#: What verifies signatures: the secret (old and new signatures) or the public key (new only).
Verifier: TypeAlias = AuditKey | AuditPublicKey


def public_key_of(key: Verifier) -> AuditPublicKey:
    return key.public_key if isinstance(key, AuditKey) else key

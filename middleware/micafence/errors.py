"""Exceptions raised by micafence.

Hierarchy::

    MicafenceError
    ├── PolicyError        a policy or cases file is malformed (carries file, key path, line)
    ├── GeoIPDatabaseError a MaxMind database is missing, corrupt or of the wrong type
    ├── StoreError         the grant store cannot be reached or answered badly
    ├── GrantError         a grant or revocation was refused (no evidence, unknown asset, …)
    ├── BreakGlassError    the break-glass switch cannot be read or thrown
    └── ArchiveError       a policy revision is not in the archive

Nothing raised on the request path escapes the middleware: these are for start-up, the CLI and
reloads, where failing loudly with the location is the point.
"""

from __future__ import annotations


class MicafenceError(Exception):
    """Base class of every error micafence raises on purpose."""


class PolicyError(MicafenceError):
    """A policy (or ``micafence test`` cases) file does not validate.

    ``file``, ``key_path`` (``routes[2].path``) and ``line`` (1-based, ``None`` when the problem
    is the file as a whole) say where; ``problem`` says what.
    """

    def __init__(self, file: str, key_path: str, line: int | None, problem: str) -> None:
        self.file = file
        self.key_path = key_path
        self.line = line
        self.problem = problem
        where = f"{file}:{line}" if line is not None else file
        at = f" {key_path}:" if key_path else ""
        super().__init__(f"{where}:{at} {problem}")


class GeoIPDatabaseError(MicafenceError):
    """A MaxMind database cannot be used; ``path`` names it."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"GeoIP database {path}: {problem}")


class StoreError(MicafenceError):
    """The grant store failed; the driver's own exception is chained as ``__cause__``."""


class GrantError(MicafenceError):
    """A grant or revocation was refused; the message says which rule refused it."""


class BreakGlassError(MicafenceError):
    """The break-glass state file is unreadable, or a switch cannot be thrown as asked."""


class ArchiveError(MicafenceError):
    """The policy archive has no revision matching the request (or cannot be read)."""

"""Reading a secret key file (the audit key, the grant key): refused unless only its owner can
open it.

A key readable by the group or by others is a key shared with every account on the machine
(or, in a container, with every process of another user): whoever reads the audit key can
forge the log's signatures, whoever reads the grant key can sign grants. So a key file whose
mode grants the group or others anything (``mode & 0o077``) is refused with an error naming
the file and the ``chmod`` that fixes it, as is a missing or unreadable one. Symbolic links are
followed (a Kubernetes secret volume mounts its files through them; give the volume
``defaultMode: 0400``).
"""

from __future__ import annotations

import os
import stat


def read_key_file(path: str | os.PathLike[str], what: str,
                  error: type[Exception]) -> str:
    """The text of the ``what`` file at ``path`` (``what`` like ``"audit key"``), or ``error``
    saying why it cannot be used."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}") from exc
    try:
        # Checked on the open file, so the answer is about the bytes read, not a path that
        # could be swapped in between.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} file {path} is not a regular file")
        if mode & 0o077:
            raise error(
                f"{what} file {path} can be opened by its group or by others (mode "
                f"{stat.S_IMODE(mode):04o}): a secret key must be the owner's only; run "
                f"`chmod 600 {path}`"
            )
        with os.fdopen(os.dup(fd), encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {path}: {exc}") from exc
    finally:
        os.close(fd)

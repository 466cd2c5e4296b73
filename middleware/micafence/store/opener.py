"""Choosing a store by URL: ``memory://``, ``file://PATH``, ``redis://…`` and the cluster forms.

Backends other than memory are imported only when their URL is opened, so a worker using
``memory://`` or ``file://`` never imports the Redis driver.
"""

from __future__ import annotations

import os

from micafence.errors import StoreError
from micafence.grants.signing import GrantKey, resolve_key
from micafence.store.base import Store
from micafence.store.memory import MemoryStore


def open_store(
    url: str, *, grant_key: GrantKey | str | os.PathLike[str] | None = None
) -> Store:
    """The store for a URL: ``memory://``, ``file://PATH``, ``redis://…``, ``rediss://…``, or
    ``redis+cluster://HOST:PORT`` (``rediss+cluster://``) for any node of a Redis Cluster.

    ``grant_key`` signs and verifies grant records (``file://`` and ``redis://``): a
    :class:`~micafence.grants.signing.GrantKey`, the path of a key file, or ``None`` for
    ``$MICAFENCE_GRANT_KEY`` / ``$MICAFENCE_GRANT_KEY_FILE``. ``redis://`` refuses to open
    without one; ``memory://`` keeps objects in this process and has nothing to sign.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "file":
        from micafence.store.file_store import FileStore

        return FileStore(rest, key=resolve_key(grant_key))
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from micafence.store.redis_store import RedisStore

        return RedisStore(url, key=resolve_key(grant_key), cluster=scheme.endswith("+cluster"))
    raise StoreError(f"unsupported store URL {url!r} (supported: memory://, file://PATH, "
                     "redis://HOST[:PORT]/DB, rediss://…, redis+cluster://HOST:PORT)")

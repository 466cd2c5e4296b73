"""Bounded memo tables for the request path: a ceiling on entries and on bytes.

Every memo micafence keeps per request is keyed by something a visitor can vary (an address, a
path), so each needs a ceiling, or a flood of distinct requests grows the worker without end.
:class:`BoundedCache` is the one shape for that. Its ``get`` is the underlying ``dict``'s own
method, so a hit costs what a dictionary look-up costs; :meth:`~BoundedCache.put` starts over
empty when an entry would pass either ceiling. Starting over, rather than evicting the oldest
entry, keeps hits free of bookkeeping: a flood costs re-deciding, never memory.

Bytes are what the caller says an entry holds (:meth:`~BoundedCache.put`'s ``size``): an
estimate of the key and value beyond a fixed per-entry overhead the caller folds in, so that a
key carrying a long path counts for more than one carrying an address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A memo of at most ``max_entries`` entries and ``max_bytes`` bytes (``None``: no byte
    ceiling), emptied when an entry would pass either.

    An entry larger than a quarter of ``max_bytes`` is not kept at all: one such entry would
    otherwise empty the table for everyone else. ``get(key)`` answers ``None`` when the key is
    not held (so ``None`` is not a value to memoise).
    """

    __slots__ = ("_bytes", "_entries", "get", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1 (or None)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[K, V] = {}
        self._bytes = 0
        #: The value held for a key, or ``None``: the dictionary's own ``get``.
        self.get: Callable[[K], V | None] = self._entries.get

    def put(self, key: K, value: V, size: int = 0) -> bool:
        """Hold ``value`` for ``key``, counting ``size`` bytes (ignored without a byte ceiling).

        ``False`` when the table had to start over empty to take the entry, or when the entry
        is too large to keep. Putting a key again counts its bytes again until the table next
        empties: an overestimate, so the ceiling still holds (a caller growing one value in
        place puts it again with the growth as ``size``).
        """
        entries = self._entries
        kept = True
        max_bytes = self.max_bytes
        if max_bytes is not None:
            if size > max_bytes // 4:
                entries.pop(key, None)  # a value grown too large is not kept either
                return False
            if self._bytes + size > max_bytes:
                entries.clear()
                self._bytes = 0
                kept = False
            self._bytes += size
        if len(entries) >= self.max_entries and key not in entries:
            entries.clear()
            self._bytes = size if max_bytes is not None else 0
            kept = False
        entries[key] = value
        return kept

    def clear(self) -> None:
        """Forget every entry (the same table object: ``get`` stays bound to it)."""
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The bytes counted for the entries held now (0 without a byte ceiling)."""
        return self._bytes

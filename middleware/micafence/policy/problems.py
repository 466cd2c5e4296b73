"""Where a policy load puts its errors: raised at the first (start-up, reload) or all kept (check).

Loading for use stops at the first error, as it always did. ``micafence check`` wants every error
it can report in one run, so it loads with ``Problems(collect=True)``: each independent part of
the file (a top-level section, a zone, a route, a rule) is validated on its own and its first
error kept, so one mistake does not hide the next. A part that depends on another (promotions on
the zones and routes) is skipped when that part failed, rather than report consequences of an
error already reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from micafence.errors import PolicyError

T = TypeVar("T")


class Problems:
    """Errors found so far; :meth:`attempt` runs one independent part of a load."""

    __slots__ = ("collect", "found")

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.found: list[PolicyError] = []

    def attempt(self, parse: Callable[[], T], fallback: T) -> T:
        """``parse()``; if collecting, a :class:`PolicyError` is kept and ``fallback`` returned."""
        if not self.collect:
            return parse()
        try:
            return parse()
        except PolicyError as exc:
            self.add(exc)
            return fallback

    def add(self, error: PolicyError) -> None:
        """Keep ``error`` (raise it when not collecting); an error seen twice is kept once."""
        if not self.collect:
            raise error
        if not any(_same(error, seen) for seen in self.found):
            self.found.append(error)

    def ordered(self) -> list[PolicyError]:
        """The errors in file order (errors about the file as a whole first)."""
        return sorted(self.found, key=lambda e: (e.file, e.line or 0))


def _same(a: PolicyError, b: PolicyError) -> bool:
    return (a.file, a.line, a.key_path, a.problem) == (b.file, b.line, b.key_path, b.problem)

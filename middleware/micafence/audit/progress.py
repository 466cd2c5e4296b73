"""Progress of a long audit command on stderr: how much of the log is read, how fast, how long.

``micafence audit verify|export`` and ``micafence report`` read logs of any size; on a large
one they run for minutes. On a terminal one status line is rewritten in place every second
(as ``dd status=progress`` does); when stderr is not a terminal (a cron job, a pipe) nothing
is written unless ``--progress`` asks for it, and then a line every ten seconds, so a log file
is not flooded. ``--no-progress`` silences a terminal too. Each phase ends with one line
saying what was done. stdout is never touched: it carries the command's result.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

_TTY_INTERVAL = 1.0
_LOG_INTERVAL = 10.0
_MIB = 1024 * 1024


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress on stderr: bytes read of the total, records, rate and "
                        "time left (default: only when stderr is a terminal)")


class Progress:
    """Reports one phase at a time (:meth:`begin`, :meth:`advance`, :meth:`end`); does
    nothing when off, at the cost of a method call per record."""

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        self._live = enabled and self._stream.isatty()
        self._interval = _TTY_INTERVAL if self._live else _LOG_INTERVAL
        self._clock = clock
        self._begin("", None, None)

    @classmethod
    def for_command(cls, label: str, choice: bool | None) -> Progress:
        """``choice`` is ``--progress`` (True), ``--no-progress`` (False) or neither (None:
        on when stderr is a terminal)."""
        return cls(label, enabled=sys.stderr.isatty() if choice is None else choice)

    def begin(self, what: str, *, total_bytes: int | None = None,
              total_records: int | None = None) -> None:
        """Start a phase: ``what`` is being done, to ``total_bytes`` or ``total_records``."""
        self._begin(what, total_bytes, total_records)

    def _begin(self, what: str, total_bytes: int | None, total_records: int | None) -> None:
        self._what = what
        self._total_bytes, self._total_records = total_bytes, total_records
        self._bytes = self._records = 0
        self._started = self._clock()
        self._next = self._started + self._interval

    def advance(self, size: int = 0, records: int = 1) -> None:
        """``records`` more done, ``size`` more bytes read."""
        if not self.enabled:
            return
        self._bytes += size
        self._records += records
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._show(self._status(now, final=False), final=False)

    def end(self) -> None:
        """Say what the phase did (one line, kept on a terminal)."""
        if self.enabled:
            self._show(self._status(self._clock(), final=True), final=True)

    def _status(self, now: float, *, final: bool) -> str:
        elapsed = max(now - self._started, 1e-6)
        parts = []
        fraction = None
        if self._total_bytes is not None:
            parts.append(f"{self._bytes / _MIB:.1f}/{self._total_bytes / _MIB:.1f} MiB")
            fraction = self._bytes / self._total_bytes if self._total_bytes else 1.0
        elif self._bytes:
            parts.append(f"{self._bytes / _MIB:.1f} MiB")
        if self._total_records is not None:
            parts.append(f"{self._records}/{self._total_records} records")
            fraction = self._records / self._total_records if self._total_records else 1.0
        else:
            parts.append(f"{self._records} records")
        if fraction is not None and not final:
            parts[0] += f" ({fraction:.0%})"
        if self._bytes:
            parts.append(f"{self._bytes / _MIB / elapsed:.1f} MiB/s")
        parts.append(f"{elapsed:.0f} s" if not final else f"done in {elapsed:.1f} s")
        if fraction and not final:
            parts.append(f"about {elapsed * (1 - fraction) / fraction:.0f} s left")
        return f"{self.label}: {self._what}: " + ", ".join(parts)

    def _show(self, text: str, *, final: bool) -> None:
        if self._live:  # rewrite the status line in place; a final one stays
            self._stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

"""Where a benchmark run is, as it goes: one line on stderr per step, naming the phase, what is
being measured and the time since the run started. The report itself stays on stdout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: ``progress(phase, step)``: called before each step of a run.
ProgressReport = Callable[[str, str], None]


def quiet(phase: str, step: str) -> None:
    """No progress lines (the tools that print their own)."""


class Progress:
    """Prints ``micafence bench [  12.3 s] in-process: signup_block (5/8)`` lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._started = time.monotonic()

    def __call__(self, phase: str, step: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f"micafence bench [{elapsed:6.1f} s] {phase}: {step}",
              file=self._stream or sys.stderr, flush=True)

"""Stopping micafence's background tasks (grant listener and poller, metrics sampler, policy
watcher) so that a shutdown always ends. The audit flusher is not cancelled but asked to stop
(:meth:`micafence.audit.log.AuditLog.aclose`): a batch it is writing cannot be called back."""

from __future__ import annotations

import asyncio
from typing import Any

_RECANCEL = 0.1  # seconds between cancellations of a task that did not end


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended.

    One ``cancel()`` is not enough: a cancellation that arrives as a library's read timeout
    expires can come out of the read as a timeout (``asyncio.timeout`` before Python 3.12), and
    a loop that retries on timeouts then runs on. So the task is cancelled again until it ends.
    What it ended with is not raised here (it was stopped on purpose); the caller's own
    cancellation is.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved

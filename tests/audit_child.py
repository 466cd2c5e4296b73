"""A decision-log writer run as a child process, to be stopped by a real signal at any moment.

``python -m tests.audit_child AUDIT_DIR JOURNAL`` serves EU requests through micafence (with
an :class:`~micafence.audit.log.AuditLog` writing to ``AUDIT_DIR``) as fast as it can, and
records an event every few requests. Small batches and a 5 ms flush interval keep the flusher
writing nearly all the time, so a signal usually lands in the middle of a batch. SIGTERM is
handled as a server's graceful shutdown does: stop taking requests, then ``aclose()``.

The journal (appended with one ``write`` per line, so it survives SIGKILL up to the last
line) says what the parent needs to count records against:

- ``ready WRITER``: the signal handler is in place;
- ``asked ID`` before a request or event, ``answered ID STATUS`` once it was answered (an
  event is answered when ``record_event`` accepted it);
- ``durable N``: at least N entries (decisions and events) are on disk;
- ``closed``: the shutdown finished.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from tests.audit_support import KEY, SE, client, guarded, policy_with

EVENT_EVERY = 5


async def serve(directory: str, journal: str) -> None:
    out = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(line: str) -> None:
        os.write(out, line.encode() + b"\n")

    log = AuditLog(FileSink(directory), key=KEY, flush_interval=0.005, batch_size=8)
    app = guarded(log, policy_with())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await log.start()
    note(f"ready {log.writer}")
    durable = 0
    number = 0
    async with client(app) as http:
        while not stop.is_set():
            number += 1
            entry = f"c{number}"
            note(f"asked {entry}")
            if number % EVENT_EVERY == 0:
                accepted = log.record_event("onboarding.token_used", {"token": entry})
                note(f"answered {entry} {'event' if accepted else 'refused'}")
            else:
                # Sign-ups are refused (451) and withdrawals pass as wind-down (evidence).
                path = "/api/accounts" if number % 2 else "/api/withdrawals"
                response = await http.post(path, json={"asset": "BTC", "amount": "1"},
                                           headers={"X-Forwarded-For": SE,
                                                    "X-Client-Id": entry})
                note(f"answered {entry} {response.status_code}")
            if log.written != durable:
                durable = log.written
                note(f"durable {durable}")
            await asyncio.sleep(0)  # the flusher's turn, as between requests on a server
    await log.aclose()
    note("closed")


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))

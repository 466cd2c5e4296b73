"""A middleware that could not start: what it answers instead of deciding.

Starlette and FastAPI build their middleware lazily, inside the server's first call to the app:
the lifespan. An exception from :class:`~micafence.MicafenceMiddleware`'s constructor would
leave that call before any lifespan message, and uvicorn's default lifespan (``auto``) takes that
for an app without lifespan support: it logs "ASGI 'lifespan' protocol appears unsupported",
serves anyway, and every request builds the stack again and fails with 500. So the constructor
keeps a load error (a :class:`~micafence.errors.MicafenceError`: the policy, a database, the
store, a key) and the middleware answers with
:func:`micafence.answers.answer_unstarted` instead:

- ``lifespan``: ``lifespan.startup.failed`` naming the problem, so the server stops (uvicorn
  exits with code 3; gunicorn's arbiter with "Worker failed to boot", code 3);
- ``http``: 503, on every request and every path (the probes too), where nothing stops the
  server (``--lifespan off``);
- ``websocket``: closed before accept (servers answer the handshake with 403).
"""

from __future__ import annotations


def startup_message(error: Exception) -> str:
    """The one line that says why micafence did not start (the error names the file)."""
    return f"micafence cannot start: {error}"

"""A middleware that could not start: what it answers instead of deciding.

Starlette and FastAPI build their middleware lazily, inside the server's first call to the app:
the lifespan. An exception from :class:`~micafence.MicafenceMiddleware`'s constructor would
leave that call before any lifespan message, and uvicorn's default lifespan (``auto``) takes that
for an app without lifespan support: it logs "ASGI 'lifespan' protocol appears unsupported",
serves anyway, and every request builds the stack again and fails with 500. So the constructor
keeps a load error (a :class:`~micafence.errors.MicafenceError`: the policy, a database, the
store, a key) and the middleware answers with :func:`answer_unstarted` instead:

- ``lifespan``: ``lifespan.startup.failed`` naming the problem, so the server stops (uvicorn
  exits with code 3; gunicorn's arbiter with "Worker failed to boot", code 3);
- ``http``: 503, on every request and every path (the probes too), where nothing stops the
  server (``--lifespan off``);
- ``websocket``: closed before accept (servers answer the handshake with 403).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from micafence.asgi import Receive, Send

_BODY = b"503 Service Unavailable: the compliance middleware did not start (see the server log)\n"
_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_BODY)).encode("ascii")),
    (b"cache-control", b"no-store"),
]


def startup_message(error: Exception) -> str:
    """The one line that says why micafence did not start (the error names the file)."""
    return f"micafence cannot start: {error}"


async def answer_unstarted(
    error: Exception, scope: MutableMapping[str, Any], receive: Receive, send: Send
) -> None:
    """Answer ``scope`` for a middleware whose start failed with ``error``."""
    kind = scope["type"]
    if kind == "http":
        await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})
    elif kind == "websocket":
        if (await receive()).get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1011})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.failed",
                            "message": startup_message(error)})
                return
            if message.get("type") == "lifespan.shutdown":  # a server that goes on anyway
                await send({"type": "lifespan.shutdown.complete"})
                return

"""A server that rewrites the client address before micafence runs: seen, logged once, and
reported not ready for the rest of the process's life.

uvicorn turns proxy headers on by default (so does gunicorn with its ``UvicornWorker``): when
the peer is in ``--forwarded-allow-ips`` (default ``127.0.0.1,::1``; ``'*'`` is everyone) it
replaces ``scope["client"]`` with an address taken from ``X-Forwarded-For`` and leaves the
header in place. With ``'*'`` that address is the left-most entry, which the client writes.
micafence then never learns who connected, so ``client_ip.trusted_proxies`` cannot protect
anything. Such a client is marked with port 0 (uvicorn, and hypercorn's ``ProxyFixMiddleware``),
which no TCP peer has: port 0 with a forwarded header present is the server's doing.

:class:`~micafence.decide.Enforcer` decides those requests as if the address were unknown
(``unknown_country``: closed for account creation and services) and trips the
:class:`ClientRewriteAlarm` the middleware holds: one error log naming the fix, and a failed
readiness check until the process is restarted, since the server's configuration cannot change
under it. The alarm belongs to the middleware, not to an enforcer, so hot reloads keep it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from micafence.logs import log_event

#: What to do about it, in the log and the readiness report.
FIX = (
    "run uvicorn with --no-proxy-headers (proxy_headers=False in uvicorn.run/Config), or "
    "gunicorn with -k micafence.workers.UvicornWorker; micafence reads X-Forwarded-For itself, "
    "from client_ip.trusted_proxies only"
)

# Headers a server may have taken the client from: uvicorn reads X-Forwarded-For, hypercorn's
# ProxyFixMiddleware either one.
_FORWARDED_HEADERS = (b"x-forwarded-for", b"forwarded")


def forwarded_header_in(headers: Iterable[tuple[bytes, bytes] | list[bytes]]) -> str | None:
    """The name of the first forwarded header (``x-forwarded-for`` / ``forwarded``) present."""
    for header in headers:
        if header[0] in _FORWARDED_HEADERS:
            return header[0].decode("latin-1")
    return None


class ClientRewriteAlarm:
    """Set the first time the server is seen rewriting client addresses; never cleared.

    ``seen_at`` and ``header`` say when and from which header; :attr:`problem` is the readiness
    check's text (``None`` while all is well).
    """

    def __init__(self) -> None:
        self.seen_at: dt.datetime | None = None
        self.header: str | None = None

    @property
    def tripped(self) -> bool:
        return self.seen_at is not None

    def trip(self, header: str) -> None:
        """Record the first rewritten request and log the error; later calls do nothing."""
        if self.seen_at is not None:
            return
        self.seen_at = dt.datetime.now(dt.UTC)
        self.header = header
        log_event(
            logging.ERROR, "server.rewrites_client",
            f"micafence: the server rewrote the client address from the {header} header before "
            "micafence ran (client port 0, header still present), so who connected is unknown: "
            "such requests are decided as unknown_country and this process reports not ready "
            f"until it is restarted. Fix: {FIX}",
            header=header,
        )

    @property
    def problem(self) -> str | None:
        if self.seen_at is None:
            return None
        return (
            f"the server rewrites the client address from {self.header} (first seen "
            f"{self.seen_at.isoformat(timespec='seconds')}); restart with the fix: {FIX}"
        )

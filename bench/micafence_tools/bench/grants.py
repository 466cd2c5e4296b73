"""The grant check as a served EU client meets it: the Redis store with its local cache.

:func:`granted_app` starts a private ``redis-server`` on 127.0.0.1, records one grant per client
(spot exchange of BTC against funds, initiated an hour ago) and yields the given app behind
micafence on that store, its cache invalidation running. Requests name the client in
``X-Client-Id`` and the visitor in ``X-Forwarded-For``, from a trusted proxy (127.0.0.1), as
the default policy expects.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from micafence.grants.book import GrantBook
from micafence.grants.signing import GrantKey
from micafence.middleware import MicafenceMiddleware
from micafence_tools.bench.apps import database_path, policy_path
from micafence_tools.bench.inprocess import Request
from micafence_tools.bench.redis_server import RedisServer

IN_SCOPE = '{"pair": "BTC-EUR", "side": "buy", "amount": "0.1"}'
OUT_OF_SCOPE = '{"pair": "ETH-EUR", "side": "buy", "amount": "0.1"}'  # granted BTC, not ETH
PROXY = "127.0.0.1"


def client_ids(count: int) -> list[str]:
    return [f"bench-client-{n}" for n in range(count)]


def orders(visits: Sequence[str], clients: Sequence[str], body: str) -> list[Request]:
    """One order per visit, the visits' clients taken in turn."""
    return [
        Request(PROXY, "POST", "/api/orders", body.encode(),
                (("x-forwarded-for", ip), ("x-client-id", clients[n % len(clients)])))
        for n, ip in enumerate(visits)
    ]


@asynccontextmanager
async def granted_app(clients: Sequence[str], inner: Any) -> AsyncIterator[MicafenceMiddleware]:
    """``inner`` behind micafence on a private Redis store holding a grant for each client."""
    with tempfile.TemporaryDirectory(prefix="micafence-bench-") as folder:
        server = RedisServer(Path(folder))
        app: MicafenceMiddleware | None = None
        store_log = logging.getLogger("micafence")
        level = store_log.level
        try:
            app = MicafenceMiddleware(
                inner, policy=policy_path(), geoip_db=database_path(),
                store=server.url, grant_key=GrantKey.from_text(secrets.token_hex(32)),
                watch=False,
            )
            book = GrantBook(app.store, app.enforcer.policy)
            initiated = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            for client in clients:
                await book.add(client_id=client, service="exchange_for_funds", asset="BTC",
                               initiated_at=initiated, channel="email",
                               evidence="benchmark", verified_by="micafence-bench",
                               country="FR")
            # A throw-away Redis keeps nothing on disk: the production check would say so.
            store_log.setLevel(logging.ERROR)
            await app.store.start(app.enforcer.policy.grant_store)
            yield app
        finally:
            store_log.setLevel(level)
            if app is not None:
                await app.store.close()
            server.stop()

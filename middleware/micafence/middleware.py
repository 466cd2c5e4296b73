"""The ASGI middleware: decide every ``http`` and ``websocket`` request before the app sees it."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from .decision import Decision
from .engine import Enforcer
from .geo import GeoIPDatabase
from .identity import IdentifyFunction
from .policy import Outcome, Policy
from .policy_loader import load_policy
from .responses import STATUS, block_body, block_headers, send_block
from .store import Store, open_store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

logger = logging.getLogger("micafence")

#: Where the decision is put for the app: ``request.state.micafence`` in Starlette.
STATE_KEY = "micafence"


class MicafenceMiddleware:
    """Enforce a micafence policy in front of any ASGI app.

    ``policy`` is a policy file path (or a loaded :class:`~micafence.policy.Policy`);
    ``geoip_db`` is a MaxMind Country or City database path (or an open
    :class:`~micafence.geo.GeoIPDatabase`). Both are required: there is no silent default in
    production, and a missing or corrupt file fails here, at start-up, with its name.
    ``identify`` is the Python identity source used when the policy says
    ``client_identity.source: callable``. ``store`` is a store URL (``memory://``, the
    default) or an open :class:`~micafence.store.Store`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: str | os.PathLike[str] | Policy,
        geoip_db: str | os.PathLike[str] | GeoIPDatabase,
        identify: IdentifyFunction | None = None,
        store: str | Store = "memory://",
    ) -> None:
        self.app = app
        self.store = store if isinstance(store, Store) else open_store(store)
        loaded = policy if isinstance(policy, Policy) else load_policy(Path(policy))
        database = geoip_db if isinstance(geoip_db, GeoIPDatabase) else GeoIPDatabase(geoip_db)
        self.enforcer = Enforcer(loaded, database, identify=identify)
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        logger.info(
            "micafence enforcing policy %s (%s) with %s built %s",
            loaded.name, loaded.revision, database.database_type, database.built_at.isoformat(),
        )

    def on_lifespan(self, startup: Hook | None = None, shutdown: Hook | None = None) -> None:
        """Register background work started and stopped with the server's lifespan."""
        if startup is not None:
            self._startup_hooks.append(startup)
        if shutdown is not None:
            self._shutdown_hooks.append(shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        decision = self.enforcer.decide(scope)
        if decision.outcome is Outcome.REQUIRE_GRANT:
            decision = self.enforcer.without_grant(decision)
        scope.setdefault("state", {})[STATE_KEY] = decision
        if decision.blocked:
            if kind == "http":
                await send_block(scope, send, decision, self.enforcer.policy.blocked_by)
            else:
                await self._refuse_websocket(scope, receive, send, decision)
            return
        await self.app(scope, receive, send)

    async def _refuse_websocket(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision
    ) -> None:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            content_type, body = block_body(decision, as_json=True)
            await send({
                "type": "websocket.http.response.start",
                "status": STATUS,
                "headers": block_headers(
                    decision, content_type, len(body), self.enforcer.policy.blocked_by
                ),
            })
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            # Closing before accept makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": decision.reason})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_with_hooks() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                for hook in self._startup_hooks:
                    await hook()
            return message

        async def send_with_hooks(message: Message) -> None:
            # Our own work stops after the app's shutdown handlers, so it can still record them.
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed",
                                       "lifespan.startup.failed"):
                for hook in self._shutdown_hooks:
                    await hook()
            await send(message)

        await self.app(scope, receive_with_hooks, send_with_hooks)

"""The readiness endpoint: what this worker enforces, with what, and whether it should serve.

Mount ``middleware.health_app()`` in the app (``/healthz`` say). It answers JSON: the policy
(name, revision, source, when loaded, the next effective-date change), the GeoIP database (type,
build date, age, ``database.max_age``), the anonymizer database, the break-glass switches, the
store's reachability, and the reloader's last check and last refusal. The status is 200 when
ready and 503 when not, with the reasons in ``problems``:

- the GeoIP database is older than the policy's ``database.max_age`` (also logged as a warning
  by the reloader): geolocation goes stale as address blocks move, so the worker is not ready;
- the store does not answer its ``ping`` (a store without ``ping`` is "not configured"):
  grants cannot be checked, so in-scope clients would all be refused;
- the server was seen rewriting the client address before micafence ran
  (:mod:`micafence.location.rewrite_alarm`): every proxied visitor is decided as an unknown
  address, and the server's settings cannot change under a running process, so the worker
  stays not ready until it is restarted with the fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from micafence.errors import MicafenceError
from micafence.location.dbcheck import too_old
from micafence.policy.durations import format_duration

if TYPE_CHECKING:
    from micafence.middleware import MicafenceMiddleware

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


class HealthEndpoint:
    """An ASGI app answering readiness for one :class:`~micafence.MicafenceMiddleware`."""

    def __init__(self, middleware: MicafenceMiddleware, *, store_timeout: float = 1.0) -> None:
        self.middleware = middleware
        self.store_timeout = store_timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        report = await self.report()
        body = json.dumps(report, indent=2).encode("utf-8")
        await send({
            "type": "http.response.start",
            "status": 200 if report["ready"] else 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"cache-control", b"no-store"),
            ],
        })
        await send({"type": "http.response.body",
                    "body": b"" if scope.get("method") == "HEAD" else body})

    async def report(self) -> dict[str, Any]:
        """The readiness report (what the endpoint sends as JSON)."""
        reloader = self.middleware.reloader
        enforcer = self.middleware.enforcer  # one read: the report describes one generation
        now = reloader.clock()
        policy, geoip, anonymizer = enforcer.policy, enforcer.geoip, enforcer.anonymizer
        problems: list[str] = []
        max_age = policy.database.max_age
        if too_old(geoip.built_at, policy.database, now):
            problems.append(
                f"GeoIP database built {geoip.built_at:%Y-%m-%d} is older than database.max_age "
                f"({format_duration(max_age or dt.timedelta())})"
            )
        store = await self._store_status()
        if store["status"] == "unreachable":
            problems.append(f"store unreachable: {store['detail']}")
        rewritten = self.middleware.rewrite_alarm.problem
        if rewritten is not None:
            problems.append(rewritten)
        refusals = [e for e in reloader.events if e.outcome == "refused"]
        return {
            "ready": not problems,
            "problems": problems,
            "checked_at": now.isoformat(),
            "policy": {
                "name": policy.name,
                "revision": policy.revision,
                "source": policy.source,
                "mode": policy.mode.value,
                "loaded_at": reloader.loaded_at["policy"].isoformat(),
                "next_change": enforcer.next_change.isoformat() if enforcer.next_change else None,
            },
            "database": {
                "type": geoip.database_type,
                "path": geoip.path,
                "built_at": geoip.built_at.isoformat(),
                "age": format_duration(now - geoip.built_at),
                "max_age": format_duration(max_age) if max_age else None,
                "loaded_at": reloader.loaded_at["geoip"].isoformat(),
            },
            "anonymizer": None if anonymizer is None else {
                "type": anonymizer.database_type,
                "path": anonymizer.path,
                "built_at": anonymizer.built_at.isoformat(),
                "age": format_duration(now - anonymizer.built_at),
                "loaded_at": reloader.loaded_at["anonymizer"].isoformat(),
            },
            "breakglass": enforcer.breakglass.as_dict(),
            "store": store,
            "reload": {
                "interval": reloader.interval,
                "last_check": reloader.last_check.isoformat(),
                "last_refused": None if not refusals else {
                    "at": refusals[-1].at.isoformat(), "kind": refusals[-1].kind,
                    "path": refusals[-1].path, "problem": refusals[-1].detail,
                },
            },
        }

    async def _store_status(self) -> dict[str, str]:
        store = self.middleware.store
        ping = getattr(store, "ping", None)
        if not callable(ping):
            return {"status": "not configured", "kind": type(store).__name__}
        try:
            answer = await asyncio.wait_for(ping(), self.store_timeout)
        except TimeoutError:
            return {"status": "unreachable", "kind": type(store).__name__,
                    "detail": f"no answer within {self.store_timeout:g} s"}
        except (MicafenceError, OSError) as exc:
            return {"status": "unreachable", "kind": type(store).__name__, "detail": str(exc)}
        if answer is False:
            return {"status": "unreachable", "kind": type(store).__name__,
                    "detail": "ping answered False"}
        return {"status": "ok", "kind": type(store).__name__}

"""Liveness and readiness: whether this worker runs, and whether it should be sent traffic.

Give the middleware ``health_path="/healthz"`` and it answers ``GET``/``HEAD``
``/healthz/live`` and ``/healthz/ready`` itself: probes are never decided, recorded or counted.
(:meth:`~micafence.MicafenceMiddleware.health_app` and :meth:`~micafence.MicafenceMiddleware
.liveness_app` are the same endpoints, to mount in an app's router instead.)

- **Liveness** (:class:`LivenessEndpoint`) answers 200 ``{"status": "live"}`` whenever the
  worker's event loop answers. It looks at nothing shared on purpose: a Redis outage must never
  make an orchestrator restart every pod. (A middleware whose start failed answers 503 to every
  request, probes included.)
- **Readiness** (:class:`HealthEndpoint`) answers JSON: the policy (name, revision, source, when
  loaded, the next effective-date change), the GeoIP database (type, build date, age,
  ``database.max_age``), whether anonymizers are screened and the anonymizer database, the
  break-glass switches, the store's reachability, the reloader's last check and last refusal;
  and a ``status``: ``ready`` (200), ``degraded`` (200: serve, but something is wrong; in
  ``problems``) or ``not_ready`` (503).

Each readiness check in :data:`READINESS_CHECKS` looks at one thing and returns the
:class:`Fault` it finds, or ``None``. A fault that hits every pod alike (a shared store, a
database shipped to all) takes the posture the policy's ``health`` section gives it
(:mod:`micafence.policy.health`, ``degraded`` by default); one that is this process's
own is ``not_ready``. The checks:

- ``database_stale``: the GeoIP database is older than the policy's ``database.max_age`` (also
  logged as a warning by the reloader): geolocation goes stale as address blocks move;
- ``store_unreachable``: the store's :meth:`~micafence.store.base.Store.check` fails (the memory
  store has nothing to check: "not configured"): grant checks fail closed, so in-scope clients
  are refused meanwhile;
- ``client_rewritten`` (always ``not_ready``): the server was seen rewriting the client address
  before micafence ran (:mod:`micafence.location.rewrite_alarm`): every proxied visitor is
  decided as an unknown address, and the server's settings cannot change under a running
  process, so the worker stays not ready until it is restarted with the fix.

The report also says whether anonymizers are screened (``anonymizer_screening``, see
:func:`anonymizer_screening`): a choice of set-up, not a fault, so it changes no status; the
middleware logs a warning at start when it is ``off``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from micafence.asgi import Receive, Send
from micafence.errors import MicafenceError
from micafence.instants import format_duration
from micafence.live.reload import ReloadEvent
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.dbcheck import too_old
from micafence.location.rewrite_alarm import ClientRewriteAlarm
from micafence.observed import CurrentEnforcer, InForce
from micafence.policy.health import Posture
from micafence.policy.model import Policy
from micafence.store.base import Store

_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


@dataclass(frozen=True, slots=True)
class Fault:
    """What one readiness check found wrong."""

    check: str  # the check's name: database_stale, store_unreachable, …
    problem: str  # for people, in ``problems``
    posture: Posture  # degraded (200) or not_ready (503)


class ReloadState(Protocol):
    """What readiness reads of the reloader: its clock and what it loaded, checked, refused."""

    @property
    def interval(self) -> float: ...

    @property
    def last_check(self) -> dt.datetime: ...

    @property
    def loaded_at(self) -> Mapping[str, dt.datetime]: ...

    @property
    def events(self) -> Sequence[ReloadEvent]: ...

    def clock(self) -> dt.datetime: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """What the readiness checks look at, read once per probe (one enforcer generation)."""

    enforcer: InForce
    now: dt.datetime
    store: dict[str, str]  # the store section of the report (status: ok | unreachable | …)
    rewrite_problem: str | None  # the client-rewrite alarm's problem, if it tripped


ReadinessCheck = Callable[[Observed], Fault | None]

#: :func:`anonymizer_screening`'s answers.
SCREENING_ON, SCREENING_OFF, SCREENING_DISABLED = "on", "off", "disabled_by_policy"


def anonymizer_screening(policy: Policy, anonymizer: AnonymousIPDatabase | None) -> str:
    """Are VPN, proxy, Tor and hosting addresses screened? ``on`` (an Anonymous-IP database
    and the policy's tiers), ``disabled_by_policy`` (the policy says ``anonymizers: none``) or
    ``off``: the policy has tiers but there is no database, so no address is ever flagged and
    a relay is located where it stands, not where its client is."""
    if not policy.anonymizers:
        return SCREENING_DISABLED
    return SCREENING_ON if anonymizer is not None else SCREENING_OFF


def database_stale(seen: Observed) -> Fault | None:
    """The GeoIP database is older than ``database.max_age``."""
    policy, geoip = seen.enforcer.policy, seen.enforcer.geoip
    if not too_old(geoip.built_at, policy.database, seen.now):
        return None
    max_age = format_duration(policy.database.max_age or dt.timedelta())
    return Fault("database_stale", f"GeoIP database built {geoip.built_at:%Y-%m-%d} is older "
                 f"than database.max_age ({max_age})", policy.health.database_stale)


def store_unreachable(seen: Observed) -> Fault | None:
    """The store's check fails."""
    if seen.store["status"] != "unreachable":
        return None
    return Fault("store_unreachable", f"store unreachable: {seen.store['detail']}",
                 seen.enforcer.policy.health.store_unreachable)


def client_rewritten(seen: Observed) -> Fault | None:
    """The server rewrote a client address before micafence ran (this process's own fault)."""
    problem = seen.rewrite_problem
    return None if problem is None else Fault("client_rewritten", problem, Posture.NOT_READY)


#: Every readiness check, in report order: add a check by adding its function here.
READINESS_CHECKS: tuple[ReadinessCheck, ...] = (
    database_stale, store_unreachable, client_rewritten,
)


async def _answer(scope: MutableMapping[str, Any], send: Send, status: int,
                  report: dict[str, Any]) -> None:
    body = json.dumps(report, indent=2).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*_HEADERS, (b"content-length", str(len(body)).encode("ascii"))],
    })
    await send({"type": "http.response.body",
                "body": b"" if scope.get("method") == "HEAD" else body})


async def _refuse_other_scopes(scope: MutableMapping[str, Any], send: Send) -> bool:
    """Answer what is not an HTTP request (True: answered, nothing more to do)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return True
    return bool(scope["type"] != "http")


class LivenessEndpoint:
    """An ASGI app answering liveness: 200 while the worker's event loop answers."""

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if not await _refuse_other_scopes(scope, send):
            await _answer(scope, send, 200, {"status": "live"})


class HealthEndpoint:
    """An ASGI app answering readiness from what it is handed: the enforcer in force
    (``current()``), the reloader's state, the store (its :meth:`~micafence.store.base.Store
    .check`) and the client-rewrite alarm. :meth:`~micafence.MicafenceMiddleware.health_app`
    makes one for a middleware."""

    def __init__(
        self, current: CurrentEnforcer, reloader: ReloadState, store: Store,
        rewrite_alarm: ClientRewriteAlarm, *, store_timeout: float = 1.0,
    ) -> None:
        self.current = current
        self.reloader = reloader
        self.store = store
        self.rewrite_alarm = rewrite_alarm
        self.store_timeout = store_timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if await _refuse_other_scopes(scope, send):
            return
        report = await self.report()
        await _answer(scope, send, 503 if report["status"] == "not_ready" else 200, report)

    async def report(self) -> dict[str, Any]:
        """The readiness report (what the endpoint sends as JSON)."""
        reloader = self.reloader
        enforcer = self.current()  # one read: the report describes one generation
        now = reloader.clock()
        seen = Observed(enforcer, now, await self._store_status(), self.rewrite_alarm.problem)
        faults = [fault for check in READINESS_CHECKS if (fault := check(seen)) is not None]
        status = "ready"
        if faults:
            status = "not_ready" if any(f.posture is Posture.NOT_READY for f in faults) \
                else "degraded"
        policy, geoip, anonymizer = enforcer.policy, enforcer.geoip, enforcer.anonymizer
        max_age = policy.database.max_age
        refusals = [e for e in reloader.events if e.outcome == "refused"]
        return {
            "status": status,
            "ready": status != "not_ready",
            "problems": [fault.problem for fault in faults],
            "faults": {fault.check: fault.posture.value for fault in faults},
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
            "anonymizer_screening": anonymizer_screening(policy, anonymizer),
            "anonymizer": None if anonymizer is None else {
                "type": anonymizer.database_type,
                "path": anonymizer.path,
                "built_at": anonymizer.built_at.isoformat(),
                "age": format_duration(now - anonymizer.built_at),
                "loaded_at": reloader.loaded_at["anonymizer"].isoformat(),
            },
            "breakglass": enforcer.breakglass.as_dict(),
            "store": seen.store,
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
        store = self.store
        kind = type(store).__name__
        try:
            answered = await asyncio.wait_for(store.check(), self.store_timeout)
        except TimeoutError:
            return {"status": "unreachable", "kind": kind,
                    "detail": f"no answer within {self.store_timeout:g} s"}
        except (MicafenceError, OSError) as exc:
            return {"status": "unreachable", "kind": kind, "detail": str(exc)}
        return {"status": "ok" if answered else "not configured", "kind": kind}

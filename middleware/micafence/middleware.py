"""The ASGI middleware: decide every ``http`` and ``websocket`` request before the app sees it."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from micafence.answers import answer_unstarted
from micafence.asgi import ASGIApp, Message, Receive, Scope, Send
from micafence.clients.registry import ClientRegistry
from micafence.decide import Enforcer
from micafence.decision import STATE_KEY
from micafence.errors import MicafenceError
from micafence.grants.signing import GrantKey
from micafence.identity import IdentifyFunction
from micafence.instants import Clock, utc_now
from micafence.live.health import (
    SCREENING_OFF,
    HealthEndpoint,
    LivenessEndpoint,
    anonymizer_screening,
)
from micafence.live.reload import Reloader
from micafence.live.server_workers import worker_count
from micafence.live.startup import startup_message
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.geo import GeoIPDatabase
from micafence.location.rewrite_alarm import ClientRewriteAlarm
from micafence.logs import log_event
from micafence.pipeline import Pipeline
from micafence.policy.model import Policy
from micafence.promotions.evidence_budget import EvidenceBudget
from micafence.store.base import Store
from micafence.store.memory import MemoryStore
from micafence.store.opener import open_store

if TYPE_CHECKING:
    from micafence.audit.log import AuditLog
    from micafence.metrics import Metrics

Hook = Callable[[], Awaitable[None]]

logger = logging.getLogger("micafence")

#: The methods the health and metrics paths answer themselves (others are decided as usual).
_OWN_METHODS = frozenset({"GET", "HEAD"})

__all__ = ["STATE_KEY", "MicafenceMiddleware"]


class MicafenceMiddleware:
    """Enforce a micafence policy in front of any ASGI app.

    ``policy`` is a policy file path (or a loaded :class:`~micafence.policy.model.Policy`);
    ``geoip_db`` is a MaxMind Country or City database path (or an open
    :class:`~micafence.location.geo.GeoIPDatabase`). Both are required: there is no silent default
    in
    production, and a missing or corrupt file fails here, at start-up, with its name.
    ``identify`` is the Python identity source used when the policy says
    ``client_identity.source: callable``. ``store`` is a store URL (``memory://``, the
    default; ``file://PATH``, ``redis://…``) or an open :class:`~micafence.store.base.Store`;
    ``grant_key`` (a :class:`~micafence.grants.signing.GrantKey` or a key file path; default
    ``$MICAFENCE_GRANT_KEY[_FILE]``) signs and verifies its grant records. A blocked account
    creation that presents a grant's onboarding token is settled by
    :class:`~micafence.grants.onboarding.OnboardingGate`. ``clock`` (a callable returning an
    aware UTC datetime) is what grant time bounds are checked against; tests pass their own.

    Live operations (:mod:`micafence.live.reload`): while the server's lifespan runs, the policy
    file, ``geoip_db``, ``anonymizer_db`` (an optional MaxMind Anonymous-IP database) and the
    break-glass state in ``breakglass_dir`` are looked at every ``reload_interval`` seconds
    and hot-reloaded when replaced (``watch=False`` turns that off). Every policy revision
    loaded is copied into ``archive_dir`` when given. A database older than the one in use is
    refused unless ``allow_older_database``. ``clock`` also decides which zones and rules are
    in force (``effective_from`` / ``effective_until``).

    Probes and scrapes (:mod:`micafence.live.health`): ``health_path="/healthz"`` answers
    liveness at ``/healthz/live`` and readiness at ``/healthz/ready``; ``metrics_path="/metrics"``
    answers the Prometheus scrape of ``metrics`` (one is made when none is given). Exactly those
    paths, ``GET`` and ``HEAD``, are answered here, before any decision: they are never decided,
    recorded or counted. (:meth:`health_app` and :meth:`liveness_app` are the same endpoints,
    for an app that mounts them in its own router, where they are decided like any page.)

    A load error (a :class:`~micafence.errors.MicafenceError`: the policy, a database, the store
    or a key) does not escape the constructor: Starlette and FastAPI build their middleware
    inside the server's lifespan call, where an exception reads as "lifespan unsupported" and the
    server would serve anyway. It is logged (``startup.failed``) and kept in
    :attr:`startup_error`, and the middleware answers the lifespan startup with
    ``lifespan.startup.failed`` naming the file (the server exits) and, without a lifespan, every
    request with 503 (:mod:`micafence.live.startup`).

    ``audit`` (a :class:`~micafence.audit.log.AuditLog`) records every decision other than a plain
    non-restricted pass, and refuses with 503 ``audit_unavailable`` a request whose evidence it
    cannot queue; ``metrics`` (a :class:`~micafence.metrics.Metrics`) counts decisions for
    Prometheus. Both are off unless given.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: str | os.PathLike[str] | Policy,
        geoip_db: str | os.PathLike[str] | GeoIPDatabase,
        identify: IdentifyFunction | None = None,
        store: str | Store = "memory://",
        clock: Clock = utc_now,
        anonymizer_db: str | os.PathLike[str] | AnonymousIPDatabase | None = None,
        watch: bool = True,
        reload_interval: float = 0.5,
        archive_dir: str | os.PathLike[str] | None = None,
        breakglass_dir: str | os.PathLike[str] | None = None,
        allow_older_database: bool = False,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        grant_key: GrantKey | str | os.PathLike[str] | None = None,
        health_path: str | None = None,
        metrics_path: str | None = None,
    ) -> None:
        self.app = app
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        #: Why this middleware did not start (``None``: it did); it then answers 503.
        self.startup_error: MicafenceError | None = None
        # Tripped when the server rewrites client addresses (micafence.location.rewrite_alarm):
        # held here, not by an enforcer, so readiness stays failed across reloads.
        self.rewrite_alarm = ClientRewriteAlarm()
        try:
            opened = store if isinstance(store, Store) else open_store(store, grant_key=grant_key)
            # Every request's settling and action (micafence.pipeline), with what they keep
            # across policy reloads: the store, the solicitation evidence budget, observers.
            self.pipeline = Pipeline(app, opened, clock=clock)
            self.enforcer: Enforcer  # set, and swapped on every reload, by the reloader
            self.reloader = Reloader(
                self, policy=policy, geoip_db=geoip_db, anonymizer_db=anonymizer_db,
                identify=identify, clock=None if clock is utc_now else clock,
                archive_dir=archive_dir, breakglass_dir=breakglass_dir,
                interval=reload_interval, allow_older_database=allow_older_database,
                rewrite_alarm=self.rewrite_alarm,
            )
        except MicafenceError as exc:
            self._not_started(exc)
            return
        loaded, database = self.enforcer.policy, self.enforcer.geoip
        if watch:
            self.on_lifespan(self.reloader.start, self.reloader.stop)
        # The Redis store's cache invalidation and production checks (scopes.redis_checks).
        self.on_lifespan(lambda: self.store.start(self.enforcer.policy.grant_store),
                         self.store.stop)
        if metrics is None and metrics_path is not None:
            from micafence.metrics import Metrics  # prometheus_client only when used

            metrics = Metrics()
        self.pipeline.audit = audit  # micafence.audit.log: records all but plain passes
        self.pipeline.clients.audit = audit  # and the residences the app records (fence.clients)
        self.pipeline.metrics = metrics  # micafence.metrics: Prometheus counters, sampled latency
        if audit is not None:
            audit.follow(lambda: self.enforcer.policy)
            self.on_lifespan(audit.start, audit.aclose)
        if metrics is not None:
            metrics.watch(lambda: self.enforcer, evidence=self.evidence, audit=audit)
            self.on_lifespan(metrics.start, metrics.stop)
            self.store.report_failures_to(metrics.store_error)
        logger.info(
            "micafence enforcing policy %s (%s) with %s built %s",
            loaded.name, loaded.revision, database.database_type, database.built_at.isoformat(),
        )
        self._warn_of_gaps()
        # Answered here before any decision: path -> endpoint, one dict look-up per request.
        self._own_paths: dict[str, ASGIApp] = {}
        if health_path is not None:
            base = "/" + health_path.strip("/") if health_path.strip("/") else ""
            self._own_paths[f"{base}/live"] = self.liveness_app()
            self._own_paths[f"{base}/ready"] = self.health_app()
        if metrics_path is not None and metrics is not None:
            self._own_paths["/" + metrics_path.strip("/")] = metrics.asgi_app()

    # What the pipeline holds, as the observers and tests read (and replace) it.
    @property
    def store(self) -> Store:
        return self.pipeline.store

    @property
    def clients(self) -> ClientRegistry:
        """The client registry on this middleware's store: the host app records where a client
        is established at sign-up or KYC time, e.g.
        ``await fence.clients.record_residence("c-1", "FR", evidence="kyc/881", by="app:kyc")``.
        """
        return self.pipeline.clients

    @property
    def audit(self) -> AuditLog | None:
        return self.pipeline.audit

    @property
    def metrics(self) -> Metrics | None:
        return self.pipeline.metrics

    @property
    def evidence(self) -> EvidenceBudget:
        return self.pipeline.evidence

    @evidence.setter
    def evidence(self, budget: EvidenceBudget) -> None:
        self.pipeline.evidence = budget

    def _warn_of_gaps(self) -> None:
        """Say at start what this set-up leaves undone, rather than leave it to be found out:
        anonymizers not screened, no decision log, a memory store that each of several
        workers holds on its own (docs/hardening.md)."""
        enforcer = self.enforcer
        if anonymizer_screening(enforcer.policy, enforcer.anonymizer) == SCREENING_OFF:
            log_event(logging.WARNING, "startup.anonymizer_screening_off",
                      "micafence: no Anonymous-IP database (anonymizer_db=): VPN, proxy, Tor "
                      "and hosting addresses are located where the relay is, and the policy's "
                      "anonymizers tiers never apply (readiness: anonymizer_screening off); "
                      "give anonymizer_db, or write `anonymizers: none` in the policy if this "
                      "is on purpose", policy=enforcer.policy.source)
        if self.audit is None:
            log_event(logging.WARNING, "startup.no_audit",
                      "micafence: no decision log (audit=): blocks, the grants services were "
                      "used under and restricted visitors let through are not recorded; give "
                      "audit=AuditLog(directory) (docs/audit.md)")
        if isinstance(self.store, MemoryStore):
            workers = worker_count()
            if workers is not None and workers.count > 1:
                log_event(logging.WARNING, "startup.memory_store_workers",
                          f"micafence: the memory store (memory://) is this worker's own, and "
                          f"{workers.count} workers serve this app ({workers.source}): each "
                          "holds different grants, onboarding tokens and solicitation "
                          "evidence, and none sees `micafence grant`'s records; use file:// "
                          "(one host) or redis:// (docs/deployment.md#workers)",
                          workers=workers.count, told_by=workers.source)

    def _not_started(self, error: MicafenceError) -> None:
        self.startup_error = error
        log_event(logging.ERROR, "startup.failed",
                  f"{startup_message(error)} (the server's lifespan startup fails; without a "
                  "lifespan, every request is answered 503)", problem=str(error))
        # Every request of this object is answered by _NotStarted.__call__ from now on; a class
        # of its own keeps that check off the request path of every middleware that started.
        self.__class__ = _NotStarted

    def health_app(self) -> HealthEndpoint:
        """The readiness endpoint (an ASGI app) to mount, e.g. at ``/healthz/ready``
        (``health_path=`` serves it without being decided)."""
        return HealthEndpoint(lambda: self.enforcer, self.reloader, self.store,
                              self.rewrite_alarm)

    def liveness_app(self) -> LivenessEndpoint:
        """The liveness endpoint (an ASGI app) to mount, e.g. at ``/healthz/live``."""
        return LivenessEndpoint()

    def on_lifespan(self, startup: Hook | None = None, shutdown: Hook | None = None) -> None:
        """Register background work started and stopped with the server's lifespan."""
        if startup is not None:
            self._startup_hooks.append(startup)
        if shutdown is not None:
            self._shutdown_hooks.append(shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        own_paths = self._own_paths
        if own_paths:  # health and metrics: never decided
            own = own_paths.get(scope["path"])
            if own is not None and scope.get("method") in _OWN_METHODS:
                await own(scope, receive, send)
                return
        # One enforcer for the whole request: a hot reload swaps the attribute, never the
        # policy, database or promotion settings under a request already being decided.
        enforcer = self.enforcer
        pipeline = self.pipeline
        metrics = pipeline.metrics
        if metrics is not None and metrics.time_next:  # one request per interval is timed
            decision = metrics.timed_decide(enforcer, scope)
        else:
            decision = enforcer.decide(scope)
        # The common case (nothing to settle, read or record first) in this frame: an awaited
        # call per request is a coroutine made and run, on every request.
        if kind == "http" and (passing := pipeline.passing(enforcer, decision, scope, send)):
            await self.app(scope, receive, passing)
            return
        await pipeline.run(enforcer, decision, scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        failed: list[Exception] = []
        answered: list[str] = []
        received: list[str] = []  # what the app asked for: nothing, if it has no lifespan

        async def receive_with_hooks() -> Message:
            message = await receive()
            received.append(str(message.get("type")))
            if message.get("type") == "lifespan.startup":
                try:
                    for hook in self._startup_hooks:
                        await hook()
                except Exception as exc:
                    failed.append(exc)
                    raise
            return message

        async def send_with_hooks(message: Message) -> None:
            answered.append(str(message.get("type")))
            # Our own work stops after the app's shutdown handlers, so it can still record them.
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed",
                                       "lifespan.startup.failed"):
                for hook in self._shutdown_hooks:
                    await hook()
            await send(message)

        try:
            await self.app(scope, receive_with_hooks, send_with_hooks)
        except Exception as exc:
            if not received:
                # An app without lifespan support (Django raises on the scope): uvicorn would
                # take it for "lifespan unsupported" and never run our hooks, so the decision
                # log would not be written out and closed on SIGTERM. micafence runs its own.
                log_event(logging.INFO, "lifespan.own",
                          "the app does not support the ASGI lifespan; micafence runs its own "
                          "for its background work", problem=str(exc))
                await self._own_lifespan(receive, send_with_hooks)
                return
            if not failed or any(kind.startswith("lifespan.startup.") for kind in answered):
                raise
            # Say so to the server: uvicorn's default lifespan "auto" would otherwise take the
            # error for an app without lifespan support, and serve without our checks.
            await send_with_hooks({"type": "lifespan.startup.failed",
                                   "message": f"micafence: {failed[0]}"})

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        """The lifespan protocol for an app that has none: our hooks only (``send`` runs the
        shutdown hooks on a failed startup and on shutdown)."""
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                try:
                    for hook in self._startup_hooks:
                        await hook()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"micafence: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class _NotStarted(MicafenceMiddleware):
    """A :class:`MicafenceMiddleware` whose start failed (``startup_error``): it fails the
    lifespan startup and answers every request 503 (:mod:`micafence.live.startup`)."""

    startup_error: MicafenceError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer_unstarted(startup_message(self.startup_error), scope, receive, send)

"""Prometheus metrics: what micafence decides, how fast, and the health of what it relies on.

Cheap on the hot path: a request adds one to a plain ``dict`` counter keyed by the (cached)
decision object, and reads one flag. The background task (started with the server's lifespan)
raises that flag every ``sample_interval`` seconds, so one request per interval is timed
whatever the traffic, and moves the plain counts into ``prometheus_client`` metrics every
``sync_interval`` seconds; the endpoint syncs on every scrape too. Under
``PROMETHEUS_MULTIPROC_DIR`` (uvicorn/gunicorn workers) the metrics live in that directory's
memory-mapped files and the endpoint reports the sum over all workers::

    app = MicafenceMiddleware(inner, policy=..., geoip_db=..., metrics=Metrics(),
                              metrics_path="/metrics")  # answered by micafence, not decided

``Metrics(registry=app_registry)`` registers them in the app's own ``CollectorRegistry``, so
one scrape of the app's endpoint shows both (a registry takes one ``Metrics``: a second is
refused at construction with a ``ValueError``). Under multiprocess the values are in the
directory's files whichever registry holds them; a registry with a ``MultiProcessCollector``
reads them from there, so they are not registered in it a second time.

Exported (all prefixed ``micafence_``): ``decisions_total{reason,zone,blocked}``,
``decision_latency_seconds`` and ``geoip_lookup_latency_seconds`` (sampled histograms),
``geoip_database_build_timestamp_seconds``, ``geoip_database_age_seconds``,
``policy_info{name,revision}``, ``store_errors_total{operation}`` (every store operation that
failed: a grant check, an onboarding token or solicitation evidence while Redis is away),
``audit_backlog``, ``audit_records_written_total``, ``audit_aggregated_total``,
``audit_refused_total``, ``audit_write_errors_total`` and ``solicitation_evidence_total{outcome}``:
restricted arrivals through promotions, ``recorded``, a ``repeat`` (counted, not stored) or
dropped over the ``promotions.evidence`` limits (``dropped_visitor_rate``,
``dropped_worker_cap``; alert on these: evidence is being lost) and
``rewrite_aborted_total{reason}``: restricted pages the safety net had started to send and then
could not finish (``coding``: a corrupt compressed body, ``engine``: lol-html refused the page,
``too_large``: over ``promotions.max_rewrite_bytes``); the connection was dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from micafence.background import stop_task
from micafence.decision import Decision
from micafence.observed import AuditCounters, CurrentEnforcer, Deciding, EvidenceCounts
from micafence.promotions.evidence_budget import OUTCOMES as EVIDENCE_OUTCOMES
from micafence.promotions.rewriter import ABORT_REASONS, ABORTS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1)
_MAX_SAMPLES = 10_000
_MAX_DISTINCT = 10_000  # distinct decision objects counted before folding into labels
_AUDIT_COUNTERS = ("written", "aggregated", "refused", "write_errors")


class Metrics:
    """micafence's Prometheus metrics for one process (give it to the middleware)."""

    def __init__(
        self, *, registry: CollectorRegistry | None = None, sample_interval: float = 0.05,
        sync_interval: float = 1.0,
    ) -> None:
        if sample_interval < 0 or sync_interval <= 0:
            raise ValueError("sample_interval must be >= 0 and sync_interval > 0")
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        #: Where the metrics are registered: the app's own, or one made for them.
        self.registry = CollectorRegistry() if registry is None else registry
        # Made unregistered (registry=None), then registered together below: a registry that
        # already holds one of these names is refused whole, with nothing of ours left in it.
        self._decisions = Counter(
            "micafence_decisions", "Decisions by reason code and deciding zone",
            ["reason", "zone", "blocked"], registry=None)
        self._decide_latency = Histogram(
            "micafence_decision_latency_seconds",
            "Time to decide a request (sampled: one request per sample interval)",
            buckets=_LATENCY_BUCKETS, registry=None)
        self._lookup_latency = Histogram(
            "micafence_geoip_lookup_latency_seconds",
            "Uncached MaxMind lookup of a sampled request's address",
            buckets=_LATENCY_BUCKETS, registry=None)
        self._db_build = Gauge(
            "micafence_geoip_database_build_timestamp_seconds",
            "Build time of the GeoIP database in use (oldest over workers)",
            registry=None, multiprocess_mode="livemin")
        self._db_age = Gauge(
            "micafence_geoip_database_age_seconds",
            "Age of the GeoIP database in use (oldest over workers)",
            registry=None, multiprocess_mode="livemax")
        self._policy = Gauge(
            "micafence_policy_info", "The policy revision in force (1) and earlier ones (0)",
            ["name", "revision"], registry=None, multiprocess_mode="livemax")
        self._store_errors = Counter(
            "micafence_store_errors", "Grant store operations that failed",
            ["operation"], registry=None)
        self._backlog = Gauge(
            "micafence_audit_backlog", "Audit records queued, not yet written",
            registry=None, multiprocess_mode="livesum")
        self._audit = {
            name: Counter(f"micafence_audit_{name.replace('written', 'records_written')}",
                          help_text, registry=None)
            for name, help_text in (
                ("written", "Audit records written to the sink"),
                ("aggregated", "Block records folded into per-reason counts under overload"),
                ("refused", "Requests refused because their evidence could not be queued"),
                ("write_errors", "Failed audit sink writes (records kept and retried)"),
            )
        }
        self._evidence = Counter(
            "micafence_solicitation_evidence",
            "Restricted arrivals through promotions: recorded, repeat (counted, not stored), "
            "dropped_visitor_rate or dropped_worker_cap (over promotions.evidence limits)",
            ["outcome"], registry=None)
        for outcome in EVIDENCE_OUTCOMES:  # every series exists from the start, at 0
            self._evidence.labels(outcome)
        self._aborted = Counter(
            "micafence_rewrite_aborted",
            "Restricted pages aborted after their first byte (connection dropped), by reason",
            ["reason"], registry=None)
        for reason in ABORT_REASONS:
            self._aborted.labels(reason)
        self._aborted_seen = dict(ABORTS)  # this process's aborts before these metrics
        if not (self.multiprocess and _reads_the_files(self.registry)):
            _register(self.registry, [
                self._decisions, self._decide_latency, self._lookup_latency, self._db_build,
                self._db_age, self._policy, self._store_errors, self._backlog,
                *self._audit.values(), self._evidence, self._aborted,
            ])
        self._sample_interval = sample_interval
        self._sync_interval = sync_interval
        #: Time the next decision (0 as the sample interval: time every one).
        self.time_next = sample_interval == 0
        # id(decision) → [decision, count]: the engine hands out cached decision objects, and
        # holding the object keeps its id from being reused until the next fold.
        self._counts: dict[int, list[Any]] = {}
        self._label_counts: dict[tuple[str, str, str], int] = {}
        self._store_error_counts: dict[str, int] = {}
        self._decide_ns: list[int] = []
        self._lookup_ns: list[int] = []
        self._audit_seen = dict.fromkeys(_AUDIT_COUNTERS, 0)
        self._evidence_seen = dict.fromkeys(EVIDENCE_OUTCOMES, 0)
        self._revision: tuple[str, str] | None = None
        self._current: CurrentEnforcer | None = None
        self._evidence_counts: EvidenceCounts | None = None
        self._audit_counters: AuditCounters | None = None
        self._task: asyncio.Task[None] | None = None

    # -- wiring ------------------------------------------------------------------------------

    def watch(
        self, current: CurrentEnforcer, *, evidence: EvidenceCounts | None = None,
        audit: AuditCounters | None = None,
    ) -> None:
        """Export the policy and database of ``current()`` (asked on every sync), the evidence
        and audit counters. The middleware calls it, starts and stops :meth:`start` /
        :meth:`stop` with the server's lifespan and reports its store's failed operations to
        :meth:`store_error`."""
        self._current = current
        self._evidence_counts = evidence
        self._audit_counters = audit

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        self.sync()

    async def _run(self) -> None:
        tick = self._sample_interval or self._sync_interval
        next_sync = time.monotonic() + self._sync_interval
        while True:
            await asyncio.sleep(tick)
            self.time_next = True
            if time.monotonic() >= next_sync:
                next_sync += self._sync_interval
                self.sync()

    # -- the request path (plain ints only) ---------------------------------------------------

    def timed_decide(self, enforcer: Deciding, scope: MutableMapping[str, Any]) -> Decision:
        """``enforcer.decide(scope)``, timed; plus one uncached lookup of the address."""
        self.time_next = self._sample_interval == 0
        started = time.perf_counter_ns()
        decision = enforcer.decide(scope)
        elapsed = time.perf_counter_ns() - started
        if len(self._decide_ns) < _MAX_SAMPLES:
            self._decide_ns.append(elapsed)
        reader = enforcer.geoip.reader
        if decision.client_ip is not None:
            started = time.perf_counter_ns()
            try:
                reader.get(decision.client_ip)
            except (ValueError, TypeError, OSError):
                return decision
            if len(self._lookup_ns) < _MAX_SAMPLES:
                self._lookup_ns.append(time.perf_counter_ns() - started)
        return decision

    def count(self, decision: Decision) -> None:
        """Count one decision (a dictionary increment)."""
        counts = self._counts
        entry = counts.get(id(decision))
        if entry is None:
            counts[id(decision)] = [decision, 1]
            if len(counts) > _MAX_DISTINCT:
                self._fold()
        else:
            entry[1] += 1

    def _fold(self) -> None:
        counts, self._counts = self._counts, {}
        labels = self._label_counts
        for decision, value in counts.values():
            key = (decision.reason, decision.zone or "", "true" if decision.blocked else "false")
            labels[key] = labels.get(key, 0) + value

    def store_error(self, operation: str) -> None:
        """Count a failed store operation (``grant_events``, ``take_onboarding_ticket``,
        ``record_solicitation``, …): the middleware's store reports each one here."""
        self._store_error_counts[operation] = self._store_error_counts.get(operation, 0) + 1

    # -- export ------------------------------------------------------------------------------

    def sync(self) -> None:
        """Move the plain counts into the Prometheus metrics and refresh the gauges."""
        self._fold()
        counts, self._label_counts = self._label_counts, {}
        for labels, value in counts.items():
            self._decisions.labels(*labels).inc(value)
        errors, self._store_error_counts = self._store_error_counts, {}
        for operation, value in errors.items():
            self._store_errors.labels(operation).inc(value)
        samples, self._decide_ns = self._decide_ns, []
        for value in samples:
            self._decide_latency.observe(value / 1e9)
        samples, self._lookup_ns = self._lookup_ns, []
        for value in samples:
            self._lookup_latency.observe(value / 1e9)
        for reason, value in ABORTS.items():
            if value > self._aborted_seen[reason]:
                self._aborted.labels(reason).inc(value - self._aborted_seen[reason])
                self._aborted_seen[reason] = value
        current = self._current
        if current is None:
            return
        enforcer = current()
        self._db_build.set(enforcer.geoip.build_epoch)
        self._db_age.set(max(0.0, time.time() - enforcer.geoip.build_epoch))
        revision = (enforcer.policy.name, enforcer.policy.revision)
        if revision != self._revision:
            if self._revision is not None:
                self._policy.labels(*self._revision).set(0)
            self._policy.labels(*revision).set(1)
            self._revision = revision
        evidence = self._evidence_counts
        for outcome, value in evidence.counts.items() if evidence is not None else ():
            if value > self._evidence_seen[outcome]:
                self._evidence.labels(outcome).inc(value - self._evidence_seen[outcome])
                self._evidence_seen[outcome] = value
        audit = self._audit_counters
        if audit is not None:
            self._backlog.set(audit.backlog)
            for name in _AUDIT_COUNTERS:
                value = getattr(audit, name)
                if value > self._audit_seen[name]:
                    self._audit[name].inc(value - self._audit_seen[name])
                    self._audit_seen[name] = value

    def exposition_registry(self) -> CollectorRegistry:
        """The registry to scrape: this process's, or every worker's under multiprocess."""
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def asgi_app(self) -> MetricsEndpoint:
        """The ``/metrics`` endpoint (an ASGI app) to mount."""
        return MetricsEndpoint(self)


def _reads_the_files(registry: CollectorRegistry) -> bool:
    """Whether ``registry`` holds a ``MultiProcessCollector``: it reports every worker's metrics,
    ours among them, from the directory's files, so ours registered there would show twice."""
    held = getattr(registry, "_collector_to_names", {})  # prometheus_client keeps no public list
    return any(isinstance(collector, MultiProcessCollector) for collector in held)


def _register(registry: CollectorRegistry, collectors: list[Collector]) -> None:
    """Register every collector, or none: a name the registry holds already (a second
    :class:`Metrics` on the same registry, or an app metric named like one of ours) raises a
    ``ValueError`` saying so, here at construction rather than on a later scrape."""
    done: list[Collector] = []
    for collector in collectors:
        try:
            registry.register(collector)
        except ValueError as exc:
            for registered in done:
                registry.unregister(registered)
            raise ValueError(
                f"this registry already holds micafence's metrics ({exc}): give each Metrics "
                "a registry of its own (one Metrics per middleware)") from exc
        done.append(collector)


class MetricsEndpoint:
    """Prometheus text exposition; syncs this process's counts first."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._app: Callable[..., Awaitable[None]] = make_asgi_app(metrics.exposition_registry())

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            self._metrics.sync()
        await self._app(scope, receive, send)

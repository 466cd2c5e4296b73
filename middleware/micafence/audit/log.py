"""The decision log: every decision other than a plain non-restricted pass, as evidence.

:class:`AuditLog` is handed to the middleware (``MicafenceMiddleware(app, ..., audit=log)``).
On the request path :meth:`AuditLog.record` only appends a tuple to an in-memory queue (O(1),
never awaits disk); a background task started with the server's lifespan builds the records,
seals them into the writer's hash chain (:mod:`micafence.audit.chain`), writes them in batches
to a sink (:mod:`micafence.audit.sinks`) and fsyncs, every ``flush_interval`` and on shutdown.

The contract, "nothing lost silently":

- *evidence* records (a restricted visitor let through to a non-neutral route: in-scope
  service, wind-down, anything shadow mode let pass; and every event such as a grant change
  or an onboarding token) are never dropped: when the queue is full, ``record`` returns
  ``False`` and the middleware refuses the request with 503 ``audit_unavailable``;
- *block* and *traffic* records (451s, EU visitors browsing neutral pages) may, once the queue
  is 80% full, be aggregated into per-reason counts; the counts are written as an
  ``aggregate`` record, so the aggregation itself is on the record;
- a queued record reaches the sink within ``flush_interval`` while the sink works, and all
  queued records are written, each exactly once, before a graceful shutdown (SIGTERM)
  completes: the flusher is never cancelled in the middle of a batch;
- a hard stop (SIGKILL, power loss) loses what was still queued (at most about
  ``flush_interval`` of decisions) and may tear the batch being written; the records before it
  stay, and the next writer to start on the same directory signs a ``recovery`` record naming
  the dead writer, its last complete record and the torn bytes (:mod:`micafence.audit.recovery`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from micafence.asgi import Scope
from micafence.audit.chain import ChainWriter, format_time
from micafence.audit.keys import AuditKey
from micafence.audit.recovery import DeadChain
from micafence.audit.sinks import AuditSink, AuditSinkError, open_sink
from micafence.caches import BoundedCache
from micafence.decision import Decision
from micafence.logs import log_event
from micafence.policy.audit import DEFAULT_AUDIT, AuditSettings

if TYPE_CHECKING:
    from micafence.policy.model import Policy
    from micafence.records import GrantEvent


EVIDENCE = "evidence"
BLOCK = "block"
TRAFFIC = "traffic"
#: 2: decision records name the signals that put the visitor in its zones (``signals``);
#: version 1 records have none and still verify and export.
RECORD_VERSION = 2

_EVENT_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_WRITER_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
# Longest wait between retries of a failing sink. A retry is one failed write, cheap even while
# the disk is full or Redis is down; evidence is refused (503) until one succeeds, so a longer
# wait would keep refusing requests for that long after the fault has cleared.
_MAX_BACKOFF = 0.5
_IP_CACHE_ENTRIES = 4096  # reduced addresses remembered per log
_QueueItem = tuple[float, Decision | None, str | None, Any, bool]

logger = logging.getLogger("micafence.audit.log")


async def _settled(write: asyncio.Future[None]) -> bool:
    """Wait until ``write`` has ended, even through cancellations; ``True`` if one arrived.

    Shielded, so a cancellation of the waiting task does not abandon a write whose lines may
    already be durable; the caller decides what the batch's outcome means, then passes the
    cancellation on.
    """
    interrupted = False
    while not write.done():
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # From the write itself only if it was cancelled; otherwise it is ours.
            interrupted = interrupted or not write.cancelled()
        except Exception:  # the write's own failure: the caller reads it from ``write``
            break
    return interrupted


class AuditLog:
    """A bounded queue of decisions and events, flushed to a sink by a background task.

    ``sink`` is an :class:`~micafence.audit.sinks.AuditSink` or a target for
    :func:`~micafence.audit.sinks.open_sink` (a directory, ``file://DIR``,
    ``redis://HOST/DB#STREAM``). ``key`` (the audit secret, :mod:`micafence.audit.keys`)
    signs checkpoints (Ed25519) and keys pseudonyms (default: :meth:`AuditKey.from_env`).
    ``settings`` are the ``audit`` policy section; when the log is given to the middleware it
    follows the policy in force instead (:meth:`follow`).
    """

    def __init__(
        self,
        sink: AuditSink | str | os.PathLike[str],
        *,
        key: AuditKey | str | None = None,
        settings: AuditSettings | None = None,
        capacity: int = 20_000,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        writer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 10 or batch_size < 1:
            raise ValueError("capacity must be at least 10 and batch_size at least 1")
        self.sink = sink if isinstance(sink, AuditSink) else open_sink(sink)
        self.key = key if isinstance(key, AuditKey) else (
            AuditKey.from_text(key) if key is not None else AuditKey.from_env()
        )
        self.writer = writer or _writer_id()
        self.capacity = capacity
        self.flush_interval = flush_interval
        self._settings = settings or DEFAULT_AUDIT
        self._current_settings: Callable[[], AuditSettings] = lambda: self._settings
        self._revision: Callable[[], str | None] = lambda: None
        self._soft_limit = capacity * 4 // 5
        self._hard_limit = capacity
        self._batch_size = batch_size
        self._clock = clock
        self._queue: collections.deque[_QueueItem] = collections.deque()
        self._aggregate: dict[tuple[str, str | None, str], int] = {}
        self._aggregate_since: float | None = None
        self._chain = ChainWriter(self.writer, self.key)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False
        self._failing = False
        self._last_checkpoint = 0.0
        self._dead_chains: list[DeadChain] | None = None  # claimed before the first batch
        self._ip_cache: BoundedCache[str, str] = BoundedCache(_IP_CACHE_ENTRIES)
        # Plain counters, read by micafence.metrics.
        self.written = 0
        self.refused = 0
        self.aggregated = 0
        self.write_errors = 0

    # -- wiring ------------------------------------------------------------------------------

    def follow(self, policy: Callable[[], Policy]) -> None:
        """Take the ``audit`` section and the revision from ``policy()``, the policy in force
        (asked on every use: reloads swap it). The middleware calls it, and runs :meth:`start`
        and :meth:`aclose` with the server's lifespan."""
        self._current_settings = lambda: policy().audit
        self._revision = lambda: policy().revision

    async def start(self) -> None:
        """Open the chain on the sink, then start the background flusher (also started by the
        first record, if needed).

        The open record (and the recovery record of any writer that died) is written here,
        before the server takes requests: a worker killed before its first flush still leaves
        a chain, which the next start names. A failing sink does not stop the start: the
        flusher keeps trying, as for any batch."""
        if self._task is None and not self._closed:
            with contextlib.suppress(AuditSinkError):
                await self.flush()
            if self._task is None and not self._closed:
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def backlog(self) -> int:
        """Records queued and not yet written."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the request path ---------------------------------------------------------------------

    def record(self, decision: Decision, scope: Scope) -> bool:
        """Queue ``decision``; ``False`` means an evidence record could not be queued and the
        request must be refused. Synchronous and O(1): it never waits on the sink."""
        evidence = not decision.blocked and decision.route_class != "neutral"
        size = len(self._queue)
        if size < self._soft_limit or (evidence and size < self._hard_limit):
            self._queue.append(
                (self._clock(), decision, scope.get("type"), scope.get("method"), evidence)
            )
            if self._task is None:
                self._start_soon()
            if size >= self._batch_size:
                self._wake.set()
            return True
        if evidence:
            self._refuse()
            return False
        key = (decision.reason, decision.zone, decision.mode.value)
        self._aggregate[key] = self._aggregate.get(key, 0) + 1
        if self._aggregate_since is None:
            self._aggregate_since = self._clock()
            log_event(logging.WARNING, "audit.aggregating",
                      "audit queue over 80%: block records are being aggregated into counts",
                      backlog=size, capacity=self.capacity)
        self.aggregated += 1
        return True

    def record_event(self, kind: str, payload: Mapping[str, Any]) -> bool:
        """Queue an evidence event (``grant.recorded``, ``onboarding.token_used``, …).

        ``payload`` must be JSON-serialisable; a ``client_id`` in it is pseudonymised when the
        policy asks. ``False``: the queue is full and the caller must not proceed as if the
        event were recorded.
        """
        if not _EVENT_KIND.fullmatch(kind):
            raise ValueError(f"event kind {kind!r} must look like 'grant.recorded'")
        json.dumps(payload)  # fail here, in the caller, not later in the flusher
        if len(self._queue) >= self._hard_limit:
            self._refuse()
            return False
        self._queue.append((self._clock(), None, kind, dict(payload), True))
        if self._task is None:
            self._start_soon()
        return True

    def record_grant(self, event: GrantEvent) -> bool:
        """Record a grant-history event (:mod:`micafence.grants.book`) as an evidence event:
        ``grant.recorded``, ``grant.revoked``, ``grant.approved`` or ``grant.bound``."""
        from micafence.records import (
            AccountBinding,
            Approval,
            ArrivalLink,
            Grant,
            Residence,
            Revocation,
            event_to_json,
        )

        kinds = {Grant: "grant.recorded", Revocation: "grant.revoked",
                 Approval: "grant.approved", AccountBinding: "grant.bound",
                 Residence: "client.residence", ArrivalLink: "client.arrival_linked"}
        return self.record_event(kinds[type(event)], event_to_json(event))

    def _refuse(self) -> None:
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # 1st, 2nd, 4th, 8th…: loud, not flooding
            log_event(logging.ERROR, "audit.refused",
                      "audit queue full: refusing requests whose evidence cannot be recorded",
                      refused=self.refused, capacity=self.capacity, sink=self.sink.location)

    def _start_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): flush() will write the queue
            return
        if not self._closed:
            self._task = loop.create_task(self._run())

    # -- the background flusher ---------------------------------------------------------------

    async def _run(self) -> None:
        # Ends by itself once aclose() has set _closed, after the flush it is in: it is never
        # cancelled in the middle of a write (see _write).
        backoff = 0.0
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval + backoff)
            self._wake.clear()
            try:
                await self.flush()
            except AuditSinkError:
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.1)  # records stay queued; retry soon
            except Exception:  # a bug must not stop the flusher for good: say it, retry
                logger.exception("audit flusher error", extra={"event": "audit.flusher_error"})
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.1)
            else:
                backoff = 0.0

    async def flush(self) -> None:
        """Write everything queued now (and an idle checkpoint when one is due)."""
        async with self._lock:
            while True:
                await self._write_batch()
                if not self._queue and not self._aggregate:
                    return

    async def _write_batch(self) -> None:
        settings = self._current_settings()
        now = self._clock()
        count = min(len(self._queue), self._batch_size)
        idle_due = now - self._last_checkpoint >= settings.checkpoint_interval.total_seconds()
        if not count and not self._aggregate and self._opened and not idle_due:
            return
        if self._dead_chains is None:
            self._dead_chains = await self._claim_dead_chains()
        state = self._chain.state()
        lines = []
        if not self._opened:
            lines.append(self._chain.seal(self._open_record(now)))
            # The loss of a writer that died without closing is named first of all.
            lines.extend(self._chain.seal(dead.record(format_time_f(now)))
                         for dead in self._dead_chains)
        for index in range(count):
            lines.append(self._chain.seal(self._build(self._queue[index], settings)))
        aggregate, since = self._aggregate, self._aggregate_since
        self._aggregate, self._aggregate_since = {}, None
        if aggregate:
            lines.append(self._chain.seal(_aggregate_record(aggregate, since or now, now)))
        lines.append(self._chain.seal({
            "v": RECORD_VERSION, "kind": "checkpoint", "time": format_time_f(now),
            "records": self.written + count, "backlog": len(self._queue) - count,
        }))
        # The batch's outcome is settled before anything else happens to this task: a batch
        # handed to the sink may be on disk already, so a cancellation arriving meanwhile must
        # neither leave it queued (it would be written twice) nor let a second write start
        # beside it. The cancellation is passed on once the batch is marked written or rolled
        # back.
        write = asyncio.ensure_future(self.sink.write(self.writer, lines))
        interrupted = await _settled(write)
        if write.cancelled():
            # Only a loop being torn down cancels the write itself: whether it landed is unknown,
            # so this chain takes nothing more (the next start names its last record).
            self._closed = True
            raise asyncio.CancelledError
        failure = write.exception()
        if failure is None:
            self._batch_written(count, now)
        elif isinstance(failure, AuditSinkError):
            self._batch_failed(state, aggregate, since, failure)
        if interrupted:
            raise asyncio.CancelledError
        if failure is not None:
            raise failure

    async def _claim_dead_chains(self) -> list[DeadChain]:
        try:
            claims = await self.sink.claim_dead_chains(self.writer)
        except OSError as exc:  # cannot even look: the first write will say what is wrong
            log_event(logging.ERROR, "audit.recovery_failed",
                      f"cannot look for dead audit writers: {exc}", sink=self.sink.location)
            return []
        self.sink.release_claims([c for c in claims if c.closed])  # nothing lost: no record
        return [c for c in claims if not c.closed]

    def _batch_written(self, count: int, now: float) -> None:
        for _ in range(count):
            self._queue.popleft()
        self.written += count
        if not self._opened and self._dead_chains:
            self.sink.release_claims(self._dead_chains)
            for dead in self._dead_chains:
                log_event(logging.WARNING, "audit.writer_recovered",
                          f"audit writer {dead.writer} died without closing its chain; its end "
                          f"(seq {dead.last_seq}, {dead.torn_bytes} torn bytes after it) is now "
                          f"on the record of {self.writer}",
                          dead_writer=dead.writer, last_seq=dead.last_seq,
                          torn_bytes=dead.torn_bytes, sink=self.sink.location)
        self._opened = True
        self._last_checkpoint = now
        if self._failing:
            self._failing = False
            log_event(logging.WARNING, "audit.sink_recovered", "audit sink writing again",
                      sink=self.sink.location, backlog=len(self._queue))

    def _batch_failed(self, state: tuple[int, str],
                      aggregate: dict[tuple[str, str | None, str], int], since: float | None,
                      failure: AuditSinkError) -> None:
        self._chain.restore(state)
        for key, value in aggregate.items():  # counts are evidence too: keep them
            self._aggregate[key] = self._aggregate.get(key, 0) + value
        self._aggregate_since = since if since is not None else self._aggregate_since
        self.write_errors += 1
        if not self._failing:
            self._failing = True
            log_event(logging.ERROR, "audit.sink_failed", f"audit sink failing: {failure}",
                      sink=self.sink.location, backlog=len(self._queue))

    async def aclose(self, timeout: float = 10.0) -> None:
        """Write every queued record and a signed close record, then release the sink.

        The flusher is told to stop and ends after the flush it is in: it is not cancelled,
        because a batch already handed to the sink cannot be called back (cancelling the flusher
        mid-write once left a batch on disk but still queued, and the final flush wrote it
        again). ``timeout`` bounds the retries of a *failing* sink; a write that never returns
        holds the shutdown until the process manager kills the process, and the next start
        names the chain's last record (:mod:`micafence.audit.recovery`).
        """
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._wake.set()
            await asyncio.wait({self._task})
            if not self._task.cancelled():
                self._task.exception()  # retrieved: the flusher logs its own errors
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.flush()
                async with self._lock:
                    # From here on nothing can be queued (it could not be written after the
                    # close record): evidence is refused, as when the queue is full.
                    self._soft_limit = self._hard_limit = 0
                    state = self._chain.state()
                    line = self._chain.seal({"v": RECORD_VERSION, "kind": "close",
                                             "time": format_time_f(self._clock()),
                                             "records": self.written})
                    write = asyncio.ensure_future(self.sink.write(self.writer, [line]))
                    await _settled(write)
                    if not write.cancelled() and isinstance(write.exception(), AuditSinkError):
                        self._chain.restore(state)
                    write.result()
                self.sink.end_chain(self.writer)
                break
            except AuditSinkError:
                if time.monotonic() > deadline:
                    log_event(logging.CRITICAL, "audit.lost_on_shutdown",
                              f"audit sink unavailable at shutdown: {len(self._queue)} records "
                              "could not be written", sink=self.sink.location,
                              lost=len(self._queue))
                    break
                await asyncio.sleep(0.2)
        await self.sink.close()

    # -- record shapes ------------------------------------------------------------------------

    def _open_record(self, now: float) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION, "kind": "open", "time": format_time_f(now),
            "key_id": self.key.key_id, "key_fingerprint": self.key.public_key.fingerprint,
            "host": socket.gethostname(), "pid": os.getpid(),
            "sink": self.sink.location, "policy_revision": self._revision(),
        }

    def _build(self, item: _QueueItem, settings: AuditSettings) -> dict[str, Any]:
        when, decision, transport, extra, evidence = item
        if decision is None:  # an event: transport holds its kind, extra its payload
            payload = dict(extra)
            if settings.pseudonymise_client_ids and isinstance(payload.get("client_id"), str):
                payload["client_id"] = self.key.pseudonym(payload["client_id"])
            return {"v": RECORD_VERSION, "kind": "event", "event": transport, "class": EVIDENCE,
                    "id": uuid7(when), "time": format_time_f(when), "data": payload}
        breakglass = getattr(decision, "breakglass", None)
        client_id = decision.client_id
        if client_id is not None and settings.pseudonymise_client_ids:
            client_id = self.key.pseudonym(client_id)
        return {
            "v": RECORD_VERSION, "kind": "decision", "id": uuid7(when),
            "time": format_time_f(when),
            "class": EVIDENCE if evidence else (BLOCK if decision.blocked else TRAFFIC),
            "outcome": decision.outcome.value, "blocked": decision.blocked,
            "reason": decision.reason, "rule": decision.rule_id,
            "mode": "break-glass" if breakglass else decision.mode.value,
            "rule_mode": decision.mode.value, "breakglass": breakglass,
            "policy_revision": decision.policy_revision,
            "database_build": decision.database_build,
            "zone": decision.zone, "zones": list(decision.zones),
            "country": decision.country, "registered_country": decision.registered_country,
            "residence_country": decision.residence_country,
            "anonymizer": list(getattr(decision, "anonymizer", ()) or ()),
            "client_ip": self._reduce_ip(decision.client_ip, settings),
            "client_id": client_id,
            "transport": transport, "method": extra if isinstance(extra, str) else None,
            "route": decision.route_id, "route_class": decision.route_class,
            "grant_id": getattr(decision, "grant_id", None),
            "promotions": decision.promotion_stance.value,
            "signals": list(decision.signals),
        }

    def _reduce_ip(self, ip: str | None, settings: AuditSettings) -> str | None:
        if ip is None:
            return None
        key = f"{settings.hash_ip}/{settings.ipv4_prefix}/{settings.ipv6_prefix}/{ip}"
        reduced = self._ip_cache.get(key)
        if reduced is None:
            reduced = reduce_ip(ip, settings, self.key)
            self._ip_cache.put(key, reduced)
        return reduced


def reduce_ip(ip: str, settings: AuditSettings, key: AuditKey) -> str:
    """The address as the log keeps it: its network (``/24``, ``/48``) or a keyed hash."""
    if settings.hash_ip:
        return key.pseudonym("ip:" + ip)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return key.pseudonym("ip:" + ip)
    prefix = settings.ipv4_prefix if address.version == 4 else settings.ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def uuid7(when: float) -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort like the records."""
    value = (int(when * 1000) & (2**48 - 1)) << 80 | int.from_bytes(secrets.token_bytes(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def format_time_f(when: float) -> str:
    return format_time(dt.datetime.fromtimestamp(when, dt.UTC))


def _aggregate_record(counts: Mapping[tuple[str, str | None, str], int], since: float,
                      until: float) -> dict[str, Any]:
    return {
        "v": RECORD_VERSION, "kind": "aggregate", "class": BLOCK, "id": uuid7(until),
        "time": format_time_f(until), "since": format_time_f(since),
        "counts": [{"reason": reason, "zone": zone, "mode": mode, "count": count}
                   for (reason, zone, mode), count in sorted(counts.items(), key=str)],
    }


def _writer_id() -> str:
    host = _WRITER_CHARS.sub("-", socket.gethostname())[:24].strip("-") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


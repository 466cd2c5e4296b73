"""``redis://``, ``rediss://`` and ``redis+cluster://``: one grant store for every worker and
instance.

Built on redis-py's asyncio client (with hiredis), imported only when such a URL is opened
(the ``redis`` extra: ``pip install 'micafence[redis]'``).
Every record is signed with the grant key (:mod:`micafence.grants.signing`), which is required here:
a shared network store is exactly where "write access is not enough" matters.

Key layout (``micafence`` is the prefix; ``{…}`` are Redis Cluster hash tags, so a client's
keys share one slot and the global keys another)::

    micafence:{client:<id>}:grants         LIST  the client's grant records, oldest first
                                                 (grant, approval, revocation, account binding;
                                                 a binding is filed under the new account too)
    micafence:{client:<id>}:solicitations  LIST  solicitation evidence, signed (subject: client
                                                 id, or cookie:<visitor id>)
    micafence:{grants}:log                 LIST  every grant record, oldest first (listing)
    micafence:{grants}:ids                 SET   grant ids recorded (an id is recorded once)
    micafence:{grants}:version             STRING the grant_version counter
    micafence:onboarding:<sha256>          STRING a signed onboarding ticket, with a TTL
    micafence:grants:changed               pub/sub channel: a client id per grant record

A grant record is written by one Lua script: the id check, both lists, the counter and the
publish happen together or not at all. Nothing is ever trimmed or deleted, except onboarding
tickets (taken with ``GETDEL``, or expired by their TTL). The script touches a client's slot
and the global one, so on a Redis Cluster (``redis+cluster://HOST:PORT``, any node) every key
is ``{micafence}:…`` instead: one hash slot, so one primary holds micafence's keys (the Cluster
gives failover, not sharding, which grant records do not need). Pub/sub is cluster-wide.

Reads for service checks (:meth:`RedisStore.holdings`) come from a local cache kept honest by
:mod:`micafence.grants.cache`. Every driver error is raised as
:class:`~micafence.errors.StoreError`, so grant checks fail closed while Redis is away.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from micafence.errors import StoreError
from micafence.extras import require
from micafence.grants.cache import MAX_STALENESS, POLL_INTERVAL, CacheInvalidator, GrantCache
from micafence.grants.signing import GrantKey, RecordSeal
from micafence.logs import log_event
from micafence.policy.grant_store import DEFAULT_STORE_SETTINGS, StoreSettings
from micafence.records import (
    Grant,
    GrantEvent,
    GrantState,
    OnboardingTicket,
    SolicitationEvidence,
    event_from_json,
    event_to_json,
    evidence_from_json,
    evidence_to_json,
    filed_under,
    ticket_from_json,
    ticket_to_json,
)
from micafence.store.base import Store

T = TypeVar("T")

# KEYS: ids, log, version, the client lists; ARGV: grant id ("" for other records), record,
# channel, client id. Returns the new version, or -1 when the grant id is already recorded.
_APPEND = """
if ARGV[1] ~= '' and redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return -1
end
redis.call('RPUSH', KEYS[2], ARGV[2])
for i = 4, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[2])
end
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return version
"""


class KeyLayout:
    """The key names, from one prefix.

    ``one_slot`` (Redis Cluster): every key carries the hash tag ``{<prefix>}``, so the grant
    write script, which touches a client's lists and the global ones, stays in one slot.
    """

    def __init__(self, prefix: str = "micafence", *, one_slot: bool = False) -> None:
        self.prefix = prefix
        self._one_slot = one_slot
        self.log = self._key("grants", "log")
        self.ids = self._key("grants", "ids")
        self.version = self._key("grants", "version")
        self.channel = f"{prefix}:grants:changed"

    def _key(self, tag: str, name: str) -> str:
        if self._one_slot:
            return f"{{{self.prefix}}}:{tag}:{name}"
        return f"{self.prefix}:{{{tag}}}:{name}"

    def grants(self, client_id: str) -> str:
        return self._key(f"client:{_tag(client_id)}", "grants")

    def solicitations(self, subject: str) -> str:
        return self._key(f"client:{_tag(subject)}", "solicitations")

    def ticket(self, token_hash: str) -> str:
        if self._one_slot:
            return f"{{{self.prefix}}}:onboarding:{token_hash}"
        return f"{self.prefix}:onboarding:{token_hash}"


def _tag(text: str) -> str:
    # Client ids cannot hold braces, but a subject could: never let one end the hash tag.
    return quote(text, safe="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-")


class RedisStore(Store):
    """Grants, onboarding tickets and solicitation evidence in Redis, with a local cache.

    ``timeout`` bounds every command (connect and read), so a Redis that hangs costs a grant
    check at most that long, twice (one retry on a fresh connection), before it fails closed.
    """

    def __init__(
        self, url: str, *, key: GrantKey | None, prefix: str = "micafence",
        timeout: float = 0.5, poll_interval: float = POLL_INTERVAL,
        max_staleness: float = MAX_STALENESS, cluster: bool = False,
    ) -> None:
        self.location = _redacted(url)
        if key is None:
            raise StoreError(
                f"{self.location}: a Redis grant store needs the grant key, so that write "
                "access to Redis is not enough to open a scope: give grant_key= (or "
                "--grant-key-file), or set $MICAFENCE_GRANT_KEY or $MICAFENCE_GRANT_KEY_FILE "
                "(make one with `micafence grant keygen FILE`)")
        require("redis.asyncio", "redis", f"{self.location} (a Redis grant store)", StoreError)
        # Imported here: only Redis users pay for the driver.
        import redis.asyncio as redis
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry  # the asyncio client's own, not redis.retry's
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import RedisClusterException, RedisError

        # A cluster client's own errors (no node reachable, slots not covered) are not
        # RedisErrors.
        self._driver_errors: tuple[type[BaseException], ...] = (
            RedisError, RedisClusterException, OSError)
        self.cluster = cluster
        options: dict[str, Any] = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        }
        try:
            if cluster:  # redis+cluster://host:port: any node; the client finds the others
                self._client: Any = RedisCluster.from_url(
                    url.replace("+cluster", "", 1), **options)
            else:
                self._client = redis.Redis.from_url(url, **options)
        except (ValueError, RedisError, RedisClusterException) as exc:
            raise StoreError(f"{self.location}: not a usable Redis URL: {exc}") from exc
        self.key = key
        self.keys = KeyLayout(prefix, one_slot=cluster)
        self._seal = RecordSeal(key, self.location)
        self._append = self._client.register_script(_APPEND)
        self.cache = GrantCache(max_staleness=max_staleness)
        self.invalidator = CacheInvalidator(
            self.cache, self._client, self.keys.channel, read_version=self.grant_version,
            on_subscribed=self._recheck, poll_interval=poll_interval, location=self.location,
        )
        self._settings = DEFAULT_STORE_SETTINGS
        self._refusal: str | None = None
        self._reported: tuple[str, ...] = ()
        # The highest record count (grant_version) this process has read; one lower than it
        # proves the store lost records, and from then on its grant histories are not trusted.
        self._highest = 0
        self._lost: str | None = None

    # -- the Store interface -------------------------------------------------------------------

    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        record = self._seal.sign(evidence_to_json(evidence))
        await self._run("record_solicitation", lambda: self._client.rpush(
            self.keys.solicitations(evidence.subject),
            # As the file store writes it: a marker's characters as UTF-8, not \u escapes, so
            # one record stays within solicitation.MAX_RECORD_BYTES.
            json.dumps(record, sort_keys=True, ensure_ascii=False)))

    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        key = self.keys.solicitations(subject)
        raw = await self._run("solicitations", lambda: self._client.lrange(key, 0, -1))
        found = []
        for index, item in enumerate(raw):
            try:
                data = json.loads(item)
                found.append(evidence_from_json(data))
            except (ValueError, KeyError, TypeError) as exc:
                self.report_failure("solicitations")
                raise StoreError(f"{self.location} {key}[{index}]: not solicitation evidence "
                                 f"({exc})") from None
            self._seal.suspect(data, f"{key}[{index}]")  # kept either way: it can only refuse
        return found

    async def append_grant_event(self, event: GrantEvent) -> int:
        record = json.dumps(self._seal.sign(event_to_json(event)), sort_keys=True,
                            ensure_ascii=False)
        grant_id = event.id if isinstance(event, Grant) else ""
        keys = [self.keys.ids, self.keys.log, self.keys.version,
                *(self.keys.grants(client) for client in filed_under(event))]
        version = int(await self._run("append_grant_event", lambda: self._append(
            keys=keys, args=[grant_id, record, self.keys.channel, event.client_id])))
        if version < 0:
            raise StoreError(f"grant {grant_id} is already recorded")
        self.cache.flush()  # this process reads its own write at once, not at the message
        self._saw_version(version)
        return version

    async def grant_events(self, client_id: str | None = None) -> list[GrantEvent]:
        key = self.keys.log if client_id is None else self.keys.grants(client_id)
        raw = await self._run("grant_events", lambda: self._client.lrange(key, 0, -1))
        events = []
        for index, item in enumerate(raw):
            event = self._decode("grant_events", item, f"{key}[{index}]", client_id)
            if event is not None:
                events.append(event)
        return events

    async def grant_version(self) -> int:
        value = await self._run("grant_version", lambda: self._client.get(self.keys.version))
        version = int(value or 0)
        self._saw_version(version)
        return version

    async def put_onboarding_ticket(self, ticket: OnboardingTicket) -> None:
        lifetime = ticket.expires_at - ticket.issued_at
        milliseconds = max(1, int(lifetime.total_seconds() * 1000))
        record = json.dumps(self._seal.sign(ticket_to_json(ticket)), sort_keys=True)
        stored = await self._run("put_onboarding_ticket", lambda: self._client.set(
            self.keys.ticket(ticket.token_hash), record, px=milliseconds, nx=True))
        if not stored:
            raise StoreError("an onboarding ticket with this token hash already exists")

    async def take_onboarding_ticket(
        self, token_hash: str, now: dt.datetime
    ) -> OnboardingTicket | None:
        key = self.keys.ticket(token_hash)
        # GETDEL: one command, so of two concurrent takes exactly one gets the value.
        raw = await self._run("take_onboarding_ticket", lambda: self._client.getdel(key))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            ticket = ticket_from_json(data)
        except ValueError as exc:
            self._seal.reject({"raw": raw.decode("utf-8", "replace")}, key, str(exc))
            return None
        if self._seal.verified(data, key) is None:
            return None
        return ticket if now < ticket.expires_at else None

    async def holdings(self, client_id: str) -> list[GrantEvent]:
        self._refuse_if_untrusted("holdings")
        cached = self.cache.get(client_id)
        if cached is not None:
            return list(cached)
        generation = self.cache.generation
        events = await super().holdings(client_id)
        # Read after the records: a server that restarted empty before (or while) they were
        # read answers a lower count, and what it answered is not taken for the history.
        await self.grant_version()
        self._refuse_if_untrusted("holdings")
        self.cache.put(client_id, tuple(events), generation)
        return events

    def cached_grant_states(self, client_id: str) -> tuple[GrantState, ...] | None:
        self._refuse_if_untrusted("grant_states")  # as grant_states: refused, it raises
        return self.cache.states(client_id)

    async def grant_states(self, client_id: str) -> tuple[GrantState, ...]:
        self._refuse_if_untrusted("grant_states")
        cached = self.cache.states(client_id)
        if cached is None:
            return await super().grant_states(client_id)  # loads, and caches the records
        return cached

    async def close(self) -> None:
        await self.stop()
        await self._client.aclose()

    # -- operations ----------------------------------------------------------------------------

    async def check(self) -> bool:
        """Redis answers a ``PING`` (the readiness probe's store check), and has not lost
        records this process read."""
        if not await self._run("check", lambda: self._client.ping()):
            raise StoreError(f"{self.location}: PING answered no")
        if self._lost is not None:
            self.report_failure("check")
            raise StoreError(self._lost)
        return True

    async def start(self, settings: StoreSettings = DEFAULT_STORE_SETTINGS) -> None:
        """Run the production checks (raising in ``refuse`` mode) and start invalidation."""
        self._settings = settings
        try:
            problems = await self.production_problems()
        except StoreError as exc:
            log_event(logging.WARNING, "store.production_check",
                      f"micafence: cannot check {self.location} at start-up ({exc}); it will be "
                      "checked when it answers, and grant checks fail closed until then",
                      location=self.location)
        else:
            self._report(problems)
            if problems and settings.redis_checks == "refuse":
                raise StoreError(self._refusal or "; ".join(problems))
        self.invalidator.start()

    async def stop(self) -> None:
        await self.invalidator.stop()

    async def production_problems(self) -> list[str]:
        """Why this Redis is not fit to keep records: eviction, no persistence (empty: fine)."""
        from redis.exceptions import ResponseError

        # On a Cluster, the node that holds micafence's slot (every key shares it).
        where: dict[str, Any] = {}
        if self.cluster:
            await self._run("initialize", lambda: self._client.initialize())
            where["target_nodes"] = self._client.get_node_from_key(self.keys.version)
        try:
            memory = await self._run("info", lambda: self._client.info("memory", **where))
            persistence = await self._run(
                "info", lambda: self._client.info("persistence", **where))
        except StoreError as exc:  # an ACL user without INFO: say so, do not count it down
            if not isinstance(exc.__cause__, ResponseError):
                raise
            return [f"INFO is refused ({exc.__cause__}): cannot tell whether Redis evicts keys "
                    "or keeps grant records on disk"]
        problems = []
        eviction = str(memory.get("maxmemory_policy", "unknown"))
        if eviction != "noeviction":
            problems.append(f"maxmemory-policy is {eviction}: Redis may evict grant records "
                            "under memory pressure (set maxmemory-policy noeviction)")
        if not int(persistence.get("aof_enabled", 0)):
            try:
                save = await self._client.config_get("save", **where)
                rules: str | None = str(save.get("save", ""))
            except self._driver_errors:  # CONFIG is often disabled on managed services
                rules = None
            if rules == "":
                problems.append("neither AOF (appendonly) nor RDB snapshots (save) are on: a "
                                "restart loses every grant record and revocation")
            elif rules is None:
                problems.append("AOF (appendonly) is off and CONFIG GET save is refused: cannot "
                                "tell whether RDB snapshots keep the grant records")
        return problems

    # -- helpers -------------------------------------------------------------------------------

    def _refuse_if_untrusted(self, operation: str) -> None:
        """Raise :class:`StoreError` while grant histories cannot be trusted: refused by
        ``scopes.redis_checks``, or records lost."""
        problem = self._lost or self._refusal
        if problem is not None:
            self.report_failure(operation)
            raise StoreError(problem)

    def _saw_version(self, version: int) -> None:
        """A record count read from the server: lower than one read before, records were lost.
        Service checks then fail closed and the client registry keeps the standings it read
        (a known EU client stays EU) until this process restarts."""
        if version >= self._highest:
            self._highest = version
            return
        if self._lost is None:
            self._lost = (
                f"{self.location} lost grant records: its record count went back from "
                f"{self._highest} to {version} (a restart without persistence, a fail-over to a "
                "replica that was behind, a restore from an older copy?); its grant histories "
                "are refused (service checks fail closed, each worker keeps the client "
                "standings it read) until micafence restarts once the records are restored")
            self.cache.flush()
            log_event(logging.CRITICAL, "store.records_lost", f"micafence: {self._lost}",
                      location=self.location, highest=self._highest, now=version)

    async def _recheck(self) -> bool:
        """On every (re)connection: the server may have been replaced or reconfigured. May the
        cache trust it (not refused by ``scopes.redis_checks: refuse``)?"""
        self._report(await self.production_problems())
        return self._refusal is None

    def _report(self, problems: list[str]) -> None:
        refuse = self._settings.redis_checks == "refuse"
        self._refusal = (
            f"{self.location} refused by scopes.redis_checks: refuse: " + "; ".join(problems)
        ) if problems and refuse else None
        if tuple(problems) == self._reported:
            return  # said already: a reconnection does not repeat it
        self._reported = tuple(problems)
        for problem in problems:
            log_event(logging.ERROR if refuse else logging.WARNING, "store.production_check",
                      f"micafence: REDIS {self.location} IS NOT SAFE FOR GRANT RECORDS: "
                      f"{problem}" + (" (grant checks refused)" if refuse else ""),
                      location=self.location, problem=problem, mode=self._settings.redis_checks)

    async def _run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except self._driver_errors as exc:
            self.report_failure(operation)
            raise StoreError(f"{self.location}: {operation}: {exc}") from exc

    def _decode(
        self, operation: str, raw: bytes, where: str, client_id: str | None
    ) -> GrantEvent | None:
        try:
            data = json.loads(raw)
            event = event_from_json(data)
        except ValueError as exc:  # a record that cannot be read might be a revocation
            self.report_failure(operation)
            raise StoreError(f"{self.location} {where}: not a micafence record ({exc})") \
                from None
        if self._seal.verified(data, where) is None:
            return None
        if client_id is not None and client_id not in filed_under(event):
            self._seal.reject(data, where, f"a record of {event.client_id} filed under "
                              f"{client_id}")
            return None
        return event


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return "redis://…"

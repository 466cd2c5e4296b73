"""Hot reload: the policy, the GeoIP and anonymizer databases and break-glass, without a restart.

A background task (started and stopped with the server's lifespan) looks at every watched file
each ``interval`` seconds, in a worker thread so the event loop never waits on the disk. A file
whose inode, modification time or size changed is validated in that thread — a policy fully,
a database by its metadata, type, build date and sample lookups
(:mod:`micafence.location.dbcheck`) —
and then a new :class:`~micafence.decide.Enforcer` is built and put in ``middleware.enforcer``
in one assignment. A request reads the enforcer once, so it is decided wholly by the old one or
wholly by the new one; caches belong to the enforcer and its databases, so no answer from the
old generation survives. The old database reader is never closed under a request: it is
released when the last enforcer using it is garbage-collected.

A bad file is refused, logged (``logging.getLogger("micafence")`` with ``extra`` fields
``event``, ``kind``, ``path``, ``detail``) and the one in use is kept; the next change of the
file is tried again. A database built earlier than the one in use is refused unless
``allow_older_database`` (a rollback can also be done by a restart).

Replace a database by writing the new file beside it and renaming it over the old one, as
``geoipupdate`` does. Overwriting a memory-mapped file in place is unsupported: readers of the
old file would see the bytes change under them. It is detected (same inode, new size or time),
logged as an error, and the new content is still validated and loaded as fast as possible.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from micafence.background import stop_task
from micafence.decide import Enforcer
from micafence.errors import GeoIPDatabaseError, MicafenceError
from micafence.identity import IdentifyFunction
from micafence.instants import utc_now
from micafence.live.archive import PolicyArchive
from micafence.live.breakglass import NO_BREAKGLASS, STATE_FILE, BreakGlass, read_state
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.dbcheck import check_geoip, check_records, too_old
from micafence.location.geo import GeoIPDatabase
from micafence.location.rewrite_alarm import ClientRewriteAlarm
from micafence.policy.loader import read_policy
from micafence.policy.model import Policy

logger = logging.getLogger("micafence")

Signature = tuple[int, int, int, int]  # device, inode, mtime (ns), size


class EnforcerHolder(Protocol):
    """What the reloader swaps into: the middleware."""

    enforcer: Enforcer


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """One thing the reloader did, for logs, the health endpoint and tests."""

    at: dt.datetime
    kind: str  # policy | geoip | anonymizer | breakglass
    path: str
    outcome: str  # loaded | refused | unchanged
    detail: str  # the revision or build loaded, or the problem


def signature(path: str) -> Signature | None:
    """What tells a replaced file apart; ``None`` when there is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _digest(path: str) -> str:
    """The content hash of a file ("" when it cannot be read: opening it will say why)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return ""


class _Watch:
    """A watched file: its path and the signature last seen. ``mapped``: a memory-mapped
    database, which must never be overwritten in place."""

    def __init__(self, path: str, *, mapped: bool = False) -> None:
        self.path = path
        self.mapped = mapped
        self.seen = signature(path)

    def changed(self) -> bool:
        """Has the file changed (replaced, touched, gone) since last seen?"""
        now = signature(self.path)
        if now == self.seen:
            return False
        previous, self.seen = self.seen, now
        if self.mapped and now is not None and previous is not None and now[:2] == previous[:2]:
            logger.error(
                "micafence: %s was overwritten in place; replace files by writing a new one "
                "and renaming it over the old (as geoipupdate does)", self.path,
                extra={"event": "reload.in_place", "kind": "file", "path": self.path,
                       "detail": "overwritten in place"},
            )
        return True


class Reloader:
    """Holds what the enforcer is built from, and rebuilds it when a watched file changes.

    Construction loads everything once and fails loudly (as start-up should); afterwards
    :meth:`check` never raises for a bad file. ``policy`` and ``geoip_db`` are paths or loaded
    objects: a policy given as an object is not watched; a database object is watched by its
    path. The initial enforcer is put in ``holder.enforcer``.
    """

    def __init__(
        self,
        holder: EnforcerHolder,
        *,
        policy: str | os.PathLike[str] | Policy,
        geoip_db: str | os.PathLike[str] | GeoIPDatabase,
        anonymizer_db: str | os.PathLike[str] | AnonymousIPDatabase | None = None,
        identify: IdentifyFunction | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        archive_dir: str | os.PathLike[str] | None = None,
        breakglass_dir: str | os.PathLike[str] | None = None,
        interval: float = 0.5,
        allow_older_database: bool = False,
        rewrite_alarm: ClientRewriteAlarm | None = None,
    ) -> None:
        self._holder = holder
        self._identify = identify
        # Every enforcer built here trips the same alarm: it outlives them all.
        self.rewrite_alarm = rewrite_alarm or ClientRewriteAlarm()
        self.clock = clock or utc_now
        self.interval = interval
        self.allow_older_database = allow_older_database
        self.archive = PolicyArchive(archive_dir) if archive_dir is not None else None
        self.events: collections.deque[ReloadEvent] = collections.deque(maxlen=64)
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

        self._policy_watch: _Watch | None = None
        if isinstance(policy, Policy):
            self.policy, raw = policy, None
        else:
            self._policy_watch = _Watch(os.fspath(policy))
            self.policy, raw = read_policy(self._policy_watch.path)
        # Watch and hash before opening: a file replaced meanwhile is then seen as changed.
        path = geoip_db.path if isinstance(geoip_db, GeoIPDatabase) else os.fspath(geoip_db)
        self._geoip_watch = _Watch(path, mapped=True)
        self._geoip_digest = _digest(path)
        self.geoip = geoip_db if isinstance(geoip_db, GeoIPDatabase) else GeoIPDatabase(path)
        check_geoip(self.geoip, self.policy.database)

        self.anonymizer: AnonymousIPDatabase | None = None
        self._anonymizer_watch: _Watch | None = None
        self._anonymizer_digest = ""
        if anonymizer_db is not None:
            path = (anonymizer_db.path if isinstance(anonymizer_db, AnonymousIPDatabase)
                    else os.fspath(anonymizer_db))
            self._anonymizer_watch = _Watch(path, mapped=True)
            self._anonymizer_digest = _digest(path)
            self.anonymizer = (anonymizer_db if isinstance(anonymizer_db, AnonymousIPDatabase)
                               else AnonymousIPDatabase(path))
            self._check_anonymizer(self.anonymizer, self.policy)

        self.breakglass: BreakGlass = NO_BREAKGLASS
        self._breakglass_watch: _Watch | None = None
        if breakglass_dir is not None:
            self._breakglass_watch = _Watch(os.path.join(os.fspath(breakglass_dir), STATE_FILE))
            self.breakglass = read_state(breakglass_dir)

        holder.enforcer = self._build(self.policy, self.geoip, self.anonymizer, self.breakglass)
        now = self.clock()
        if raw is not None and self.archive is not None:
            self.archive.record(raw, self.policy, now)
        self.loaded_at = {"policy": now, "geoip": now, "anonymizer": now, "breakglass": now}
        self.last_check = now
        self.database_stale = False
        self._note_staleness(now)

    # -- the background task -------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching (a lifespan start-up hook)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="micafence-reload")

    async def stop(self) -> None:
        """Stop watching (a lifespan shutdown hook)."""
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the watcher must outlive any surprise: next tick tries again
                logger.exception("micafence: reload check failed",
                                 extra={"event": "reload.error", "kind": "", "path": "",
                                        "detail": "unexpected error"})

    # -- one look at every file ----------------------------------------------------------------

    def check(self) -> bool:
        """Look at every watched file once; validate, rebuild and swap. True if swapped."""
        with self._lock:
            return self._check()

    def _check(self) -> bool:
        now = self.clock()
        self.last_check = now
        policy, raw, geoip, anonymizer, breakglass = (
            self.policy, None, self.geoip, self.anonymizer, self.breakglass
        )
        changed: list[str] = []
        digests: dict[str, str] = {}
        if self._policy_watch is not None and self._policy_watch.changed():
            loaded = self._load_policy(self._policy_watch.path, geoip)
            if loaded is not None:
                policy, raw = loaded
                changed.append("policy")
        if self._geoip_watch.changed():
            new_geoip = self._load_geoip(self._geoip_watch.path, policy)
            if new_geoip is not None:
                geoip, digests["geoip"] = new_geoip
                changed.append("geoip")
        if self._anonymizer_watch is not None and self._anonymizer_watch.changed():
            new_anonymizer = self._load_anonymizer(self._anonymizer_watch.path, policy)
            if new_anonymizer is not None:
                anonymizer, digests["anonymizer"] = new_anonymizer
                changed.append("anonymizer")
        if self._breakglass_watch is not None and self._breakglass_watch.changed():
            new_state = self._load_breakglass(self._breakglass_watch.path)
            if new_state is not None:
                breakglass = new_state
                changed.append("breakglass")
        swapped = bool(changed) and self._swap(
            changed, policy, raw, geoip, anonymizer, breakglass, now
        )
        if swapped:
            self._geoip_digest = digests.get("geoip", self._geoip_digest)
            self._anonymizer_digest = digests.get("anonymizer", self._anonymizer_digest)
        self._note_staleness(now)
        return swapped

    def _swap(
        self,
        changed: list[str],
        policy: Policy,
        raw: bytes | None,
        geoip: GeoIPDatabase,
        anonymizer: AnonymousIPDatabase | None,
        breakglass: BreakGlass,
        now: dt.datetime,
    ) -> bool:
        try:
            enforcer = self._build(policy, geoip, anonymizer, breakglass)
            if raw is not None and self.archive is not None:
                self.archive.record(raw, policy, now)
        except (MicafenceError, ValueError, OSError) as exc:
            # Only a new policy can make this fail (a callable identity source without
            # identify=, an archive that cannot be written): it is refused, nothing is
            # swapped, and the other files are looked at again on the next tick.
            self._refuse("policy", policy.source, str(exc))
            for kind in changed:
                if kind != "policy":
                    self._forget(kind)
            return False
        self._holder.enforcer = enforcer  # the swap: one assignment
        self.policy, self.geoip, self.anonymizer, self.breakglass = (
            policy, geoip, anonymizer, breakglass
        )
        details = {
            "policy": f"{policy.name} {policy.revision}",
            "geoip": f"{geoip.database_type} built {geoip.built_at.isoformat()}",
            "anonymizer": (f"{anonymizer.database_type} built {anonymizer.built_at.isoformat()}"
                           if anonymizer else ""),
            "breakglass": breakglass.describe(),
        }
        paths = {"policy": policy.source, "geoip": geoip.path,
                 "anonymizer": anonymizer.path if anonymizer else "",
                 "breakglass": self._breakglass_watch.path if self._breakglass_watch else ""}
        for kind in changed:
            self.loaded_at[kind] = now
            self._record(logging.WARNING if kind == "breakglass" else logging.INFO,
                         kind, paths[kind], "loaded", details[kind])
        return True

    def _forget(self, kind: str) -> None:
        """Make a watched file count as unseen, so the next tick loads it again."""
        watch = {"geoip": self._geoip_watch, "anonymizer": self._anonymizer_watch,
                 "breakglass": self._breakglass_watch}[kind]
        if watch is not None:
            watch.seen = None

    # -- loading and validating one file (in the worker thread) --------------------------------

    def _load_policy(self, path: str, geoip: GeoIPDatabase) -> tuple[Policy, bytes] | None:
        try:
            policy, raw = read_policy(path)
            check_geoip(geoip, policy.database)  # the new probes, on the database in use
        except MicafenceError as exc:
            self._refuse("policy", path, str(exc))
            return None
        if policy.revision == self.policy.revision:
            self._record(logging.INFO, "policy", path, "unchanged", policy.revision)
            return None
        return policy, raw

    def _load_geoip(self, path: str, policy: Policy) -> tuple[GeoIPDatabase, str] | None:
        try:
            digest = _digest(path)
            if digest == self._geoip_digest:
                self._record(logging.INFO, "geoip", path, "unchanged", "same content")
                return None
            database = GeoIPDatabase(path)
        except OSError as exc:
            self._refuse("geoip", path, f"cannot read: {exc.strerror or exc}")
            return None
        except MicafenceError as exc:
            self._refuse("geoip", path, str(exc))
            return None
        try:
            check_geoip(database, policy.database)
            self._check_build(database.path, database.build_epoch, self.geoip.build_epoch)
        except MicafenceError as exc:
            database.close()  # never used by a request
            self._refuse("geoip", path, str(exc))
            return None
        return database, digest

    def _load_anonymizer(
        self, path: str, policy: Policy
    ) -> tuple[AnonymousIPDatabase, str] | None:
        current = self.anonymizer
        try:
            digest = _digest(path)
            if digest == self._anonymizer_digest:
                self._record(logging.INFO, "anonymizer", path, "unchanged", "same content")
                return None
            database = AnonymousIPDatabase(path)
        except OSError as exc:
            self._refuse("anonymizer", path, f"cannot read: {exc.strerror or exc}")
            return None
        except MicafenceError as exc:
            self._refuse("anonymizer", path, str(exc))
            return None
        try:
            self._check_anonymizer(database, policy)
            if current is not None:
                self._check_build(path, database.build_epoch, current.build_epoch)
        except MicafenceError as exc:
            database.close()
            self._refuse("anonymizer", path, str(exc))
            return None
        return database, digest

    def _load_breakglass(self, path: str) -> BreakGlass | None:
        try:
            state = read_state(os.path.dirname(path))
        except MicafenceError as exc:
            self._refuse("breakglass", path, str(exc))
            return None
        return None if state == self.breakglass else state

    def _check_build(self, path: str, new: int, current: int) -> None:
        if new < current and not self.allow_older_database:
            raise GeoIPDatabaseError(
                path,
                f"built {_iso(new)}, older than the database in use (built {_iso(current)}); "
                "restart or pass allow_older_database=True to roll back",
            )

    @staticmethod
    def _check_anonymizer(database: AnonymousIPDatabase, policy: Policy) -> None:
        check_records(database.reader, database.path, (ip for ip, _ in policy.database.probes))

    def _build(
        self,
        policy: Policy,
        geoip: GeoIPDatabase,
        anonymizer: AnonymousIPDatabase | None,
        breakglass: BreakGlass,
    ) -> Enforcer:
        return Enforcer(policy, geoip, identify=self._identify, anonymizer=anonymizer,
                        clock=self.clock, breakglass=breakglass,
                        rewrite_alarm=self.rewrite_alarm)

    # -- reporting -----------------------------------------------------------------------------

    def _note_staleness(self, now: dt.datetime) -> None:
        stale = too_old(self.geoip.built_at, self.policy.database, now)
        if stale and not self.database_stale:
            logger.warning(
                "micafence: GeoIP database %s built %s is older than database.max_age",
                self.geoip.path, self.geoip.built_at.isoformat(),
                extra={"event": "database.stale", "kind": "geoip", "path": self.geoip.path,
                       "detail": f"built {self.geoip.built_at.isoformat()}"},
            )
        self.database_stale = stale

    def _refuse(self, kind: str, path: str, problem: str) -> None:
        self._record(logging.ERROR, kind, path, "refused", problem)

    def _record(self, level: int, kind: str, path: str, outcome: str, detail: str) -> None:
        self.events.append(ReloadEvent(self.clock(), kind, path, outcome, detail))
        logger.log(
            level, "micafence: %s %s %s: %s", kind, path, outcome, detail,
            extra={"event": f"reload.{outcome}", "kind": kind, "path": path, "detail": detail},
        )


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()

"""Grants: the firm's verified records that a client exclusively initiated a service.

A :class:`Grant` says who (client), what (one service on one asset), when and how the client
initiated (``initiated_at``, ``channel``), the evidence reference, who verified it, when it was
recorded and under which policy revision, and its two time bounds. A :class:`Revocation` is a
later, separate record: the history is append-only (RULES.md rule 11), nothing is ever edited
or deleted, and a grant's status (pending, active, expired, revoked) is derived from the records
and the clock. Under maker-checker (``scopes.maker_checker``) a grant is recorded
``approval_required`` and is pending until an :class:`Approval` by a second, different officer;
an :class:`AccountBinding` records the account opened with the grant's onboarding token
(:mod:`micafence.scopes.onboarding`).

:class:`GrantBook` is the Python API ops tools use (``micafence grant`` is built on it)::

    book = GrantBook(open_store("file:///var/lib/micafence/grants.jsonl"), load_policy(path))
    grant = await book.add(client_id="client-7", service="exchange_for_funds", asset="BTC",
                           initiated_at=datetime(2025, 3, 3, 9, 30, tzinfo=UTC),
                           channel="email", evidence="ticket CS-1042", verified_by="a.lind")
    await book.revoke(grant.id, revoked_by="a.lind", reason="client closed the relationship")
"""

from __future__ import annotations

import builtins
import datetime as dt
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from micafence.errors import GrantError
from micafence.identity import clean_client_id, clean_country
from micafence.instants import Clock, parse_instant, utc_now
from micafence.policy.durations import format_duration, parse_duration
from micafence.policy.model import Policy

if TYPE_CHECKING:  # the store module imports this one for the record types
    from micafence.store.base import Store

_MAX_TEXT = 500


class GrantStatus(StrEnum):
    PENDING = "pending"  # maker-checker: recorded, awaiting a second officer's approval
    ACTIVE = "active"
    EXPIRED = "expired"  # the scope term has passed
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified client-initiated scope: one service on one asset, for a bounded time."""

    id: str
    client_id: str
    service: str
    asset: str
    initiated_at: dt.datetime  # when the client approached the firm
    channel: str  # how it did (email, phone, web form, …)
    evidence: str  # reference to the evidence kept (ticket, recording, letter)
    verified_by: str
    recorded_at: dt.datetime
    term: dt.timedelta  # the exact service and asset, from initiated_at
    same_type_window: dt.timedelta  # assets of the same type, from initiated_at
    policy_revision: str
    country: str | None = None  # location signal seen when the client initiated, if known
    solicitation_override: str | None = None  # why a grant was recorded despite solicitation
    solicitations_seen: int = 0  # solicitation records the client had at recording time
    approval_required: bool = False  # maker-checker: pending until another officer approves

    @property
    def expires_at(self) -> dt.datetime:
        return self.initiated_at + self.term

    @property
    def same_type_until(self) -> dt.datetime:
        return self.initiated_at + self.same_type_window


@dataclass(frozen=True, slots=True)
class Revocation:
    """The record that ends a grant at once. The grant itself stays in the history."""

    grant_id: str
    client_id: str
    revoked_at: dt.datetime
    revoked_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class Approval:
    """Maker-checker: a second officer approved a grant; it is in force from then on."""

    grant_id: str
    client_id: str
    approved_at: dt.datetime
    approved_by: str


@dataclass(frozen=True, slots=True)
class AccountBinding:
    """The account opened with a grant's onboarding token: it holds the grant from then on."""

    grant_id: str
    client_id: str  # the grant's client
    account_id: str  # the new account's id, as the app named it
    bound_at: dt.datetime


GrantEvent = Grant | Revocation | Approval | AccountBinding


def grant_id_of(event: GrantEvent) -> str:
    """The grant a record is about."""
    return event.id if isinstance(event, Grant) else event.grant_id


def filed_under(event: GrantEvent) -> tuple[str, ...]:
    """The clients whose history a record belongs to: a binding also to the new account's."""
    if isinstance(event, AccountBinding) and event.account_id != event.client_id:
        return (event.client_id, event.account_id)
    return (event.client_id,)


@dataclass(frozen=True, slots=True)
class GrantState:
    """A grant with its revocation, approval and accounts, as folded from the history."""

    grant: Grant
    revocation: Revocation | None
    approval: Approval | None = None
    accounts: tuple[AccountBinding, ...] = ()

    @property
    def pending(self) -> bool:
        """Recorded under maker-checker and not approved yet."""
        return self.grant.approval_required and self.approval is None

    @property
    def in_force(self) -> bool:
        """Neither revoked nor pending (the time bounds are checked against the request)."""
        return self.revocation is None and not self.pending

    def status(self, now: dt.datetime) -> GrantStatus:
        if self.revocation is not None:
            return GrantStatus.REVOKED
        if now >= self.grant.expires_at:
            return GrantStatus.EXPIRED
        return GrantStatus.PENDING if self.pending else GrantStatus.ACTIVE

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        """JSON-ready, with the derived status and both bounds as instants."""
        view = event_to_json(self.grant)
        del view["event"]
        view["status"] = self.status(now).value
        view["expires_at"] = self.grant.expires_at.isoformat()
        view["same_type_until"] = self.grant.same_type_until.isoformat()
        view["revocation"] = None
        if self.revocation is not None:
            revocation = event_to_json(self.revocation)
            del revocation["event"], revocation["grant_id"], revocation["client_id"]
            view["revocation"] = revocation
        view["approval_required"] = self.grant.approval_required
        view["approval"] = None if self.approval is None else {
            "approved_at": self.approval.approved_at.isoformat(),
            "approved_by": self.approval.approved_by,
        }
        view["accounts"] = [
            {"account_id": a.account_id, "bound_at": a.bound_at.isoformat()}
            for a in self.accounts
        ]
        return view


def fold(events: Iterable[GrantEvent]) -> list[GrantState]:
    """The grants in a history, in recording order, each with what later records say of it."""
    grants: dict[str, Grant] = {}
    revoked: dict[str, Revocation] = {}
    approved: dict[str, Approval] = {}
    accounts: dict[str, dict[str, AccountBinding]] = {}
    for event in events:
        if isinstance(event, Grant):
            grants.setdefault(event.id, event)
        elif isinstance(event, Revocation):
            revoked.setdefault(event.grant_id, event)
        elif isinstance(event, Approval):
            approved.setdefault(event.grant_id, event)
        else:
            accounts.setdefault(event.grant_id, {}).setdefault(event.account_id, event)
    return [
        GrantState(grant, revoked.get(grant.id), approved.get(grant.id),
                   tuple(accounts.get(grant.id, {}).values()))
        for grant in grants.values()
    ]


# -- records as JSON (file store, export, --json) ------------------------------------------------


def event_to_json(event: GrantEvent) -> dict[str, Any]:
    """A history record as a JSON object (instants ISO 8601, durations ISO 8601)."""
    if isinstance(event, Revocation):
        return {
            "event": "revocation", "grant_id": event.grant_id, "client_id": event.client_id,
            "revoked_at": event.revoked_at.isoformat(), "revoked_by": event.revoked_by,
            "reason": event.reason,
        }
    if isinstance(event, Approval):
        return {
            "event": "approval", "grant_id": event.grant_id, "client_id": event.client_id,
            "approved_at": event.approved_at.isoformat(), "approved_by": event.approved_by,
        }
    if isinstance(event, AccountBinding):
        return {
            "event": "account_binding", "grant_id": event.grant_id,
            "client_id": event.client_id, "account_id": event.account_id,
            "bound_at": event.bound_at.isoformat(),
        }
    record: dict[str, Any] = {
        "event": "grant", "id": event.id, "client_id": event.client_id,
        "service": event.service, "asset": event.asset,
        "initiated_at": event.initiated_at.isoformat(), "channel": event.channel,
        "evidence": event.evidence, "verified_by": event.verified_by,
        "recorded_at": event.recorded_at.isoformat(),
        "term": format_duration(event.term),
        "same_type_window": format_duration(event.same_type_window),
        "policy_revision": event.policy_revision, "country": event.country,
        "solicitation_override": event.solicitation_override,
        "solicitations_seen": event.solicitations_seen,
    }
    if event.approval_required:  # only then: records made without maker-checker stay as they were
        record["approval_required"] = True
    return record


_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(2999, 12, 31, tzinfo=dt.UTC)


def event_from_json(data: Any) -> GrantEvent:
    """The inverse of :func:`event_to_json`; raises ``ValueError`` for anything else."""
    if not isinstance(data, dict):
        raise ValueError("a grant record must be a JSON object")
    try:
        if data["event"] == "revocation":
            return Revocation(
                _text(data["grant_id"]), _text(data["client_id"]), _instant(data["revoked_at"]),
                _text(data["revoked_by"]), _text(data["reason"]),
            )
        if data["event"] == "approval":
            return Approval(
                _text(data["grant_id"]), _text(data["client_id"]),
                _instant(data["approved_at"]), _text(data["approved_by"]),
            )
        if data["event"] == "account_binding":
            return AccountBinding(
                _text(data["grant_id"]), _text(data["client_id"]), _text(data["account_id"]),
                _instant(data["bound_at"]),
            )
        if data["event"] != "grant":
            raise ValueError(f"unknown record kind {data['event']!r}")
        return Grant(
            id=_text(data["id"]), client_id=_text(data["client_id"]),
            service=_text(data["service"]), asset=_text(data["asset"]),
            initiated_at=_instant(data["initiated_at"]), channel=_text(data["channel"]),
            evidence=_text(data["evidence"]), verified_by=_text(data["verified_by"]),
            recorded_at=_instant(data["recorded_at"]),
            term=parse_duration(_text(data["term"])),
            same_type_window=parse_duration(_text(data["same_type_window"])),
            policy_revision=_text(data["policy_revision"]),
            country=_optional_text(data.get("country")),
            solicitation_override=_optional_text(data.get("solicitation_override")),
            solicitations_seen=_count(data.get("solicitations_seen") or 0),
            approval_required=data.get("approval_required") is True,
        )
    except KeyError as exc:
        raise ValueError(f"grant record without {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ValueError(f"malformed grant record: {exc}") from None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _instant(value: object) -> dt.datetime:
    instant = parse_instant(_text(value), allow_date=False)
    # A record from before 1970 or after 2999 is corrupt, and adding a scope term to a date
    # near the end of the calendar would overflow on the request path.
    if not _EARLIEST <= instant <= _LATEST:
        raise ValueError(f"{value!r} is outside the years 1970 to 2999")
    return instant


# -- the Python API ------------------------------------------------------------------------------


class GrantBook:
    """Record, revoke and read grants against one store and one policy's catalogue.

    ``policy`` is needed only to add grants (its catalogue and revision); revoking and reading
    work without one, so a broken policy file never stands in the way of a revocation.
    """

    def __init__(self, store: Store, policy: Policy | None, clock: Clock = utc_now) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def add(
        self,
        *,
        client_id: str,
        service: str,
        asset: str,
        initiated_at: dt.datetime,
        channel: str,
        evidence: str,
        verified_by: str,
        term: dt.timedelta | None = None,
        same_type_window: dt.timedelta | None = None,
        country: str | None = None,
        override_solicitation: str | None = None,
    ) -> Grant:
        """Record a grant, or raise :class:`~micafence.errors.GrantError` saying why not.

        Refused: an id that cannot be a client id, a service or asset not in the policy's
        catalogue, missing evidence, channel or verifier, an initiation in the future (after
        the recording time) or so long ago that the scope term has already passed, bounds
        longer than the policy's, and a client with recorded solicitation evidence unless
        ``override_solicitation`` gives the reason (it is recorded in the grant).
        """
        if self.policy is None:
            raise GrantError("adding a grant needs the policy whose catalogue applies")
        catalogue = self.policy.catalogue
        now = self.clock()
        client = clean_client_id(client_id)
        if client is None:
            raise GrantError(f"{client_id!r} is not a client id (letters, digits, . _ : @ -)")
        if service not in catalogue.services:
            raise GrantError(f"unknown service {service!r} (the policy's services: "
                             f"{', '.join(catalogue.services) or 'none'})")
        symbol = asset.strip().upper()
        if symbol not in catalogue.assets:
            raise GrantError(f"unknown asset {asset!r} (the policy's assets: "
                             f"{', '.join(catalogue.assets) or 'none'})")
        texts = {"channel": channel, "evidence": evidence, "verified_by": verified_by}
        for name, value in texts.items():
            texts[name] = _required(name, value)
        if initiated_at.tzinfo is None:
            raise GrantError("initiated_at needs a UTC offset")
        if initiated_at > now:
            raise GrantError(f"initiated_at {initiated_at.isoformat()} is in the future (after "
                             f"the recording time {now.isoformat()})")
        term = _bound("term", term, catalogue.term)
        window = _bound("same_type_window", same_type_window, catalogue.same_type_window)
        if window > term:
            raise GrantError("the same-type window cannot be longer than the scope term")
        if initiated_at + term <= now:
            raise GrantError(f"initiated_at {initiated_at.isoformat()} is more than the scope "
                             f"term ({format_duration(term)}) ago: the grant would be expired")
        seen_in = None
        if country is not None:
            seen_in = clean_country(country)
            if seen_in is None:
                raise GrantError(f"{country!r} is not an ISO 3166-1 alpha-2 country code")
        override = override_solicitation.strip() if override_solicitation else None
        solicitations = await self.store.solicitations(client)
        if solicitations and not override:
            first = solicitations[0]
            via = first.route_id or first.marker or "a marketing marker"
            raise GrantError(
                f"client {client} has {len(solicitations)} recorded solicitation(s) (first "
                f"{first.at.isoformat()} via {via}): their own initiative cannot be presumed. "
                "Record the grant only with an explicit override reason "
                "(--override-solicitation / override_solicitation=)"
            )
        grant = Grant(
            id="grt_" + secrets.token_hex(6), client_id=client, service=service, asset=symbol,
            initiated_at=initiated_at.astimezone(dt.UTC), channel=texts["channel"],
            evidence=texts["evidence"], verified_by=texts["verified_by"], recorded_at=now,
            term=term, same_type_window=window, policy_revision=self.policy.revision,
            country=seen_in, solicitation_override=override,
            solicitations_seen=len(solicitations),
            approval_required=self.policy.grant_store.maker_checker,
        )
        await self.store.append_grant_event(grant)
        return grant

    async def revoke(self, grant_id: str, *, revoked_by: str, reason: str) -> Revocation:
        """End a grant now (a new record; the grant stays in the history)."""
        state = await self.get(grant_id)
        if state.revocation is not None:
            raise GrantError(f"grant {grant_id} was already revoked at "
                             f"{state.revocation.revoked_at.isoformat()}")
        revocation = Revocation(
            grant_id, state.grant.client_id, self.clock(),
            _required("revoked_by", revoked_by), _required("reason", reason),
        )
        await self.store.append_grant_event(revocation)
        return revocation

    async def approve(self, grant_id: str, *, approved_by: str) -> Approval:
        """Maker-checker: put a pending grant in force. The approver must be another officer
        than the one who verified and recorded it."""
        state = await self.get(grant_id)
        officer = _required("approved_by", approved_by)
        if state.revocation is not None:
            raise GrantError(f"grant {grant_id} is revoked: nothing to approve")
        if state.approval is not None:
            raise GrantError(f"grant {grant_id} was already approved by "
                             f"{state.approval.approved_by} at "
                             f"{state.approval.approved_at.isoformat()}")
        if not state.grant.approval_required:
            raise GrantError(f"grant {grant_id} was recorded without maker-checker: it needs "
                             "no approval")
        if officer.casefold() == state.grant.verified_by.casefold():
            raise GrantError(f"maker-checker: {officer} recorded grant {grant_id}; a second, "
                             "different officer must approve it")
        now = self.clock()
        if now >= state.grant.expires_at:
            raise GrantError(f"grant {grant_id} expired at {state.grant.expires_at.isoformat()}")
        approval = Approval(grant_id, state.grant.client_id, now, officer)
        await self.store.append_grant_event(approval)
        return approval

    async def get(self, grant_id: str) -> GrantState:
        """One grant with its revocation; :class:`GrantError` if there is no such grant."""
        for state in fold(await self.store.grant_events()):
            if state.grant.id == grant_id:
                return state
        raise GrantError(f"no grant {grant_id!r}")

    async def list(
        self, client_id: str | None = None, status: GrantStatus | None = None
    ) -> builtins.list[GrantState]:
        """Grants in recording order, of one client or all, optionally of one status."""
        now = self.clock()
        states = fold(await self.store.grant_events(client_id))
        return [s for s in states if status is None or s.status(now) is status]

    async def history(
        self, grant_id: str | None = None, client_id: str | None = None
    ) -> builtins.list[GrantEvent]:
        """The raw records, oldest first: of one grant, one client, or everything."""
        events = await self.store.grant_events(client_id)
        if grant_id is None:
            return events
        found = [e for e in events if (e.id if isinstance(e, Grant) else e.grant_id) == grant_id]
        if not found:
            raise GrantError(f"no grant {grant_id!r}")
        return found


def _required(name: str, value: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise GrantError(f"{name} is required")
    if len(text) > _MAX_TEXT or any(ord(c) < 32 for c in text):
        raise GrantError(f"{name} must be one line of at most {_MAX_TEXT} characters")
    return text


def _bound(name: str, given: dt.timedelta | None, policy: dt.timedelta) -> dt.timedelta:
    # A grant may be narrower than the policy, never wider: the policy is the ceiling.
    if given is None:
        return policy
    if given <= dt.timedelta(0):
        raise GrantError(f"{name} must be longer than zero")
    if given > policy:
        raise GrantError(f"{name} {format_duration(given)} is longer than the policy's "
                         f"{format_duration(policy)}: a grant may shorten it, never lengthen it")
    return given

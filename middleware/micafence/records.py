"""Records: what micafence keeps between requests, and their JSON form.

The ground floor of the package: stores, the audit log, the grant book and the gates all
share these types without importing one another. Nothing here does I/O.

- the grant history (:class:`Grant`, :class:`Revocation`, :class:`Approval`,
  :class:`AccountBinding`: a :data:`GrantEvent` each), folded into :class:`GrantState` by
  :func:`fold`; append-only (RULES.md rule 11);
- the client registry's records in the same history (:class:`Residence`: where a client is
  established; :class:`ArrivalLink`: a solicited arrival linked to the client), folded into
  :class:`Standing` by :func:`standing_of`;
- :class:`OnboardingTicket`: what a store keeps of an onboarding token (its hash, never the
  token);
- :class:`SolicitationEvidence`: an arrival that counts as the firm soliciting a visitor.

Each record reads back from JSON only through the ``*_from_json`` functions, which raise
``ValueError`` naming what is wrong; instants are read by :func:`~micafence.instants.parse_instant`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from micafence.instants import format_duration, parse_duration, parse_instant

# -- the grant history ---------------------------------------------------------------------------


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
    renewal_of: str | None = None  # the client's previous grant for the service, if a renewal

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


@dataclass(frozen=True, slots=True)
class Residence:
    """The client registry: where a client is established, as an officer, the host app (at
    sign-up or KYC) or a grant recorded it. The latest record of a client is the registry's
    word; earlier ones stay in the history."""

    client_id: str
    country: str  # ISO 3166-1 alpha-2
    evidence: str  # the KYC file, document or grant that shows it
    recorded_by: str  # an officer, or "app:<what>" for the host app's Python API
    recorded_at: dt.datetime
    source: str = "officer"  # officer | app | grant | onboarding


@dataclass(frozen=True, slots=True)
class ArrivalLink:
    """A solicited arrival linked to a client: the first time the arrival's first-party cookie
    came with this client's identity (a sign-in or a sign-up). From then on the solicitation
    evidence recorded under the cookie counts against the client."""

    client_id: str
    subject: str  # the evidence subject: "cookie:<visitor id>"
    solicited_at: dt.datetime  # the earliest evidence recorded for that subject
    linked_at: dt.datetime
    marker: str | None = None  # the route or marker that arrival came through


GrantEvent = Grant | Revocation | Approval | AccountBinding | Residence | ArrivalLink


def grant_id_of(event: GrantEvent) -> str:
    """The grant a record is about ("" for the registry's records, which are about no grant)."""
    if isinstance(event, Grant):
        return event.id
    if isinstance(event, Residence | ArrivalLink):
        return ""
    return event.grant_id


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
    #: Neither revoked nor pending (the time bounds are checked against the request). Set once
    #: here: every grant check reads it, and a property is a call each time.
    in_force: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_force", self.revocation is None and not self.pending)

    @property
    def pending(self) -> bool:
        """Recorded under maker-checker and not approved yet."""
        return self.grant.approval_required and self.approval is None

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
        view["renewal_of"] = self.grant.renewal_of
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
        elif isinstance(event, AccountBinding):
            accounts.setdefault(event.grant_id, {}).setdefault(event.account_id, event)
    return [
        GrantState(grant, revoked.get(grant.id), approved.get(grant.id),
                   tuple(accounts.get(grant.id, {}).values()))
        for grant in grants.values()
    ]


class Standing(NamedTuple):
    """Where a client's history says it is established: the client-registry signals a request
    made with its identity carries (:meth:`micafence.decide.Enforcer.decide`)."""

    registry: str | None = None  # the country of the client's latest Residence record
    grants: tuple[str, ...] = ()  # the countries named by the unrevoked grants it holds
    legacy: bool = False  # it holds an unrevoked grant recorded before grants named a country
    unknown: bool = False  # the store could not be read, and nothing of the client was known

    def __bool__(self) -> bool:
        """Does the registry say anything (an empty standing adds no zone)."""
        return self.registry is not None or bool(self.grants) or self.legacy or self.unknown


NO_STANDING = Standing()
#: What the registry says of a client it cannot read and has never read: where it is
#: established cannot be told, so it counts as the unknown country (the failure posture).
UNKNOWN_STANDING = Standing(unknown=True)


def standing_of(events: Iterable[GrantEvent]) -> Standing:
    """A client's :class:`Standing`, from its holdings (its records, and the grants bound to it
    as the account opened with their onboarding token). Expired grants count (the client was
    established there when it approached the firm); revoked ones do not."""
    events = tuple(events)
    registry: Residence | None = None
    countries: dict[str, None] = {}
    legacy = False
    for state in fold(events):
        if state.revocation is None:
            if state.grant.country is None:
                legacy = True
            else:
                countries[state.grant.country] = None
    for event in events:
        if isinstance(event, Residence) and (
                registry is None or event.recorded_at >= registry.recorded_at):
            registry = event
    if registry is None and not countries and not legacy:
        return NO_STANDING
    return Standing(registry.country if registry else None, tuple(sorted(countries)), legacy)


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
    if isinstance(event, Residence):
        return {
            "event": "residence", "client_id": event.client_id, "country": event.country,
            "evidence": event.evidence, "recorded_by": event.recorded_by,
            "recorded_at": event.recorded_at.isoformat(), "source": event.source,
        }
    if isinstance(event, ArrivalLink):
        return {
            "event": "arrival_link", "client_id": event.client_id, "subject": event.subject,
            "solicited_at": event.solicited_at.isoformat(),
            "linked_at": event.linked_at.isoformat(), "marker": event.marker,
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
    if event.renewal_of is not None:  # likewise: records of first grants stay as they were
        record["renewal_of"] = event.renewal_of
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
        if data["event"] == "residence":
            return Residence(
                _text(data["client_id"]), _country(data["country"]), _text(data["evidence"]),
                _text(data["recorded_by"]), _instant(data["recorded_at"]),
                _text(data.get("source") or "officer"),
            )
        if data["event"] == "arrival_link":
            return ArrivalLink(
                _text(data["client_id"]), _text(data["subject"]),
                _instant(data["solicited_at"]), _instant(data["linked_at"]),
                _optional_text(data.get("marker")),
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
            renewal_of=_optional_text(data.get("renewal_of")),
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


def _country(value: object) -> str:
    text = _text(value)
    if len(text) != 2 or not text.isascii() or not text.isupper() or not text.isalpha():
        raise ValueError(f"expected a country code such as FR, got {value!r}")
    return text


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


# -- onboarding tickets --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnboardingTicket:
    """What the store keeps of an onboarding token: its hash, never the token."""

    token_hash: str  # SHA-256 hex of the token
    grant_id: str
    client_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    issued_by: str


def ticket_to_json(ticket: OnboardingTicket) -> dict[str, Any]:
    return {
        "event": "onboarding_ticket", "token_hash": ticket.token_hash,
        "grant_id": ticket.grant_id, "client_id": ticket.client_id,
        "issued_at": ticket.issued_at.isoformat(), "expires_at": ticket.expires_at.isoformat(),
        "issued_by": ticket.issued_by,
    }


def ticket_from_json(data: Any) -> OnboardingTicket:
    """The inverse of :func:`ticket_to_json`; ``ValueError`` for anything else."""
    try:
        if not isinstance(data, dict) or data["event"] != "onboarding_ticket":
            raise ValueError("not an onboarding ticket")
        fields = [data[k] for k in ("token_hash", "grant_id", "client_id", "issued_by")]
        if not all(isinstance(f, str) and f for f in fields):
            raise ValueError("onboarding ticket with an empty field")
        issued_at = parse_instant(str(data["issued_at"]), allow_date=False)
        expires_at = parse_instant(str(data["expires_at"]), allow_date=False)
        return OnboardingTicket(fields[0], fields[1], fields[2], issued_at, expires_at, fields[3])
    except KeyError as exc:
        raise ValueError(f"onboarding ticket without {exc.args[0]!r}") from None


# -- solicitation evidence -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SolicitationEvidence:
    """An EU arrival through a promotion route or a marketing marker: evidence that the firm
    solicited this visitor, which later counts against any claim of client initiative."""

    subject: str  # a client id, or "cookie:<first-party visitor id>" when anonymous
    at: dt.datetime
    zone: str
    country: str | None
    route_id: str | None  # the promotion route, if that is how they arrived
    marker: str | None  # the marketing marker seen, e.g. "ref=FRIEND10" or "utm_source=x"


def evidence_to_json(evidence: SolicitationEvidence) -> dict[str, Any]:
    return {
        "event": "solicitation", "subject": evidence.subject, "at": evidence.at.isoformat(),
        "zone": evidence.zone, "country": evidence.country, "route_id": evidence.route_id,
        "marker": evidence.marker,
    }


def evidence_from_json(data: Any) -> SolicitationEvidence:
    """The inverse of :func:`evidence_to_json`; ``ValueError`` for anything else."""
    try:
        return SolicitationEvidence(
            subject=str(data["subject"]), at=parse_instant(str(data["at"]), allow_date=False),
            zone=str(data["zone"]), country=data.get("country"),
            route_id=data.get("route_id"), marker=data.get("marker"),
        )
    except KeyError as exc:
        raise ValueError(f"solicitation evidence without {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed solicitation evidence: {exc}") from None

"""Grants: recording, revoking and reading the firm's verified records that a client
exclusively initiated a service.

The record types live on the ground floor, in :mod:`micafence.records`: a grant says who
(client), what (one service on one asset), when and how the client initiated, the evidence
reference, who verified it, when it was recorded and under which policy revision, and its two
time bounds. A revocation is a later, separate record: the history is append-only (RULES.md
rule 11), nothing is ever edited or deleted, and a grant's status (pending, active, expired,
revoked) is derived from the records and the clock. Under maker-checker
(``scopes.maker_checker``), and for every grant recorded over solicitation evidence with an
override reason, a grant is recorded ``approval_required`` and is pending until an approval by
a second, different officer; a renewal names the grant it renews (``renewal_of``); an account
binding records the account opened with the grant's onboarding token
(:mod:`micafence.grants.onboarding`).

:class:`GrantBook` is the Python API ops tools use (``micafence grant`` is built on it)::

    book = GrantBook(open_store("file:///var/lib/micafence/grants.jsonl"), load_policy(path))
    grant = await book.add(client_id="client-7", service="exchange_for_funds", asset="BTC",
                           initiated_at=datetime(2025, 3, 3, 9, 30, tzinfo=UTC),
                           channel="email", evidence="ticket CS-1042", verified_by="a.lind",
                           country="FR")
    await book.revoke(grant.id, revoked_by="a.lind", reason="client closed the relationship")
"""

from __future__ import annotations

import builtins
import datetime as dt
import secrets
import unicodedata

from micafence.errors import GrantError
from micafence.grants.arrivals import solicitations_of
from micafence.identity import clean_client_id, clean_country
from micafence.instants import Clock, format_duration, utc_now
from micafence.policy.model import Policy
from micafence.records import (
    Approval,
    Grant,
    GrantEvent,
    GrantState,
    GrantStatus,
    Revocation,
    fold,
    grant_id_of,
)
from micafence.store.base import Store

_MAX_TEXT = 500


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

        ``country`` is where the client is established (ISO 3166-1 alpha-2), required: the
        grant puts the client in that country's zones. Refused: an id that cannot be a client
        id, a missing or invalid country, a service or asset not in the policy's catalogue,
        missing evidence, channel or verifier, an initiation in the future (after the
        recording time) or so long ago that the scope term has already passed, and bounds
        longer than the policy's.

        **Solicitation.** A client with solicitation evidence inside the look-back window
        (``promotions.solicitation_lookback``, back from ``initiated_at``), recorded under its
        id or under an arrival cookie linked to it (:mod:`micafence.grants.arrivals`), is
        refused unless ``override_solicitation`` gives the reason; the grant then records the
        reason and is ``approval_required``: pending until a second, different officer
        approves it (:meth:`approve`). An override with nothing to override is refused too.

        **Renewals.** A grant for the same client (its holdings: an account an onboarding token
        opened holds the grant it was opened with) and service whose initiative is later than
        an earlier grant's, recorded while that one runs or within ``scopes.renewal_window``
        after it ends (expiry or revocation), renews it (``renewal_of``): it must name an
        evidence reference no grant of an earlier approach of the client used (grants of one
        approach, such as two assets asked for in one email, share their evidence).
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
        established = _country(country)
        override = override_solicitation.strip() if override_solicitation else None
        if override is not None:
            override = _required("the override reason", override)
        lookback = self.policy.promotions.solicitation_lookback
        since = lookback.start(initiated_at)
        solicited = await solicitations_of(self.store, client, since)
        if solicited and not override:
            raise GrantError(
                f"client {client} was solicited within the look-back window "
                f"(promotions.solicitation_lookback {lookback}, from {since.isoformat()}): "
                f"{len(solicited)} solicited arrival(s), first {solicited[0].describe()}. "
                "Their own initiative cannot be presumed: record the grant only with an "
                "override reason (--override-reason / override_solicitation=); it is then "
                "pending until a second officer approves it (micafence grant approve)")
        if override and not solicited:
            raise GrantError(
                f"client {client} has no solicitation evidence within the look-back window "
                f"(promotions.solicitation_lookback {lookback}, from {since.isoformat()}): "
                "there is nothing to override; record the grant without an override reason")
        # Its holdings: its own grants and those bound to it as the account an onboarding
        # token opened (the app names an onboarded client by that account from then on).
        history = await self.store.holdings(client)
        renewal_of = self._renewal_of(fold(history), client, service, initiated_at,
                                      texts["evidence"], now)
        grant = Grant(
            id="grt_" + secrets.token_hex(6), client_id=client, service=service, asset=symbol,
            initiated_at=initiated_at.astimezone(dt.UTC), channel=texts["channel"],
            evidence=texts["evidence"], verified_by=texts["verified_by"], recorded_at=now,
            term=term, same_type_window=window, policy_revision=self.policy.revision,
            country=established, solicitation_override=override,
            solicitations_seen=len(solicited),
            # Maker-checker, and always for an override: one officer alone cannot presume
            # the initiative of a client the firm solicited.
            approval_required=self.policy.grant_store.maker_checker or override is not None,
            renewal_of=renewal_of,
        )
        await self.store.append_grant_event(grant)
        return grant

    def _renewal_of(
        self, earlier: builtins.list[GrantState], client: str, service: str,
        initiated_at: dt.datetime, evidence: str, now: dt.datetime,
    ) -> str | None:
        """The grant a new one renews (``None``: it renews none), refusing a renewal whose
        evidence reference an earlier grant of the client used."""
        assert self.policy is not None
        window = self.policy.grant_store.renewal_window
        previous: GrantState | None = None
        for state in earlier:  # the client's holdings: its own grants and those bound to it
            grant = state.grant
            if (grant.service == service
                    and grant.initiated_at < initiated_at
                    and now <= _end(state) + window
                    and (previous is None or _end(state) >= _end(previous))):
                previous = state
        if previous is None:
            return None
        reference = _reference(evidence)
        for state in earlier:  # grants of another approach (the same one may share evidence)
            if (state.grant.initiated_at != initiated_at
                    and _reference(state.grant.evidence) == reference):
                raise GrantError(
                    f"this grant renews {previous.grant.id} ({client}'s {service} grant, which "
                    f"ended or ends {_end(previous).isoformat()}; a grant recorded while the "
                    "previous one runs or within scopes.renewal_window "
                    f"({format_duration(window)}) after it ends is a renewal): a renewal needs "
                    "evidence of the client's new approach, but evidence "
                    f"{evidence!r} was already used by grant {state.grant.id} "
                    f"(recorded {state.grant.recorded_at.isoformat()})")
        return previous.grant.id

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
        if _reference(officer) == _reference(state.grant.verified_by):
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
        found = [e for e in events if grant_id_of(e) == grant_id]
        if not found:
            raise GrantError(f"no grant {grant_id!r}")
        return found


def _country(value: str | None) -> str:
    if value is None or not str(value).strip():
        raise GrantError("the country where the client is established is required for a new "
                         "grant (--country / country=): an ISO 3166-1 alpha-2 code such as FR")
    established = clean_country(value)
    if established is None:
        raise GrantError(f"country {value!r} is not an ISO 3166-1 alpha-2 code (the country "
                         "where the client is established, such as FR)")
    return established


def _end(state: GrantState) -> dt.datetime:
    """When a grant stopped (or stops) running: its term's end, or its revocation."""
    end = state.grant.expires_at
    if state.revocation is not None:
        end = min(end, state.revocation.revoked_at)
    return end


def _reference(text: str) -> str:
    """An evidence reference (or an officer's name) as compared between grants: its letters
    and digits, compatibility-folded (a fullwidth or look-alike form is the plain one) and
    case-folded; spacing, punctuation and invisible characters do not matter."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(char for char in folded if char.isalnum())
    return kept or " ".join(folded.split())


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

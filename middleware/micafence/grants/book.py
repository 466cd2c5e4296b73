"""Grants: recording, revoking and reading the firm's verified records that a client
exclusively initiated a service.

The record types live on the ground floor, in :mod:`micafence.records`: a grant says who
(client), what (one service on one asset), when and how the client initiated, the evidence
reference, who verified it, when it was recorded and under which policy revision, and its two
time bounds. A revocation is a later, separate record: the history is append-only (RULES.md
rule 11), nothing is ever edited or deleted, and a grant's status (pending, active, expired,
revoked) is derived from the records and the clock. Under maker-checker
(``scopes.maker_checker``) a grant is recorded ``approval_required`` and is pending until an
approval by a second, different officer; an account binding records the account opened with
the grant's onboarding token (:mod:`micafence.grants.onboarding`).

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

from micafence.errors import GrantError
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
        found = [e for e in events if grant_id_of(e) == grant_id]
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

"""Single-use onboarding tokens: how a verified EU client opens its account, exactly once.

Account creation from a restricted zone stays blocked (RULES.md rule 1) unless the request
presents, in the header the policy names (``onboarding.header``), a token issued with a live
grant (``micafence grant add --onboarding`` or ``micafence grant token GRANT_ID``):

- the token is shown once and only its SHA-256 is stored, in an :class:`OnboardingTicket`
  (signed like every grant record) that expires after ``onboarding.token_ttl`` (and never after
  the grant's term);
- presenting it **takes** the ticket atomically (Redis ``GETDEL``; a lock on ``file://`` and
  ``memory://``), so of two concurrent uses exactly one passes (``<zone>.onboarding``) and the
  other is refused (``<zone>.onboarding.invalid_token``), as are unknown, expired and used
  tokens and tokens whose grant is no longer in force; a store that cannot be reached gives
  ``<zone>.store_unavailable``;
- a token presented with a solicited arrival cookie (solicitation evidence under the cookie
  inside ``promotions.solicitation_lookback``, back from the grant's initiative) is taken and
  refused (``<zone>.onboarding.solicited``), and the arrival is linked to the grant's client
  (:mod:`micafence.grants.arrivals`), unless the grant is an approved override that covered
  that very arrival;
- the new account's id, read from the app's 2xx answer (``onboarding.account_id``: a response
  header or a top-level JSON field), is bound to the grant with an
  :class:`~micafence.grants.book.AccountBinding` record, so that account holds the grant from
  then on.

The pipeline (:mod:`micafence.pipeline`) calls :meth:`OnboardingGate.admit` for account-creation
requests: blocked ones, and those that were not blocked but present a token (the token's
client, an EU client, signing up from elsewhere: its account is bound too, and the sign-up is
decided in its grant's zones); nothing else ever reads the header.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, NamedTuple

from micafence.asgi import Message, Scope, Send
from micafence.decision import Decision
from micafence.errors import GrantError
from micafence.grants.arrivals import (
    COOKIE_SUBJECT,
    Solicitation,
    arrival_cookie,
    covered,
    link_arrival,
    links_of,
    solicitations_of,
)
from micafence.grants.book import GrantBook
from micafence.identity import clean_client_id
from micafence.instants import Clock, utc_now
from micafence.logs import log_event
from micafence.policy.grant_store import OnboardingSettings
from micafence.policy.model import Policy
from micafence.policy.promotions import DEFAULT_PROMOTIONS
from micafence.reasons import Reason
from micafence.records import (
    AccountBinding,
    GrantState,
    GrantStatus,
    OnboardingTicket,
    SolicitationEvidence,
)

if TYPE_CHECKING:
    from micafence.audit.log import AuditLog
    from micafence.store.base import Store


PASSED = Reason.ONBOARDING
INVALID_TOKEN = Reason.ONBOARDING_INVALID_TOKEN
SOLICITED = Reason.ONBOARDING_SOLICITED
STORE_UNAVAILABLE = Reason.STORE_UNAVAILABLE
TOKEN_PREFIX = "mot_"
_MAX_TOKEN = 256
_MAX_ANSWER_BYTES = 64 * 1024  # a JSON answer naming the account is read up to this size


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def issue_token(
    book: GrantBook, grant_id: str, *, issued_by: str, ttl: dt.timedelta
) -> tuple[str, OnboardingTicket]:
    """A new single-use token for an active grant: ``(token, ticket)``. Show the token once.

    Refused (:class:`~micafence.errors.GrantError`) for a grant that is not active: revoked,
    expired, or pending approval (issue it after ``grant approve``); and for a client with
    solicitation evidence inside the look-back window (its own, or linked arrivals) that the
    grant did not override (:func:`~micafence.grants.arrivals.covered`).
    """
    state = await book.get(grant_id)
    now = book.clock()
    status = state.status(now)
    if status is not GrantStatus.ACTIVE:
        hint = ": approve it first (micafence grant approve)" if state.pending else ""
        raise GrantError(f"grant {grant_id} is {status.value}{hint}; no onboarding token")
    if not issued_by.strip():
        raise GrantError("issued_by is required")
    grant = state.grant
    lookback = (book.policy.promotions if book.policy else DEFAULT_PROMOTIONS
                ).solicitation_lookback
    since = lookback.start(grant.initiated_at)
    uncovered = [item for item in await solicitations_of(book.store, grant.client_id, since)
                 if not covered(item, grant)]
    if uncovered:
        raise GrantError(
            f"client {grant.client_id} was solicited within the look-back window "
            f"(promotions.solicitation_lookback {lookback}, from {since.isoformat()}): "
            f"{len(uncovered)} solicited arrival(s) that grant {grant_id} did not override, "
            f"first {uncovered[0].describe()}; no onboarding token. Record a grant with an "
            "override reason (--override-reason) and have a second officer approve it "
            "(micafence grant approve) before issuing one")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ticket = OnboardingTicket(
        hash_token(token), grant_id, grant.client_id, now, min(now + ttl, grant.expires_at),
        issued_by.strip(),
    )
    await book.store.put_onboarding_ticket(ticket)
    return token, ticket


class OnboardingResult(NamedTuple):
    """What a presented onboarding token gave: ``ONBOARDING`` (with its grant), an invalid
    token or an unavailable store."""

    reason: Reason
    grant_id: str | None = None
    client_id: str | None = None  # the grant's client: who is signing up


_INVALID = OnboardingResult(INVALID_TOKEN)
_UNAVAILABLE = OnboardingResult(STORE_UNAVAILABLE)


class OnboardingGate:
    """Checks the onboarding token a blocked account creation presents."""

    def __init__(self, store: Store, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    async def admit(
        self, policy: Policy, decision: Decision, scope: Scope, send: Send,
        audit: AuditLog | None = None,
    ) -> tuple[OnboardingResult | None, Send]:
        """What the onboarding token of an account creation gives (``None``: it presents none,
        or it is blocked by no zone), and the ``send`` to use (it binds the new account to the
        grant when the app names it). A sign-up that was not blocked (the token's client on a
        non-EU address) presents its token all the same: its account is bound as well."""
        if scope.get("type") != "http" or (decision.blocked and decision.zone is None):
            return None, send  # anonymizer blocks stay: a token says nothing of location
        settings = policy.onboarding
        wanted = settings.header.encode("latin-1")
        raw = next((value for name, value in scope.get("headers") or () if name == wanted), None)
        if raw is None:
            return None, send
        token = raw.decode("latin-1").strip()
        if not token or len(token) > _MAX_TOKEN:
            return _INVALID, send
        token_hash = hash_token(token)
        subject = None
        cookie = policy.promotions.visitor_cookie
        if cookie.enabled:
            visitor = arrival_cookie(scope.get("headers") or (), cookie.name.encode("latin-1"))
            subject = None if visitor is None else COOKIE_SUBJECT + visitor
        try:
            # The arrival's evidence first: a store failing here leaves the token untaken.
            evidence = [] if subject is None else await self.store.solicitations(subject)
            state = await self._take(token_hash)
            solicited = False
            if state is not None and subject is not None and evidence:
                solicited = await self._solicited(policy, state, subject, evidence)
        except Exception:  # the store failing must not take the request down: fail closed
            logging.getLogger("micafence.grants.onboarding").exception(
                "micafence: onboarding token could not be checked: grant store unavailable")
            return _UNAVAILABLE, send
        if state is None:
            return _INVALID, send
        grant = state.grant
        if solicited:
            if audit is not None:
                audit.record_event("solicitation.onboarding_refused", {
                    "grant_id": grant.id, "client_id": grant.client_id, "subject": subject,
                    "token": token_hash[:16]})
            return OnboardingResult(SOLICITED, grant.id, grant.client_id), send
        if audit is not None:  # a full queue also refuses the decision record next (503)
            audit.record_event("onboarding.token_used", {
                "grant_id": grant.id, "client_id": grant.client_id, "token": token_hash[:16]})
        return (OnboardingResult(PASSED, grant.id, grant.client_id),
                self._binding(send, settings, grant.id, grant.client_id))

    async def _solicited(
        self, policy: Policy, state: GrantState, subject: str,
        evidence: list[SolicitationEvidence],
    ) -> bool:
        """Does the arrival ``subject`` (with its ``evidence``) refuse this sign-up? Yes when
        some of its evidence is inside the look-back window from the grant's initiative and
        the grant did not override it (an approved override, recorded after the arrival was
        linked to the client). The arrival is linked to the grant's client here."""
        grant = state.grant
        since = policy.promotions.solicitation_lookback.start(grant.initiated_at)
        inside = [item for item in evidence if item.at >= since]
        if not inside:
            return False
        history = await self.store.grant_events(grant.client_id)
        link = links_of(history, grant.client_id).get(subject)
        if link is not None and state.in_force and all(
                covered(Solicitation(item, link), grant) for item in inside):
            return False
        if link is None:
            try:
                await link_arrival(self.store, grant.client_id, subject, self.clock(),
                                   evidence, history)
            except Exception as exc:  # the refusal stands; the link is evidence, logged
                log_event(logging.ERROR, "solicitation.link_failed",
                          f"micafence: arrival {subject} could not be linked to client "
                          f"{grant.client_id}: {exc}", client_id=grant.client_id,
                          subject=subject)
        log_event(logging.WARNING, "onboarding.solicited_refused",
                  f"micafence: onboarding token of grant {grant.id} came with arrival {subject}, "
                  "solicited within the look-back window: refused",
                  grant_id=grant.id, client_id=grant.client_id, subject=subject)
        return True

    async def _take(self, token_hash: str) -> GrantState | None:
        now = self.clock()
        ticket = await self.store.take_onboarding_ticket(token_hash, now)
        if ticket is None:
            return None
        for state in await self.store.grant_states(ticket.client_id):
            if state.grant.id == ticket.grant_id:
                if state.status(now) is GrantStatus.ACTIVE:
                    return state
                log_event(logging.WARNING, "onboarding.grant_not_in_force",
                          f"micafence: onboarding token of grant {ticket.grant_id} used while "
                          f"the grant is {state.status(now).value}: refused",
                          grant_id=ticket.grant_id, client_id=ticket.client_id)
                return None
        return None

    def _binding(
        self, send: Send, settings: OnboardingSettings, grant_id: str, client_id: str
    ) -> Send:
        source = settings.account_id
        if source.where == "header":
            wanted = source.name.encode("latin-1")

            async def bind_from_header(message: Message) -> None:
                if message["type"] == "http.response.start" and _success(message):
                    headers = message.get("headers") or ()
                    value = next((v for n, v in headers if n.lower() == wanted), None)
                    await self._bind(grant_id, client_id,
                                     value.decode("latin-1").strip() if value else None)
                await send(message)

            return bind_from_header

        held: list[Message] = []
        size = 0

        async def bind_from_json(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                if _success(message) and _is_json(message):
                    held.append(message)  # hold the answer until its body names the account
                    return
                await send(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            size += len(message.get("body") or b"")
            if size > _MAX_ANSWER_BYTES:
                await self._bind(grant_id, client_id, None)
            elif not message.get("more_body", False):
                body = b"".join(m.get("body") or b"" for m in held[1:])
                await self._bind(grant_id, client_id, _json_field(body, source.name))
            else:
                return
            pending = held[:]
            held.clear()
            for item in pending:
                await send(item)

        return bind_from_json

    async def _bind(self, grant_id: str, client_id: str, raw_account: str | None) -> None:
        account = clean_client_id(raw_account)
        if account is None:
            log_event(logging.ERROR, "onboarding.unbound",
                      f"micafence: the app opened an account with grant {grant_id}'s onboarding "
                      "token but named no usable account id: nothing bound",
                      grant_id=grant_id, client_id=client_id, account_id=raw_account)
            return
        binding = AccountBinding(grant_id, client_id, account, self.clock())
        try:
            await self.store.append_grant_event(binding)
        except Exception as exc:  # the account exists now: say so loudly, do not fail the answer
            log_event(logging.ERROR, "onboarding.bind_failed",
                      f"micafence: account {account} opened with grant {grant_id} could not be "
                      f"bound to it: {exc}", grant_id=grant_id, client_id=client_id,
                      account_id=account)


def _success(message: Message) -> bool:
    return 200 <= int(message.get("status", 0)) < 300


def _is_json(message: Message) -> bool:
    for name, value in message.get("headers") or ():
        if name.lower() == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return bool(kind == b"application/json" or kind.endswith(b"+json"))
    return False


def _json_field(body: bytes, name: str) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = data.get(name) if isinstance(data, dict) else None
    if isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None

"""One request, from its decision to what is done about it: the middleware, ``micafence
explain`` and ``micafence test`` all run this.

1. **decide** (pure, cached per visitor): :meth:`micafence.decide.Enforcer.decide` reads the
   signals, the zones, the route class and the rule's verdict, approvals of promotions included;
   then **know the client**: what the client registry says of an identified client
   (:class:`~micafence.clients.registry.ClientRegistry`, a local look-up while fresh) and the
   residence a sign-up declares (:mod:`micafence.clients.declarations`, which may read the
   body); when either says anything, the request is decided again with them (zones only add
   up);
2. **settle** (async, the start of :meth:`Pipeline.run`): a ``require_grant`` decision against
   the client's grants (:class:`~micafence.grants.gate.ScopeGate`, which may read the body and
   hands the app a ``receive`` replaying it), a blocked account creation against an onboarding
   token (:class:`~micafence.grants.onboarding.OnboardingGate`, whose ``send`` binds the new
   account). They say what they found; the decision is rebuilt here, and nowhere else (the
   grants gate keeps what this module's rebuild made of the verdicts it remembers);
3. **observe**: the decision goes in ``scope["state"]["micafence"]``, to the metrics and the
   audit log (which may refuse the request: 503);
4. **act** (:class:`Action`): pass to the app, through a wrapped ``send`` where promotions or
   cache safety ask (:class:`~micafence.promotions.guard.PromotionGuard`), or answer here
   (:mod:`micafence.answers`: 451, an empty promotion, a websocket refusal).

A :class:`Pipeline` made with ``dry=True`` (``explain``, ``test``) has no side effects on the
store: it records no solicitation evidence, links no arrival and takes no single-use onboarding
token.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

from micafence.answers import refuse_websocket, send_audit_unavailable, send_block
from micafence.asgi import ASGIApp, Message, Receive, Scope, Send
from micafence.caches import BoundedCache
from micafence.clients.declarations import read_declaration
from micafence.clients.registry import ClientRegistry
from micafence.decision import STATE_KEY, Decision
from micafence.grants.arrivals import ArrivalLinker
from micafence.grants.gate import ScopeGate, ScopeVerdict
from micafence.grants.onboarding import OnboardingGate
from micafence.instants import Clock, utc_now
from micafence.policy.model import Mode, Outcome, PromotionStance
from micafence.policy.routes import PATH_KEY_CHARS
from micafence.promotions.evidence_budget import EvidenceBudget
from micafence.reasons import Reason, RouteClass, reason_code
from micafence.records import NO_STANDING, UNKNOWN_STANDING, Standing

if TYPE_CHECKING:
    from micafence.audit.log import AuditLog
    from micafence.decide import Enforcer
    from micafence.metrics import Metrics
    from micafence.store.base import Store


# Enum members bound once: a look-up on the class costs ~90 ns on Python 3.11, per use.
_ALLOW = Outcome.ALLOW
_BLOCK = Outcome.BLOCK
_REQUIRE_GRANT = Outcome.REQUIRE_GRANT
_ENFORCE = Mode.ENFORCE
_PROMOTIONS_ALLOWED = PromotionStance.ALLOWED
_ACCOUNT_CREATION = RouteClass.ACCOUNT_CREATION
#: Settled decisions kept, so a client's repeated in-scope orders share one.
_SETTLED_ENTRIES = 4096
#: What a request's path says to :meth:`Pipeline.passing` (paths up to PATH_KEY_CHARS long
#: only are kept, so the entry ceiling bounds the bytes too).
_PLAIN, _ZONE_ROUTE, _SIGN_UP = 0, 1, 2
_PLAN_ENTRIES = 4096


class Action(Enum):
    """What the pipeline did with a request."""

    PASS = "pass"  # the app answered, through the server's own send
    PASS_WRAPPED = "pass_wrapped"  # the app answered through a send micafence wrapped
    ANSWER = "answer"  # micafence answered (micafence.answers): 451, 503, 204/[] or a refusal


_PASS, _PASS_WRAPPED, _ANSWER = Action.PASS, Action.PASS_WRAPPED, Action.ANSWER


class Pipeline:
    """Settles and acts on the decisions of one middleware: its app, store, grants gate,
    onboarding gate, solicitation evidence budget and observers (audit log, metrics)."""

    __slots__ = ("_knowns", "_plans", "_plans_of", "_settled", "app", "arrivals", "audit",
                 "clients", "dry", "evidence", "grants", "metrics", "onboarding", "store")

    def __init__(
        self, app: ASGIApp, store: Store, *, clock: Clock = utc_now, dry: bool = False,
        audit: AuditLog | None = None, metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.clients = ClientRegistry(store, clock=clock)  # where clients are established
        # The grants gate remembers what _granted made of its verdicts.
        self.grants = ScopeGate(store, settle=self._granted, clock=clock)
        self.onboarding = OnboardingGate(store, clock=clock)
        self.arrivals = ArrivalLinker(store, clock=clock)  # arrival cookies meet identities
        # What solicitation evidence this worker wrote in the current window (kept across
        # policy reloads; the limits are the policy's: promotions.evidence).
        self.evidence = EvidenceBudget()
        self.audit = audit  # micafence.audit.log: records every decision but plain passes
        self.metrics = metrics  # micafence.metrics: Prometheus counters
        self.dry = dry
        self._settled: BoundedCache[tuple[int, int], tuple[Decision, ScopeVerdict, Decision]] = (
            BoundedCache(_SETTLED_ENTRIES))
        # (decision, standing) -> the decision with the standing (_known).
        self._knowns: BoundedCache[tuple[int, int], tuple[Decision, Standing, Decision]] = (
            BoundedCache(_SETTLED_ENTRIES))
        # Path -> _PLAIN, _ZONE_ROUTE or _SIGN_UP, for the enforcer that made them (passing).
        self._plans: BoundedCache[object, int] = BoundedCache(_PLAN_ENTRIES)
        self._plans_of: Enforcer | None = None

    async def run(
        self, enforcer: Enforcer, decision: Decision, scope: Scope, receive: Receive, send: Send
    ) -> Action:
        """Settle ``decision`` (made by ``enforcer`` for ``scope``), record it, and act on it.

        The final decision is ``scope["state"]["micafence"]``."""
        # Know the client: its standing in the registry, the residence its sign-up declares.
        client_id = decision.client_id
        standing = NO_STANDING
        if client_id is not None:
            known = self.clients.cached(client_id)  # a fresh local entry: no await
            standing = known if known is not None else await self.clients.standing(client_id)
        declared = None
        # A sign-up route (one memo look-up): what it declares, the token it may present.
        sign_up = not decision.blocked and enforcer.on_sign_up_path(scope)
        if sign_up and (source := enforcer.declaration(scope)) is not None:
            declared, receive = await read_declaration(
                source, scope, receive, enforcer.policy.catalogue.max_body_bytes)
        if declared is not None:
            decision = enforcer.decide(scope, standing, declared)
        elif standing is not NO_STANDING:  # standing_of's empty one
            decision = self._known(enforcer, decision, scope, standing)
        # Settle (inline: an awaited call per step costs on every grant check).
        if decision.outcome is _REQUIRE_GRANT:  # the client's grants
            decision, receive = await self.grants.check(enforcer.policy, decision, scope, receive)
        elif decision.blocked and decision.route_class is _ACCOUNT_CREATION and not self.dry:
            # An onboarding token (a dry run never takes one: it is single-use).
            found, send = await self.onboarding.admit(
                enforcer.policy, decision, scope, send, self.audit)
            if found is not None:
                decision = _settled(decision, found.reason, found.grant_id)
        elif (sign_up and not decision.blocked and not self.dry and enforcer.sign_up(scope)
              and _presents(scope, enforcer.policy.onboarding.header)):
            # The token's client, known EU, signing up from elsewhere: bound all the same.
            found, send = await self.onboarding.admit(
                enforcer.policy, decision, scope, send, self.audit)
            if found is not None and found.reason is not Reason.ONBOARDING_INVALID_TOKEN:
                holder = UNKNOWN_STANDING if found.client_id is None \
                    else await self.clients.standing(found.client_id)
                placed = enforcer.decide(scope, holder, declared)
                if placed.blocked:  # in the token's zones: settled there
                    decision = _settled(placed, found.reason, found.grant_id)
        if client_id is not None and not self.dry and (
                linking := self.arrivals.seen(enforcer.policy, client_id, scope)):
            await linking  # a new (arrival cookie, client) pair: micafence.grants.arrivals
        scope.setdefault("state", {})[STATE_KEY] = decision
        metrics = self.metrics
        if metrics is not None:
            metrics.count(decision)
        audit = self.audit
        if audit is not None and (decision.restricted or decision.outcome is not _ALLOW) \
                and not audit.record(decision, scope):
            await send_audit_unavailable(scope, receive, send)  # evidence cannot be kept now
            return _ANSWER
        given = send
        kind = scope["type"]
        if kind == "http":
            promotions = enforcer.promotions
            if decision.promotion_stance is _PROMOTIONS_ALLOWED and not decision.blocked:
                send = promotions.cache_safe(scope, send, decision)
            else:
                # Solicitation evidence to record (never by a dry run).
                arrival = None if self.dry else promotions.arrival(scope, decision)
                if arrival is None and not decision.blocked:  # the restricted common case
                    send = promotions.page_safe(scope, send, decision)
                elif (guarded := await promotions.restrict(
                        scope, send, decision, self.store, arrival, self.evidence)) is None:
                    return _ANSWER  # an empty or 204 promotion route
                else:
                    send = guarded
        if decision.blocked:
            if kind == "http":
                await send_block(scope, send, decision, enforcer.policy.blocked_by)
            else:
                await refuse_websocket(scope, receive, send, decision,
                                       enforcer.policy.blocked_by)
            return _ANSWER
        await self.app(scope, receive, send)
        return _PASS if send is given else _PASS_WRAPPED

    def passing(
        self, enforcer: Enforcer, decision: Decision, scope: Scope, send: Send
    ) -> Send | None:
        """:meth:`run`'s common case without an await: an ``http`` request that the decision
        lets through and that needs nothing read, settled or awaited first (its client's
        standing known here, no sign-up route, grant, arrival cookie, promotion arrival or
        audit record).

        Does what :meth:`run` does before calling the app and returns the ``send`` to call it
        with; ``None`` (having done nothing :meth:`run` would do again) when the request needs
        :meth:`run`."""
        if self.dry or decision.outcome is not _ALLOW:
            # Not let through as it stands (a grant to check, a block): run() settles it. (A
            # client's standing only adds zones, so it does not let it through either.)
            return None
        client_id = decision.client_id
        if client_id is not None:
            standing = self.clients.cached(client_id)
            if standing is None or self.arrivals.cookie_header(enforcer.policy, scope) is not None:
                return None  # the store to read, an arrival to link
            if standing is not NO_STANDING:
                decision = self._known(enforcer, decision, scope, standing)
        if decision.outcome is not _ALLOW:
            return None
        if decision.restricted and self.audit is not None:  # recorded (and may be refused)
            return None
        # What the path says, one look-up: a sign-up route's (declared residence, onboarding
        # token: run() reads them), or whether cache safety holds the route zone-dependent.
        if enforcer is not self._plans_of:  # a policy (re)load: the routes changed
            self._plans_of = enforcer
            self._plans.clear()
        path = scope.get("path")
        plan = None if scope.get("root_path") else self._plans.get(path)
        if plan is None:
            plan = _plan(enforcer, scope)
            if not scope.get("root_path") and path.__class__ is str \
                    and len(path) <= PATH_KEY_CHARS:
                self._plans.put(path, plan)
        if plan is _SIGN_UP:
            return None
        promotions = enforcer.promotions
        if decision.promotion_stance is _PROMOTIONS_ALLOWED:
            send = promotions.cache_safe(scope, send, decision, plan is _ZONE_ROUTE)
        elif promotions.arrival(scope, decision) is None:
            send = promotions.page_safe(scope, send, decision, None, plan is _ZONE_ROUTE)
        else:  # solicitation evidence to record
            return None
        state = scope.get("state")
        if state is None:
            scope["state"] = {STATE_KEY: decision}
        else:
            state[STATE_KEY] = decision
        metrics = self.metrics
        if metrics is not None:
            metrics.count(decision)
        return send

    def _known(
        self, enforcer: Enforcer, decision: Decision, scope: Scope, standing: Standing
    ) -> Decision:
        """The request decided again with what the registry says of its client: shared while
        both are the same objects. Only a restricted visitor's ``decision`` is one request
        line's (the engine keeps one per visitor and route); a non-restricted visitor's serves
        every route, so it is decided again."""
        if not decision.restricted:
            return enforcer.decide(scope, standing)
        key = (id(decision), id(standing))
        held = self._knowns.get(key)
        # Identity, not equality: the entry holds both objects, so their ids cannot be reused.
        if held is not None and held[0] is decision and held[1] is standing:
            return held[2]
        known = enforcer.decide(scope, standing)
        self._knowns.put(key, (decision, standing, known))
        return known

    def _granted(self, decision: Decision, verdict: ScopeVerdict) -> Decision:
        """``decision`` settled by ``verdict``: shared while both are the same objects (the
        gate's constant verdicts; it keeps what this made of the verdicts it remembers)."""
        key = (id(decision), id(verdict))
        held = self._settled.get(key)
        # Identity, not equality: the entry holds both objects, so their ids cannot be reused.
        if held is not None and held[0] is decision and held[1] is verdict:
            return held[2]
        settled = _settled(decision, verdict.reason, ",".join(verdict.grant_ids) or None)
        self._settled.put(key, (decision, verdict, settled))
        return settled


def _plan(enforcer: Enforcer, scope: Scope) -> int:
    """What the request's path says: an account-creation route may handle it (under any
    method), or a rule makes its answer zone-dependent (cache safety, for GET and HEAD)."""
    if enforcer.on_sign_up_path(scope):
        return _SIGN_UP
    return _ZONE_ROUTE if enforcer.promotions.zone_route(scope) else _PLAIN


def _presents(scope: Scope, header: str) -> bool:
    """Does the request carry the onboarding token header (policy ``onboarding.header``)?"""
    wanted = header.encode("latin-1")
    return any(name == wanted for name, _ in scope.get("headers") or ())


def _settled(decision: Decision, reason: Reason, grant_id: str | None) -> Decision:
    """``decision`` as a grant or onboarding token settled it with ``reason``."""
    code = reason_code(decision.zone, reason)
    if reason is Reason.IN_SCOPE or reason is Reason.ONBOARDING:
        return decision._replace(outcome=_ALLOW, blocked=False, reason=code, kind=reason,
                                 grant_id=grant_id)
    return decision._replace(outcome=_BLOCK, blocked=decision.mode is _ENFORCE, reason=code,
                             kind=reason)


# -- dry runs: explain and test ------------------------------------------------------------------


class Trial(NamedTuple):
    """What the pipeline did with one synthetic request (``micafence explain``, ``test``)."""

    decision: Decision  # the final one, as the middleware would put it in the scope
    action: Action
    status: int | None  # the status micafence answered with (``None``: it passed)


async def _unanswered(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind a dry run: it answers nothing (the action says it would be called)."""


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def dry_pipeline(store: Store, *, clock: Clock = utc_now) -> Pipeline:
    """A pipeline with no app, no observers and no side effects on ``store``."""
    return Pipeline(_unanswered, store, clock=clock, dry=True)


async def trial(enforcer: Enforcer, pipeline: Pipeline, scope: Scope) -> Trial:
    """Run ``scope`` (an ``http`` request without a body) through ``pipeline`` as the
    middleware would, deciding with ``enforcer``."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {**scope, "state": {}}
    action = await pipeline.run(enforcer, enforcer.decide(scope), scope, _no_body, send)
    status = next((int(m["status"]) for m in sent if m.get("type") == "http.response.start"),
                  None)
    return Trial(scope["state"][STATE_KEY], action, status)

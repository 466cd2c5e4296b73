"""The decision object: what micafence decided for one request, and why.

It is put in the ASGI scope (``scope["state"]["micafence"]``) for the app's templates and
handlers, rendered in 451 bodies, printed by ``micafence explain`` and (later) written to the
audit log. Every decision names the rule, a stable reason code and the policy revision.

Reasons and route classes are the typed vocabulary of :mod:`micafence.reasons`: ``reason`` is
the code (``eu.no_grant``; a rule may name its own), ``kind`` the :class:`~micafence.reasons.Reason`
it stands for, which gives the visitor's text. Decisions are built by the pipeline only
(:mod:`micafence.decide` decides, :mod:`micafence.pipeline` settles).
"""

from __future__ import annotations

from typing import NamedTuple

from micafence.policy.model import Mode, Outcome, PromotionStance
from micafence.reasons import Reason, RouteClass

#: Where the decision is put for the app: ``scope["state"]["micafence"]``, which Starlette shows
#: as ``request.state.micafence``.
STATE_KEY = "micafence"
DEFAULT_RULE_ID = "default"


class Decision(NamedTuple):
    """One request's decision. ``blocked`` is what the middleware acts on.

    A named tuple rather than a frozen dataclass: it is built on every request, and a tuple is
    several times cheaper to build while being just as immutable.
    """

    outcome: Outcome
    blocked: bool
    reason: str  # the code: eu.no_grant, or a rule's own
    kind: Reason  # what the code stands for (the visitor's text)
    rule_id: str
    mode: Mode
    route_id: str | None
    route_class: RouteClass
    zone: str | None  # the zone whose rule decided
    zones: tuple[str, ...]  # every zone the visitor is in, policy order
    restricted: bool  # some rule applies to one of the visitor's zones
    promotion_stance: PromotionStance
    country: str | None
    registered_country: str | None
    residence_country: str | None
    client_ip: str | None
    client_id: str | None
    policy_revision: str
    database_build: int
    anonymizer: tuple[str, ...] = ()  # anonymizer flags of the address (vpn, tor_exit, ...)
    breakglass: str | None = None  # the break-glass switches on (``block_services,...``)
    grant_id: str | None = None  # the grant(s) that put the request in scope, comma-separated
    #: The signals that put the visitor in its zones, each ``name:value`` (``country:SE``,
    #: ``registered_country:SE``, ``residence:FR``, ``registry:FR``, ``grant:FR``,
    #: ``grant:unnamed``, ``declared:FR``, ``location:unknown``, ``address:doubtful``,
    #: ``registry:unavailable``): the signals of the zones, not every signal seen.
    signals: tuple[str, ...] = ()

    @property
    def promotions_allowed(self) -> bool:
        """May this visitor see promotions at all (``approved_only`` counts as no)."""
        return self.promotion_stance is PromotionStance.ALLOWED

    @property
    def would_block(self) -> bool:
        """The rule says block, whether or not it is enforced (shadow mode)."""
        return self.outcome is Outcome.BLOCK

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (for ``explain --json``, problem bodies and records)."""
        return {
            "outcome": self.outcome.value,
            "blocked": self.blocked,
            "reason": self.reason,
            "rule": self.rule_id,
            "mode": self.mode.value,
            "route": self.route_id,
            "route_class": self.route_class.value,
            "zone": self.zone,
            "zones": list(self.zones),
            "restricted": self.restricted,
            "promotions": self.promotion_stance.value,
            "country": self.country,
            "registered_country": self.registered_country,
            "residence_country": self.residence_country,
            "client_ip": self.client_ip,
            "client_id": self.client_id,
            "policy_revision": self.policy_revision,
            "database_build": self.database_build,
            "anonymizer": list(self.anonymizer),
            "breakglass": self.breakglass,
            "grant_id": self.grant_id,
            "signals": list(self.signals),
        }

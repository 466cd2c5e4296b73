"""The decision object: what micafence decided for one request, and why.

It is put in the ASGI scope (``scope["state"]["micafence"]``) for the app's templates and
handlers, rendered in 451 bodies, printed by ``micafence explain`` and (later) written to the
audit log. Every decision names the rule, a stable reason code and the policy revision.

Reason codes (the catalogue; ``<zone>`` is a zone name from the policy such as ``eu``, ``eea``,
``uk`` or the pseudo-zone ``unknown_country``):

``pass``
    No rule applies to this visitor and route.
``<zone>.account_creation``
    A new account from a restricted zone (blocked by default).
``<zone>.promotion``
    A promotion route (feed, referral, campaign page) for a zone that may not see it.
``<zone>.service``
    A service route blocked outright for the zone.
``<zone>.no_grant``
    A service route that needs a client-initiated grant, and the client has none.
``<zone>.wind_down``
    A wind-down route passed for an identified existing client.
``<zone>.wind_down.unidentified``
    A wind-down route refused because the client is not identified.
``<zone>.in_scope``
    A service route passed inside a live client-initiated grant (``grant_id`` names it).
``<zone>.out_of_scope.service``
    The client holds grants, but none for this service (nor one it is related to).
``<zone>.out_of_scope.asset_type``
    A grant for this service exists, but not for this asset or one of the same type.
``<zone>.grant_expired``
    A grant covered this once, but its scope term (or same-type window) has passed.
``<zone>.scope_unreadable``
    The service or asset cannot be read from the request (malformed, missing, too large).
``<zone>.store_unavailable``
    The grant store cannot be read: service routes (and onboarding tokens) fail closed.
``<zone>.onboarding``
    An account creation passed with a grant's single-use onboarding token (``grant_id``).
``<zone>.onboarding.invalid_token``
    An account creation presented an onboarding token that is unknown, used, expired or whose
    grant is no longer in force.
``<zone>.neutral``
    A rule that names the neutral class (for example an incident block of all traffic).
``anonymizer.<flag>.<class>``
    The address is a VPN, proxy, Tor exit or hosting address (``<flag>``) and the policy's
    ``anonymizers`` tier for the route class is ``block`` (or it is a promotion route).
``breakglass.service``
    Break-glass is on: all service traffic from restricted zones is blocked.

A rule may set its own ``reason`` instead of the default ``<zone>.<class>``.
"""

from __future__ import annotations

from typing import NamedTuple

from micafence.policy.model import Mode, Outcome, PromotionStance

PASS_REASON = "pass"
DEFAULT_RULE_ID = "default"


class Decision(NamedTuple):
    """One request's decision. ``blocked`` is what the middleware acts on.

    A named tuple rather than a frozen dataclass: it is built on every request, and a tuple is
    several times cheaper to build while being just as immutable.
    """

    outcome: Outcome
    blocked: bool
    reason: str
    rule_id: str
    mode: Mode
    route_id: str | None
    route_class: str
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
            "route_class": self.route_class,
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
        }

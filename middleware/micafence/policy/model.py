"""The policy model: what ops configure, as validated, immutable objects.

The YAML schema and its validation live in :mod:`micafence.policy.loader`; this module only
holds the shapes the rest of the package reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

from micafence.policy.audit import (
    DEFAULT_AUDIT,
    DEFAULT_REPORTING,
    AuditSettings,
    ReportingThresholds,
)
from micafence.policy.cache import DEFAULT_CACHE, CachePolicy
from micafence.policy.catalogue import EMPTY_CATALOGUE, Catalogue, Source
from micafence.policy.grant_store import (
    DEFAULT_ONBOARDING,
    DEFAULT_STORE_SETTINGS,
    OnboardingSettings,
    StoreSettings,
)
from micafence.policy.health import DEFAULT_HEALTH, HealthSettings
from micafence.policy.promotions import DEFAULT_PROMOTIONS, PromotionPolicy

UNKNOWN_COUNTRY_ZONE = "unknown_country"

ROUTE_CLASSES = ("account_creation", "promotion", "service", "wind_down", "neutral")


class Outcome(StrEnum):
    """What a rule does to a request, from least to most restrictive."""

    ALLOW = "allow"
    #: Pass only for a client the identity source names (wind-down of existing clients).
    ALLOW_IDENTIFIED = "allow_identified"
    #: Pass only inside a live client-initiated grant; without one it is a block.
    REQUIRE_GRANT = "require_grant"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {
    Outcome.ALLOW: 0,
    Outcome.ALLOW_IDENTIFIED: 1,
    Outcome.REQUIRE_GRANT: 2,
    Outcome.BLOCK: 3,
}


class Mode(StrEnum):
    """``enforce`` acts on decisions; ``shadow`` records what it would do and lets it pass."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class PromotionStance(StrEnum):
    """May this zone's visitors see promotions?"""

    ALLOWED = "allowed"
    APPROVED_ONLY = "approved_only"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True, slots=True)
class Zone:
    """A named regime (``eu``, ``eea``, ``uk``) and the countries it covers."""

    name: str
    title: str
    countries: frozenset[str]
    promotions: PromotionStance
    # In force on [effective_from, effective_until): see micafence.policy.schedule.
    effective_from: dt.datetime | None = None
    effective_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A class of request, matched by method and normalised path pattern."""

    id: str
    route_class: str
    path: str
    methods: frozenset[str] | None  # None: any method
    # Account creation: where the sign-up declares the client's residence (clients.declarations)
    residence: Source | None = None
    line: int | None = field(default=None, compare=False)  # where the policy file lists it


#: The ``route_id`` of a request no entry names: the policy's ``unlisted`` default decided it.
UNLISTED_ROUTE_ID = "unlisted"
#: The methods ``unlisted.safe`` covers (RFC 9110's safe methods but TRACE, which no app
#: routes); every other method, and a method override's junk, is ``unlisted.unsafe``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Unlisted:
    """``unlisted``: the class of what no route entry names, for safe and unsafe methods."""

    safe: str = "neutral"
    unsafe: str = "neutral"


DEFAULT_UNLISTED = Unlisted()


@dataclass(frozen=True, slots=True)
class Rule:
    """What happens to a route class for visitors in some zones."""

    id: str
    zones: frozenset[str]
    route_class: str
    outcome: Outcome
    mode: Mode | None  # None: the policy's global mode
    reason: str | None  # None: ``<zone>.<route_class>``
    # In force on [effective_from, effective_until): see micafence.policy.schedule.
    effective_from: dt.datetime | None = None
    effective_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Signals:
    """Which location signals count. A visitor is in a zone if any counted signal says so."""

    country: bool = True
    registered_country: bool = True
    residence: bool = True


@dataclass(frozen=True, slots=True)
class ClientIP:
    trusted_proxies: tuple[str, ...] = ()
    header: str = "x-forwarded-for"  # or "forwarded" (RFC 7239)


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """Where the signed-in client's id (and residence country) comes from.

    With ``source: header`` the headers are believed only from ``trusted_sources`` (CIDRs of
    the auth gateway), reached directly or through ``client_ip.trusted_proxies`` only; a proxy
    trusted for the client address is not thereby trusted to say who the client is.
    """

    source: str = "none"  # none | header | scope_user | callable
    header: str = "x-client-id"
    residence_header: str | None = None
    trusted_sources: tuple[str, ...] = ()


class AnonymizerTier(StrEnum):
    """What an anonymizer flag (VPN, proxy, Tor, hosting) does to one route class."""

    RECORD_ONLY = "record_only"  # the flag is in the decision, nothing else changes
    SUPPRESS_PROMOTIONS = "suppress_promotions"  # promotions left out (promotion routes: 451)
    BLOCK = "block"  # 451


@dataclass(frozen=True, slots=True)
class AnonymizerRule:
    """``anonymizers.<flag>``: the tier of one flag for every route class."""

    flag: str  # vpn | public_proxy | residential_proxy | tor_exit | hosting
    tiers: tuple[tuple[str, AnonymizerTier], ...]  # (route class, tier) for every class


@dataclass(frozen=True, slots=True)
class DatabaseChecks:
    """``database``: what a GeoIP database must pass, at start-up and before every swap."""

    max_age: dt.timedelta | None = None  # older: a warning and a failed readiness check
    probes: tuple[tuple[str, str | None], ...] = ()  # (address, expected country; None: any)


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole validated policy file."""

    name: str
    revision: str  # "sha256:<hex>" of the file's bytes
    source: str  # the file it came from
    mode: Mode
    zones: tuple[Zone, ...]
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    signals: Signals
    client_ip: ClientIP
    client_identity: IdentitySource
    blocked_by: str | None = None  # RFC 7725 ``Link: rel="blocked-by"`` target
    anonymizers: tuple[AnonymizerRule, ...] = ()
    database: DatabaseChecks = DatabaseChecks()
    # services, assets, scope bounds and service routes (micafence.policy.catalogue)
    catalogue: Catalogue = EMPTY_CATALOGUE
    # what a promotion is and how it is suppressed (micafence.policy.promotions)
    promotions: PromotionPolicy = DEFAULT_PROMOTIONS
    cache: CachePolicy = DEFAULT_CACHE  # cache safety set-up (micafence.policy.cache)
    # retention and privacy of the decision log; report thresholds (micafence.policy.audit)
    audit: AuditSettings = DEFAULT_AUDIT
    reporting: ReportingThresholds = DEFAULT_REPORTING
    # maker-checker, Redis production checks, onboarding tokens (micafence.policy.grant_store)
    grant_store: StoreSettings = DEFAULT_STORE_SETTINGS
    onboarding: OnboardingSettings = DEFAULT_ONBOARDING
    # what readiness reports for faults every pod shares (micafence.policy.health)
    health: HealthSettings = DEFAULT_HEALTH
    #: ``policy:``, the format version: 1 (the most severe matching entry decides) or 2 (the
    #: most specific one does: :mod:`micafence.policy.routes`)
    version: int = 1
    unlisted: Unlisted = DEFAULT_UNLISTED  # the class of what no route entry names

    def zone(self, name: str) -> Zone | None:
        for zone in self.zones:
            if zone.name == name:
                return zone
        return None

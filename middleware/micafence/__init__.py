"""micafence: keep a non-EU crypto exchange inside MiCA's reverse-solicitation exemption.

Mount :class:`MicafenceMiddleware` in front of any ASGI app with a policy file and a MaxMind
database; read the decision for a request from ``scope["state"]["micafence"]``.
"""

from __future__ import annotations

from micafence.audit.log import AuditLog
from micafence.clients.registry import ClientRegistry
from micafence.decide import Enforcer
from micafence.decision import Decision
from micafence.errors import GeoIPDatabaseError, GrantError, MicafenceError, PolicyError, StoreError
from micafence.grants.book import GrantBook
from micafence.identity import ClientIdentity
from micafence.live.breakglass import BreakGlass
from micafence.live.health import HealthEndpoint
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.geo import GeoIPDatabase, Location
from micafence.metrics import Metrics
from micafence.middleware import STATE_KEY, MicafenceMiddleware
from micafence.policy.loader import default_policy_path, load_policy, load_policy_text
from micafence.policy.model import Mode, Outcome, Policy, PromotionStance
from micafence.records import Grant, GrantStatus, Residence, Revocation, Standing
from micafence.store.base import Store
from micafence.store.opener import open_store

__all__ = [
    "STATE_KEY",
    "AnonymousIPDatabase",
    "AuditLog",
    "BreakGlass",
    "ClientIdentity",
    "ClientRegistry",
    "Decision",
    "Enforcer",
    "GeoIPDatabase",
    "GeoIPDatabaseError",
    "Grant",
    "GrantBook",
    "GrantError",
    "GrantStatus",
    "HealthEndpoint",
    "Location",
    "Metrics",
    "MicafenceError",
    "MicafenceMiddleware",
    "Mode",
    "Outcome",
    "Policy",
    "PolicyError",
    "PromotionStance",
    "Residence",
    "Revocation",
    "Standing",
    "Store",
    "StoreError",
    "default_policy_path",
    "load_policy",
    "load_policy_text",
    "open_store",
]

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

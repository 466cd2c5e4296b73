"""micafence: keep a non-EU crypto exchange inside MiCA's reverse-solicitation exemption.

Mount :class:`MicafenceMiddleware` in front of any ASGI app with a policy file and a MaxMind
database; read the decision for a request from ``scope["state"]["micafence"]``.
"""

from __future__ import annotations

from .anonymizer import AnonymousIPDatabase
from .breakglass import BreakGlass
from .decision import Decision
from .engine import Enforcer
from .errors import GeoIPDatabaseError, GrantError, MicafenceError, PolicyError, StoreError
from .geo import GeoIPDatabase, Location
from .grants import Grant, GrantBook, GrantStatus, Revocation
from .health import HealthEndpoint
from .identity import ClientIdentity
from .middleware import STATE_KEY, MicafenceMiddleware
from .policy import Mode, Outcome, Policy, PromotionStance
from .policy_loader import default_policy_path, load_policy, load_policy_text
from .store import Store, open_store

__all__ = [
    "STATE_KEY",
    "AnonymousIPDatabase",
    "BreakGlass",
    "ClientIdentity",
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
    "MicafenceError",
    "MicafenceMiddleware",
    "Mode",
    "Outcome",
    "Policy",
    "PolicyError",
    "PromotionStance",
    "Revocation",
    "Store",
    "StoreError",
    "default_policy_path",
    "load_policy",
    "load_policy_text",
    "open_store",
]

__version__ = "0.1.0"

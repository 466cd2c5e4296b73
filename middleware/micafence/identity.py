"""The signed-in client: an id (for grants and wind-down) and possibly a residence country."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from micafence.asgi import Scope
from micafence.location.countries import is_country_code

# Ids end up in store keys and records: refuse anything that could be read two ways.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who the client is, as the host app's auth layer says."""

    client_id: str | None = None
    residence_country: str | None = None


NO_IDENTITY = ClientIdentity()

#: Signature of a Python identity source given to the middleware (``identify=``).
IdentifyFunction = Callable[[Scope], ClientIdentity | None]


def clean_client_id(value: object) -> str | None:
    """A client id fit for keys and records, or ``None`` (unidentified)."""
    if isinstance(value, str) and _CLIENT_ID.fullmatch(value):
        return value
    return None


def clean_country(value: object) -> str | None:
    if isinstance(value, str) and is_country_code(value.strip().upper()):
        return value.strip().upper()
    return None


def from_scope_user(scope: Scope) -> ClientIdentity:
    """Read ``scope["user"]`` as set by Starlette's AuthenticationMiddleware or similar.

    The user's ``identity`` (or ``id``) is the client id; ``residence_country`` if it has one.
    An unauthenticated user is no identity.
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", True):
        return NO_IDENTITY
    raw_id = getattr(user, "identity", None) or getattr(user, "id", None)
    if raw_id is None and isinstance(user, dict):
        raw_id = user.get("id")
    residence = getattr(user, "residence_country", None)
    if residence is None and isinstance(user, dict):
        residence = user.get("residence_country")
    return ClientIdentity(clean_client_id(raw_id), clean_country(residence))

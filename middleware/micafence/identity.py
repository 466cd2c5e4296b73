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
    """Who the client is, as the host app's auth layer says.

    ``unreadable``: the auth layer named a client, but not so that micafence can use it (an id
    it cannot key records by, two different ids, an identity source that failed). Where such a
    client is established cannot be told: it counts as the unknown country. So does a residence
    given in a form micafence cannot read (``residence_unreadable``: a name, an alpha-3 code),
    when the policy counts residences."""

    client_id: str | None = None
    residence_country: str | None = None
    unreadable: bool = False
    residence_unreadable: bool = False  # a residence was given, but is no country code


NO_IDENTITY = ClientIdentity()
UNREADABLE_IDENTITY = ClientIdentity(unreadable=True)

#: Signature of a Python identity source given to the middleware (``identify=``).
IdentifyFunction = Callable[[Scope], ClientIdentity | None]


def clean_client_id(value: object) -> str | None:
    """A client id fit for keys and records, or ``None`` (unidentified)."""
    if isinstance(value, str) and _CLIENT_ID.fullmatch(value):
        return value
    return None


def read_client_id(value: object) -> ClientIdentity:
    """The identity an auth layer's client id gives: none for a missing or blank one, an
    :attr:`~ClientIdentity.unreadable` one for an id micafence cannot use. An integer id (a
    database key) is its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_IDENTITY
    client_id = clean_client_id(value)
    return ClientIdentity(client_id) if client_id is not None else UNREADABLE_IDENTITY


def unreadable_country(value: object) -> bool:
    """Was a country given (not missing, not blank) that is no ISO 3166-1 alpha-2 code?"""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    return clean_country(value) is None


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
    read = read_client_id(raw_id)
    return ClientIdentity(read.client_id, clean_country(residence), read.unreadable,
                          unreadable_country(residence))

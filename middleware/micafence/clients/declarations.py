"""The residence a sign-up declares: an account-creation route's ``residence:`` source.

A sign-up form that asks where the client lives is a signal like any other: a restricted
country declared there blocks the sign-up as an EU address would, and a non-restricted one
never lifts a block (zones only add up). The route names where the field is
(``{from: body|form|query, name: country}``): ``body`` a JSON object, ``form`` an
``application/x-www-form-urlencoded`` body, ``query`` the query string. The body is read as the
grant check reads it (up to ``scopes.max_body_bytes``) and replayed to the app unchanged.

A missing or blank field is no declaration. What cannot be read for sure is :data:`UNREADABLE` (the
pipeline decides it as the unknown country, the failure posture): a larger or cut-short body,
a body that is not what the route says (a ``form`` route's body of another content type, such
as multipart, which the app's framework may read as a form all the same), a field given twice,
a value that is not a country.
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import parse_qsl

from micafence.asgi import Receive, Scope
from micafence.grants.gate import read_body, refuse_duplicates
from micafence.identity import clean_country
from micafence.policy.catalogue import Source

#: A declaration that cannot be read for sure (see the module's description).
UNREADABLE: Final = "unreadable"


async def read_declaration(
    source: Source, scope: Scope, receive: Receive, limit: int
) -> tuple[str | None, Receive]:
    """The country the request declares per ``source`` (``None``: none declared, or
    :data:`UNREADABLE`), and the ``receive`` to hand on (it replays what was read)."""
    if source.where == "query":
        return _country(_form_value(scope.get("query_string") or b"", source.name)), receive
    if scope.get("type") != "http":  # a websocket handshake: no body to read it from
        return UNREADABLE, receive
    raw, receive = await read_body(scope, receive, limit)
    if raw is None:
        return UNREADABLE, receive
    if not raw.strip():
        return None, receive
    if source.where == "form":
        if not _urlencoded(scope):  # multipart, JSON, …: the app's framework may read those
            return UNREADABLE, receive
        return _country(_form_value(raw, source.name)), receive
    try:
        body = json.loads(raw, object_pairs_hook=refuse_duplicates)
    except (ValueError, RecursionError):
        return UNREADABLE, receive
    if not isinstance(body, dict):
        return UNREADABLE, receive
    return _country(body.get(source.name, _MISSING)), receive


_MISSING: Final = object()
_FORM_TYPE = b"application/x-www-form-urlencoded"


def _urlencoded(scope: Scope) -> bool:
    """Does the request say its body is a urlencoded form (or say nothing of its type)? Every
    Content-Type it gives must (frameworks differ on which of several they read)."""
    return all(value.split(b";", 1)[0].strip().lower() == _FORM_TYPE
               for name, value in scope.get("headers") or () if name == b"content-type")


def _form_value(raw: bytes, name: str) -> object:
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return UNREADABLE
    values = [value for key, value in pairs if key == name]
    if not values:
        return _MISSING
    return values[0] if len(values) == 1 else UNREADABLE


def _country(value: object) -> str | None:
    if value is _MISSING or (isinstance(value, str) and not value.strip()):
        return None  # no field, or left blank
    if not isinstance(value, str) or value is UNREADABLE:
        return UNREADABLE
    country = clean_country(value)
    return country if country is not None else UNREADABLE


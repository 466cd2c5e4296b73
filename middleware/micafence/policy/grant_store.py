"""The policy's settings for the shared grant store: maker-checker, Redis checks, onboarding.

Policy keys read here (validated with their file, key path and line)::

    scopes:
      maker_checker: false      # true: a new grant is in force only once a second officer approves
      redis_checks: warn        # warn | refuse: a Redis that evicts keys or persists nothing
      renewal_window: P90D      # a grant recorded this soon after the client's previous grant
                                # for the same service ends is a renewal (docs/grants.md)
    onboarding:
      header: x-micafence-onboarding   # where the client presents its single-use token
      token_ttl: PT30M                 # how long a token stays usable (ISO 8601 duration)
      account_id: {header: x-account-id}   # or {json: account_id}: the new account's id

``scopes`` is shared with :mod:`micafence.policy.catalogue`, which accepts :data:`SCOPE_KEYS` too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from micafence.instants import parse_duration
from micafence.policy.yamlfile import Node

SCOPE_KEYS = ("maker_checker", "redis_checks", "renewal_window")
REDIS_CHECKS = ("warn", "refuse")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_MAX_TOKEN_TTL = dt.timedelta(days=7)
#: Three months: a client back within a quarter of its last grant's end is continuing the
#: relationship (and the report's default long-running threshold, P90D, is a quarter too).
DEFAULT_RENEWAL_WINDOW = dt.timedelta(days=90)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``scopes.maker_checker``, ``scopes.redis_checks`` and ``scopes.renewal_window``."""

    maker_checker: bool = False
    redis_checks: str = "warn"
    #: A grant for the same client and service recorded while the client's previous one runs,
    #: or at most this long after it ends, is a renewal: it needs evidence of a new approach.
    renewal_window: dt.timedelta = DEFAULT_RENEWAL_WINDOW


@dataclass(frozen=True, slots=True)
class AccountIdSource:
    """Where the app's answer to an account creation names the new account."""

    where: str  # header | json
    name: str  # a header name (lower case) or a top-level JSON field


@dataclass(frozen=True, slots=True)
class OnboardingSettings:
    """``onboarding``: how single-use onboarding tokens are presented and bound."""

    header: str = "x-micafence-onboarding"
    token_ttl: dt.timedelta = dt.timedelta(minutes=30)
    account_id: AccountIdSource = AccountIdSource("header", "x-account-id")


DEFAULT_STORE_SETTINGS = StoreSettings()
DEFAULT_ONBOARDING = OnboardingSettings()


def parse_store_settings(top: Mapping[str, Node]) -> StoreSettings:
    """The store keys of ``scopes`` (the catalogue reads the others)."""
    if "scopes" not in top:
        return DEFAULT_STORE_SETTINGS
    fields = {k: v for k, v in top["scopes"].dict_items() if k in SCOPE_KEYS}
    return StoreSettings(
        maker_checker=fields["maker_checker"].flag() if "maker_checker" in fields else False,
        redis_checks=(
            fields["redis_checks"].choice(REDIS_CHECKS) if "redis_checks" in fields else "warn"
        ),
        renewal_window=(
            _duration(fields["renewal_window"]) if "renewal_window" in fields
            else DEFAULT_RENEWAL_WINDOW
        ),
    )


def _duration(node: Node) -> dt.timedelta:
    try:
        return parse_duration(node.text())
    except ValueError as exc:
        node.fail(str(exc))


def parse_onboarding(top: Mapping[str, Node]) -> OnboardingSettings:
    """The ``onboarding`` section, or the defaults."""

    if "onboarding" not in top:
        return DEFAULT_ONBOARDING
    fields = top["onboarding"].mapping(("header", "token_ttl", "account_id"))
    settings = DEFAULT_ONBOARDING
    header = settings.header
    if "header" in fields:
        header = fields["header"].text(_HEADER, "an HTTP header name").lower()
    ttl = settings.token_ttl
    if "token_ttl" in fields:
        try:
            ttl = parse_duration(fields["token_ttl"].text())
        except ValueError as exc:
            fields["token_ttl"].fail(str(exc))
        if ttl > _MAX_TOKEN_TTL:
            fields["token_ttl"].fail("an onboarding token lives at most P7D: it is meant for "
                                     "the conversation the client started, not for later")
    source = settings.account_id
    if "account_id" in fields:
        node = fields["account_id"]
        where = node.mapping(("header", "json"))
        if len(where) != 1:
            node.fail("give exactly one of header: NAME or json: FIELD")
        (kind, name_node), = where.items()
        name = name_node.text(_HEADER if kind == "header" else _FIELD,
                              "an HTTP header name" if kind == "header" else "a JSON field name")
        source = AccountIdSource(kind, name.lower() if kind == "header" else name)
    return OnboardingSettings(header, ttl, source)

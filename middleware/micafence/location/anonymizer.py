"""Anonymizer signals: MaxMind's Anonymous-IP database and the policy's ``anonymizers`` tiers.

A VPN, proxy, Tor exit or hosting address says where the relay is, not where the client is.
The policy gives each flag a tier per route class (:class:`~micafence.policy.model.AnonymizerTier`):
``block`` (451, reason ``anonymizer.<flag>.<class>``), ``suppress_promotions`` (the page is
served without promotions; a promotion route, being nothing but a promotion, gets 451) or
``record_only`` (the flag is in the decision, nothing else changes). When several flags are
set, the strongest tier wins.

The database is optional: without one no address has a flag. Like the country database it is
opened once, memory-mapped, and its answers are cached per address and per network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from micafence.location.mmdb import MaxMindFile
from micafence.policy.model import (
    ROUTE_CLASSES,
    AnonymizerRule,
    AnonymizerTier,
    Mode,
    Outcome,
    Rule,
)
from micafence.policy.yamlfile import Node

#: Our flag names and the MaxMind record keys they come from, in reporting order.
FLAG_FIELDS = {
    "tor_exit": "is_tor_exit_node",
    "public_proxy": "is_public_proxy",
    "vpn": "is_anonymous_vpn",
    "residential_proxy": "is_residential_proxy",
    "hosting": "is_hosting_provider",
}
FLAGS = tuple(FLAG_FIELDS)
NO_FLAGS: tuple[str, ...] = ()

_T = AnonymizerTier
_ANONYMOUS: Mapping[str, AnonymizerTier] = {
    "default": _T.SUPPRESS_PROMOTIONS, "account_creation": _T.BLOCK, "service": _T.BLOCK,
    "wind_down": _T.RECORD_ONLY,
}
#: Tiers used when a policy has no ``anonymizers`` section (the same as the default policy):
#: the location cannot be told, so account creation and services fail closed and promotions
#: are suppressed (RULES.md, "Failure posture"); off-boarding is never made harder. A hosting
#: address is where a server runs, not an anonymity service: new accounts fail closed, but
#: existing clients' API traffic from data centres keeps working.
DEFAULT_TIERS: Mapping[str, Mapping[str, AnonymizerTier]] = {
    "tor_exit": _ANONYMOUS,
    "public_proxy": _ANONYMOUS,
    "vpn": _ANONYMOUS,
    "residential_proxy": _ANONYMOUS,
    "hosting": {"default": _T.SUPPRESS_PROMOTIONS, "account_creation": _T.BLOCK},
}

_STRENGTH = {_T.RECORD_ONLY: 0, _T.SUPPRESS_PROMOTIONS: 1, _T.BLOCK: 2}


# -- policy section ------------------------------------------------------------------------------


def _rule(flag: str, tiers: Mapping[str, AnonymizerTier]) -> AnonymizerRule:
    fallback = tiers.get("default", _T.RECORD_ONLY)
    return AnonymizerRule(flag, tuple((c, tiers.get(c, fallback)) for c in ROUTE_CLASSES))


def default_anonymizer_rules() -> tuple[AnonymizerRule, ...]:
    """The tiers of :data:`DEFAULT_TIERS` as policy rules."""
    return tuple(_rule(flag, DEFAULT_TIERS[flag]) for flag in FLAGS)


def parse_anonymizers(node: Node) -> tuple[AnonymizerRule, ...]:
    """The ``anonymizers`` section: every flag, each a tier or a mapping route class → tier;
    or ``none`` (no tiers: the firm screens no anonymizers, on purpose).

    All five flags must be listed (``record_only`` to only record one), and a mapping must
    cover every route class, directly or through ``default``: nothing is left to a guess.
    """
    if isinstance(node.value, str):
        if node.value == "none":
            return ()
        node.fail("give a tier for each of the five flags (a mapping), or write "
                  "`anonymizers: none` to screen no anonymizers on purpose")
    fields = node.mapping(FLAGS, required=FLAGS)
    rules = []
    for flag in FLAGS:
        entry = fields[flag]
        if isinstance(entry.value, str):
            tier = _T(entry.choice(list(_T)))
            rules.append(_rule(flag, {"default": tier}))
            continue
        classes = entry.mapping(("default", *ROUTE_CLASSES))
        if "default" not in classes and len(classes) < len(ROUTE_CLASSES):
            missing = [c for c in ROUTE_CLASSES if c not in classes]
            entry.fail(f"no tier for {', '.join(missing)} (list them or give a 'default')")
        rules.append(_rule(flag, {c: _T(n.choice(list(_T))) for c, n in classes.items()}))
    return tuple(rules)


# -- the database --------------------------------------------------------------------------------


class AnonymousIPDatabase(MaxMindFile[tuple[str, ...]]):
    """MaxMind's GeoIP2 Anonymous-IP database, opened once (memory-mapped) and cached.

    ``lookup(ip)`` returns the flags of a canonical address string as a tuple in :data:`FLAGS`
    order, none on any reader error. MaxMind answers an empty map ``{}`` (not ``None``) for
    many unlisted addresses: both mean no flag.
    """

    kinds = ("Anonymous-IP",)
    wrong_kind = "is not an Anonymous-IP database"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, flags_of, NO_FLAGS)


def flags_of(record: Any) -> tuple[str, ...]:
    """Our flag names for one MaxMind record (``{}`` and ``None`` have none)."""
    if not isinstance(record, dict) or not record:
        return NO_FLAGS
    return tuple(flag for flag, key in FLAG_FIELDS.items() if record.get(key) is True)


# -- the screen the engine asks ------------------------------------------------------------------


class AnonymizerScreen:
    """What the policy's tiers make of a set of flags, for the engine.

    Built with the :class:`~micafence.decide.Enforcer`; every answer is a dictionary look-up
    after the first time a flag combination is seen. ``shadowed`` names anonymizer rule ids
    (``anonymizer.<flag>``) that break-glass put into shadow.
    """

    def __init__(
        self,
        rules: tuple[AnonymizerRule, ...],
        database: AnonymousIPDatabase | None,
        shadowed: frozenset[str] = frozenset(),
    ) -> None:
        self.database = database
        self._tiers = {(r.flag, c): tier for r in rules for c, tier in r.tiers}
        self._shadowed = shadowed
        self._answers: dict[tuple[tuple[str, ...], str], tuple[AnonymizerTier, Rule | None]] = {}

    def flags(self, ip: str) -> tuple[str, ...]:
        return self.database.lookup(ip) if self.database is not None else NO_FLAGS

    def restricts(self, flags: tuple[str, ...]) -> bool:
        """Does any flag change some decision (so the route must be looked at)?"""
        return any(
            self._tiers.get((flag, c), _T.RECORD_ONLY) is not _T.RECORD_ONLY
            for flag in flags for c in ROUTE_CLASSES
        )

    def suppresses(self, flags: tuple[str, ...], route_class: str) -> bool:
        """Must promotions be left out of this response?"""
        return self._answer(flags, route_class)[0] is not _T.RECORD_ONLY

    def blocking_rule(self, flags: tuple[str, ...], route_class: str) -> Rule | None:
        """The rule that blocks this route class for these flags, if any."""
        return self._answer(flags, route_class)[1]

    def _answer(
        self, flags: tuple[str, ...], route_class: str
    ) -> tuple[AnonymizerTier, Rule | None]:
        key = (flags, route_class)
        answer = self._answers.get(key)
        if answer is None:
            tier, strongest = _T.RECORD_ONLY, None
            for flag in flags:  # FLAGS order: the first of equally strong flags names the rule
                candidate = self._tiers.get((flag, route_class), _T.RECORD_ONLY)
                if _STRENGTH[candidate] > _STRENGTH[tier]:
                    tier, strongest = candidate, flag
            rule = None
            # A promotion route is nothing but a promotion: suppressing it means refusing it.
            if strongest is not None and (
                tier is _T.BLOCK or route_class == "promotion"
            ):
                rule_id = f"anonymizer.{strongest}"
                rule = Rule(
                    id=rule_id,
                    zones=frozenset(),
                    route_class=route_class,
                    outcome=Outcome.BLOCK,
                    mode=Mode.SHADOW if rule_id in self._shadowed else None,
                    reason=f"anonymizer.{strongest}.{route_class}",
                )
            answer = (tier, rule)
            self._answers[key] = answer
        return answer

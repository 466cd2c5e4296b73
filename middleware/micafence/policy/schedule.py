"""Effective dates: which zones and rules of a policy are in force at a given instant.

A zone or rule with ``effective_from`` / ``effective_until`` is in force on the half-open
interval ``[effective_from, effective_until)``: exactly at ``effective_from`` it applies, exactly
at ``effective_until`` it no longer does, so two entries where one ends when the next begins
never overlap and never leave a gap. Both ends are ISO 8601 instants with a timezone.

:class:`~micafence.decide.Enforcer` builds its tables from :func:`in_force` and rebuilds them
when the clock passes :func:`next_boundary`, so decisions use the rules in force at request time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from micafence.instants import as_utc, parse_instant
from micafence.policy.model import Policy, Rule, Zone
from micafence.policy.yamlfile import Node

WINDOW_KEYS = ("effective_from", "effective_until")

def parse_window(fields: dict[str, Node]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``effective_from`` / ``effective_until`` from a zone's or rule's validated keys.

    Stricter than a command line: a date alone is refused (a rule starting "on 1 July" says in
    which timezone that day starts), so ``allow_date=False``.
    """
    ends: list[dt.datetime | None] = []
    for key in WINDOW_KEYS:
        node = fields.get(key)
        if node is None:
            ends.append(None)
            continue
        value = node.value
        try:
            if isinstance(value, dt.datetime):  # YAML resolved an unquoted timestamp
                ends.append(as_utc(value, value.isoformat()))
            elif isinstance(value, dt.date):
                raise ValueError(f"{value} is a date: give a time and timezone too "
                                 "(e.g. 2026-07-01T00:00:00+02:00)")
            else:
                ends.append(parse_instant(node.text(), allow_date=False))
        except ValueError as exc:
            node.fail(str(exc))
    start, end = ends
    if start is not None and end is not None and end <= start:
        fields["effective_until"].fail(
            f"effective_until ({end.isoformat()}) must be after effective_from "
            f"({start.isoformat()})"
        )
    return start, end


def in_force(start: dt.datetime | None, end: dt.datetime | None, at: dt.datetime) -> bool:
    """Is ``[start, end)`` in force at ``at`` (an open end is unbounded)?"""
    return (start is None or start <= at) and (end is None or at < end)


def zones_in_force(policy: Policy, at: dt.datetime) -> tuple[Zone, ...]:
    return tuple(z for z in policy.zones if in_force(z.effective_from, z.effective_until, at))


def rules_in_force(policy: Policy, at: dt.datetime) -> tuple[Rule, ...]:
    """The rules in force at ``at``, each narrowed to its zones in force at ``at``."""
    zone_names = {zone.name for zone in zones_in_force(policy, at)}
    rules = []
    for rule in policy.rules:
        if in_force(rule.effective_from, rule.effective_until, at):
            zones = rule.zones & zone_names
            rules.append(rule if zones == rule.zones else dataclasses.replace(rule, zones=zones))
    return tuple(rules)


def next_boundary(policy: Policy, after: dt.datetime) -> dt.datetime | None:
    """The first instant after ``after`` at which a zone or rule starts or stops being in force."""
    entries: Iterable[Zone | Rule] = (*policy.zones, *policy.rules)
    later = [
        instant
        for entry in entries
        for instant in (entry.effective_from, entry.effective_until)
        if instant is not None and instant > after
    ]
    return min(later, default=None)



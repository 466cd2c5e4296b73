"""Effective dates: which zones and rules of a policy are in force at a given instant.

A zone or rule with ``effective_from`` / ``effective_until`` is in force on the half-open
interval ``[effective_from, effective_until)``: exactly at ``effective_from`` it applies, exactly
at ``effective_until`` it no longer does, so two entries where one ends when the next begins
never overlap and never leave a gap. Both ends are ISO 8601 instants with a timezone.

:class:`~micafence.engine.Enforcer` builds its tables from :func:`in_force` and rebuilds them
when the clock passes :func:`next_boundary`, so decisions use the rules in force at request time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable

from .policy import Policy, Rule, Zone
from .yamlfile import Node

WINDOW_KEYS = ("effective_from", "effective_until")

_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?"
)


def utc_now() -> dt.datetime:
    """The default clock."""
    return dt.datetime.now(dt.UTC)


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 instant with a timezone (``2026-07-01T00:00:00+02:00``, ``…Z``), in UTC.

    Raises ``ValueError`` for a date without a time or a time without a timezone: a rule that
    starts "on 1 July" must say in which timezone that day starts.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date and time") from None
    return _aware(value, text)


def _aware(value: dt.datetime, shown: object) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{shown!s} has no timezone (write e.g. 2026-07-01T00:00:00+02:00 or ...Z)"
        )
    # A plain datetime in UTC: YAML loaders hand out datetime subclasses with extra state.
    return dt.datetime.fromtimestamp(value.timestamp(), dt.UTC)


def parse_window(fields: dict[str, Node]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``effective_from`` / ``effective_until`` from a zone's or rule's validated keys."""
    ends: list[dt.datetime | None] = []
    for key in WINDOW_KEYS:
        node = fields.get(key)
        if node is None:
            ends.append(None)
            continue
        value = node.value
        try:
            if isinstance(value, dt.datetime):  # YAML resolved an unquoted timestamp
                ends.append(_aware(value, value.isoformat()))
            elif isinstance(value, dt.date):
                raise ValueError(f"{value} is a date: give a time and timezone too "
                                 "(e.g. 2026-07-01T00:00:00+02:00)")
            else:
                ends.append(parse_instant(node.text()))
        except ValueError as exc:
            node.fail(str(exc))
    start, end = ends
    if start is not None and end is not None and end <= start:
        fields["effective_until"].fail(
            f"effective_until ({end.isoformat()}) must be after effective_from "
            f"({start.isoformat()})"
        )
    return start, end


def parse_duration(node: Node) -> dt.timedelta:
    """An ISO 8601 duration in weeks, days, hours, minutes, seconds (``P14D``, ``PT36H``).

    Years and months are refused: their length depends on the calendar.
    """
    text = node.text().strip().upper()
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        node.fail(f"{node.value!r} is not an ISO 8601 duration in weeks, days or hours "
                  "(e.g. P14D, P2W, PT36H; years and months are not allowed)")
    parts = {name: int(value) for name, value in match.groupdict().items() if value}
    duration = dt.timedelta(**parts)
    if not duration:
        node.fail("the duration must be longer than zero")
    return duration


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


def format_duration(duration: dt.timedelta) -> str:
    """``P3DT4H5M`` for display (whole seconds)."""
    seconds = int(duration.total_seconds())
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    if not days and not time:
        return "PT0S"
    return f"{sign}P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")

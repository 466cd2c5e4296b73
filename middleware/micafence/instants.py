"""Instants: the one clock and the one parser of a point in time.

Every time micafence reads (``explain --at``, ``audit export --since``, ``breakglass status
--at``, ``grant add --initiated-at``, a record in a store or an archive) goes through
:func:`parse_instant`, so they all accept the same text:

- an ISO 8601 date and time with a timezone (``2026-07-01T00:00:00+02:00``, ``…Z``);
- a date alone (``2026-07-01``), meaning midnight UTC at the start of that day.

A date and time without a timezone is refused: "09:00" means a different instant in every
office, and guessing one would move a decision or an export by hours. Policy files are
stricter still (``allow_date=False``): a zone or rule that starts "on 1 July" must say in which
timezone that day starts. The result is always a plain ``datetime`` in UTC.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable

#: Where "now" comes from: an aware UTC datetime. Injected so tests control time.
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The default clock: now, in UTC."""
    return dt.datetime.now(dt.UTC)


def parse_instant(text: str, *, allow_date: bool = True) -> dt.datetime:
    """The instant ``text`` names, in UTC; ``ValueError`` naming the text when it names none.

    A date alone means midnight UTC (refused when ``allow_date`` is false); a date and time
    must carry a timezone.
    """
    stripped = text.strip()
    try:
        day = dt.date.fromisoformat(stripped)
    except ValueError:
        pass
    else:
        if not allow_date:
            raise ValueError(f"{stripped} is a date: give a time and timezone too "
                             "(e.g. 2026-07-01T00:00:00+02:00)")
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    try:
        value = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date and time") from None
    return as_utc(value, stripped)


def as_utc(value: dt.datetime, shown: object) -> dt.datetime:
    """``value`` as a plain UTC ``datetime``; ``ValueError`` naming ``shown`` if it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{shown!s} has no timezone: a time that has no UTC offset names a different "
            "instant in every office (write e.g. 2026-07-01T00:00:00+02:00 or ...Z)"
        )
    # A plain datetime in UTC: YAML loaders hand out datetime subclasses with extra state.
    utc = value.astimezone(dt.UTC)
    return dt.datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                       utc.microsecond, tzinfo=dt.UTC)


def instant_argument(text: str) -> dt.datetime:
    """:func:`parse_instant` as an argparse ``type``: a bad value is a usage error."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

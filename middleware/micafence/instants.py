"""Time on the ground floor: the one clock, the one parser of an instant, ISO 8601 durations.

Every time micafence reads (``explain --at``, ``audit export --since``, ``breakglass status
--at``, ``grant add --initiated-at``, a record in a store or an archive) goes through
:func:`parse_instant`, so they all accept the same text:

- an ISO 8601 date and time with a timezone (``2026-07-01T00:00:00+02:00``, ``…Z``);
- a date alone (``2026-07-01``), meaning midnight UTC at the start of that day.

A date and time without a timezone is refused: "09:00" means a different instant in every
office, and guessing one would move a decision or an export by hours. Policy files are
stricter still (``allow_date=False``): a zone or rule that starts "on 1 July" must say in which
timezone that day starts; so are records read back (micafence writes full instants, so a date
alone there is damage). The result is always a plain ``datetime`` in UTC.

Durations (:func:`parse_duration`, :func:`format_duration`) are the ISO 8601 ones policy
settings and records use (``P30D``, ``PT24H``, ``P2W``). Years and months are refused: their
length depends on the calendar. Absurd lengths are refused too, so a setting or a stored record
can never overflow date arithmetic on the request path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
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
    if stripped.endswith("z"):  # RFC 3339's lower-case UTC designator, which Python refuses
        stripped = f"{stripped[:-1]}Z"
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
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before the first instant Python holds
        raise ValueError(f"{shown!s} is out of range once in UTC") from None
    return dt.datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                       utc.microsecond, tzinfo=dt.UTC)


def instant_argument(text: str) -> dt.datetime:
    """:func:`parse_instant` as an argparse ``type``: a bad value is a usage error."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- durations -----------------------------------------------------------------------------------

LONGEST = dt.timedelta(days=36500)  # 100 years
# ASCII only: ``\d`` alone takes any script's digits, and ``str.upper()`` makes S of the
# long s (U+017F).
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?",
    re.ASCII | re.IGNORECASE,
)


def parse_duration(text: str) -> dt.timedelta:
    """A positive duration of at most 100 years; raises ``ValueError`` saying what is wrong."""
    cleaned = text.strip()
    match = _DURATION.fullmatch(cleaned)
    if match is None or cleaned.upper() in ("P", "PT") or cleaned.upper().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration in weeks, days, hours, minutes "
                         "or seconds (e.g. P30D, PT24H; years and months are not allowed)")
    too_long = ValueError(f"{text!r}: the duration must be at most 100 years (P36500D)")
    try:
        duration = dt.timedelta(**{k: int(v) for k, v in match.groupdict().items() if v})
    except OverflowError:
        raise too_long from None
    if duration <= dt.timedelta(0):
        raise ValueError(f"{text!r}: the duration must be longer than zero")
    if duration > LONGEST:
        raise too_long
    return duration


def format_duration(duration: dt.timedelta) -> str:
    """``P3DT4H5M`` for display (whole seconds; ``PT0S`` for nothing)."""
    seconds = int(duration.total_seconds())
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    if not days and not time:
        return "PT0S"
    return f"{sign}P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")

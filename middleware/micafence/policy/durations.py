"""ISO 8601 durations as policy settings and records use them (``P30D``, ``PT24H``, ``P2W``).

Years and months are refused: their length depends on the calendar. Absurd lengths are refused
too, so a setting or a stored record can never overflow date arithmetic on the request path.
"""

from __future__ import annotations

import datetime as dt
import re

from micafence.policy.yamlfile import Node

LONGEST = dt.timedelta(days=36500)  # 100 years
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?"
)


def parse_duration(text: str) -> dt.timedelta:
    """A positive duration of at most 100 years; raises ``ValueError`` saying what is wrong."""
    cleaned = text.strip().upper()
    match = _DURATION.fullmatch(cleaned)
    if match is None or cleaned in ("P", "PT") or cleaned.endswith("T"):
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


def duration_setting(node: Node) -> dt.timedelta:
    """A policy duration setting; a bad one fails naming the file, key path and line."""
    try:
        return parse_duration(node.text())
    except ValueError as exc:
        node.fail(str(exc))

"""Calendar look-back periods: how far back solicitation evidence counts (``P12M``).

Policy durations (:func:`~micafence.instants.parse_duration`) refuse years and months, whose
length depends on the calendar. A look-back is different: "the last twelve months" is a
calendar period that ops and counsel reason in, so :func:`parse_lookback` takes years and
months (``P1Y``, ``P12M``, ``P1Y6M``), optionally followed by weeks, days or a time
(``P1M15D``), or a plain duration (``P365D``). :meth:`Lookback.start` counts the months on the
calendar: twelve months before 31 March is 31 March of the year before; one month before
31 March is 28 (or 29) February.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

from micafence.instants import LONGEST, format_duration, parse_duration

# ASCII only, as durations (micafence.instants): any script's digits are not a period's.
_LOOKBACK = re.compile(r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?P<rest>.*)",
                       re.ASCII | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Lookback:
    """A calendar period: ``months`` counted on the calendar, then ``extra`` (a duration)."""

    months: int = 0
    extra: dt.timedelta = dt.timedelta(0)

    def start(self, instant: dt.datetime) -> dt.datetime:
        """The first instant inside the period that ends at ``instant``."""
        year, month = divmod(instant.year * 12 + instant.month - 1 - self.months, 12)
        day = min(instant.day, calendar.monthrange(year, month + 1)[1])
        return instant.replace(year=year, month=month + 1, day=day) - self.extra

    def __str__(self) -> str:
        text = "P" + (f"{self.months}M" if self.months else "")
        if self.extra:
            text += format_duration(self.extra)[1:]
        return text


def parse_lookback(text: str) -> Lookback:
    """A look-back period of at most 100 years; ``ValueError`` saying what is wrong."""
    cleaned = text.strip()
    match = _LOOKBACK.fullmatch(cleaned)
    wrong = ValueError(f"{text!r} is not an ISO 8601 period such as P12M, P1Y or P90D")
    if match is None or cleaned.upper() == "P":
        raise wrong
    months = int(match["years"] or 0) * 12 + int(match["months"] or 0)
    extra = dt.timedelta(0)
    if match["rest"]:
        try:
            extra = parse_duration("P" + match["rest"])
        except ValueError:
            raise wrong from None
    if months == 0 and not extra:
        raise ValueError(f"{text!r}: the period must be longer than zero")
    if months > 1200 or months * dt.timedelta(days=30) + extra > LONGEST:
        raise ValueError(f"{text!r}: the period must be at most 100 years")
    return Lookback(months, extra)


#: ``promotions.solicitation_lookback`` when a policy does not set it.
DEFAULT_SOLICITATION_LOOKBACK = Lookback(months=12)

"""ISO 3166-1 alpha-2 country codes accepted in policies and identity claims.

``ISO_COUNTRY_CODES`` holds every officially assigned ISO 3166-1 alpha-2 code (249 of them),
plus ``XK`` for Kosovo: a user-assigned code, not an official one, but MaxMind's databases
return it, so a policy has to be able to name it.

Codes that look plausible but are *not* country codes are deliberately absent: ``UK`` (the
United Kingdom is ``GB``), ``EU`` (exceptionally reserved, not a country) and placeholders
such as ``XX``. Outermost regions and territories that geolocate under their own codes
(``AX`` Åland, ``GF`` French Guiana, ``GP`` Guadeloupe, ``MQ`` Martinique, ``RE`` Réunion,
``YT`` Mayotte, ``MF`` Saint-Martin, ...) are present in their own right.
"""

from __future__ import annotations

__all__ = ["ISO_COUNTRY_CODES", "is_country_code"]

# One whitespace-separated string, split once below (easier to proofread than a list).
_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    XK
    YE YT
    ZA ZM ZW
"""

ISO_COUNTRY_CODES: frozenset[str] = frozenset(_CODES.split())


def is_country_code(code: str) -> bool:
    """True if ``code`` is an assigned ISO 3166-1 alpha-2 code (or ``XK``), exactly as written.

    The check is case-sensitive: callers normalise (strip, upper-case) before asking.
    """
    return code in ISO_COUNTRY_CODES

"""The vocabulary of decisions: route classes and reasons, each reason with its visitor text.

Like :class:`http.HTTPStatus` carries a phrase and a description, a :class:`Reason` carries the
code suffix it writes after the deciding zone (``eu.no_grant``), the sentence shown to the
visitor in a 451 answer and the meaning ops read in the manual's reason table
(``docs/reasons.md``, generated from here: :func:`reason_table`). Codes are made by
:func:`reason_code` and nowhere else.

A rule may name its own code (``reason:`` in the policy; the anonymizer screen and break-glass
write ``anonymizer.<flag>.<class>`` and ``breakglass.service``): the decision's :class:`Reason`
is then that of the rule's route class, which gives the visitor its text.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class RouteClass(StrEnum):
    """What a route does, as far as the rules care (a policy route's ``class``)."""

    ACCOUNT_CREATION = "account_creation"
    PROMOTION = "promotion"
    SERVICE = "service"
    WIND_DOWN = "wind_down"
    NEUTRAL = "neutral"


_NOT_HERE = "This page is not available in your location."
_SERVICE = "This service is not available in your location."
_SIGNED_IN = "Only existing, signed-in clients can use this from your location."
_OUT_OF_SCOPE = "This request is outside the scope you requested from us yourself."
_NEW_ACCOUNT = "New accounts cannot be opened from your location."
_PROMOTION = "This content is not available in your location."


class Reason(Enum):
    """Why a request was decided as it was. ``value`` is the code suffix after the zone."""

    suffix: str
    zoned: bool
    text: str
    meaning: str

    def __new__(cls, suffix: str, zoned: bool, text: str, meaning: str) -> Reason:
        member = object.__new__(cls)
        member._value_ = suffix
        member.suffix = suffix
        member.zoned = zoned  # the code is "<zone>.<suffix>"; else the suffix alone
        member.text = text  # what the visitor reads in a 451 answer; names no country
        member.meaning = meaning  # what ops read in the manual's reason table (docs/reasons.md)
        return member

    @property
    def pattern(self) -> str:
        """The code as documented: ``<zone>.no_grant``, ``pass``."""
        return f"<zone>.{self.suffix}" if self.zoned else self.suffix

    PASS = ("pass", False, "", "no rule applies")
    ACCOUNT_CREATION = ("account_creation", True, _NEW_ACCOUNT,
                        "new account from a restricted zone")
    PROMOTION = ("promotion", True, _PROMOTION, "promotion route for a zone that may not see it")
    SERVICE = ("service", True, _SERVICE, "a service blocked outright for the zone")
    NO_GRANT = ("no_grant", True,
                "This service is only available within a scope you requested from us yourself.",
                "a service that needs a client-initiated grant, without one")
    IN_SCOPE = ("in_scope", True, "",
                "a service request passed inside a live grant (`grant_id` in the decision)")
    OUT_OF_SCOPE_SERVICE = ("out_of_scope.service", True, _OUT_OF_SCOPE,
                            "the client's grants do not cover this service")
    OUT_OF_SCOPE_ASSET_TYPE = ("out_of_scope.asset_type", True, _OUT_OF_SCOPE,
                               "a grant covers the service, but not this asset or its type")
    GRANT_EXPIRED = ("grant_expired", True, _OUT_OF_SCOPE,
                     "a grant covered this, but its term (or same-type window) has passed")
    SCOPE_UNREADABLE = ("scope_unreadable", True, _SERVICE,
                        "service or asset cannot be read: body not JSON, too large, field missing")
    STORE_UNAVAILABLE = ("store_unavailable", True,
                         "This cannot be checked right now; please try again later.",
                         "the grant store cannot be read: service routes (and onboarding tokens) "
                         "fail closed")
    ONBOARDING = ("onboarding", True, "",
                  "account creation passed with a grant's single-use onboarding token "
                  "(`grant_id` in the decision)")
    ONBOARDING_INVALID_TOKEN = ("onboarding.invalid_token", True,
                                "This onboarding token is not valid: it is unknown, used or "
                                "expired.",
                                "account creation refused: the onboarding token is unknown, used, "
                                "expired, or its grant is no longer in force")
    ONBOARDING_SOLICITED = ("onboarding.solicited", True,
                            "This account cannot be opened with this token: your visit came "
                            "through one of our promotions.",
                            "account creation refused: the onboarding token came with an arrival "
                            "cookie that has solicitation evidence within "
                            "`promotions.solicitation_lookback` (the arrival is linked to the "
                            "grant's client)")
    WIND_DOWN = ("wind_down", True, _SIGNED_IN,
                 "wind-down route passed for an identified existing client")
    UNIDENTIFIED = ("wind_down.unidentified", True, _SIGNED_IN,
                    "wind-down route refused: client not identified (an `allow_identified` rule "
                    "of another class, or with its own `reason`, adds `.unidentified` to its code)")
    NEUTRAL = ("neutral", True, _NOT_HERE,
               "a rule on the neutral class (every route), such as an incident block")
    PROMOTION_APPROVED = ("promotion.approved", True, "",
                          "promotion route passed for an `approved_only` zone: ops approved it "
                          "there")
    PROMOTION_UNREWRITABLE = ("promotion.unrewritable", True, _PROMOTION,
                              "a restricted visitor's HTML page could not be rewritten (too "
                              "large, undecodable): `on_unrewritable` (`<zone>` is `anonymizer` "
                              "when only an anonymizer flag suppresses promotions)")
    AUDIT_UNAVAILABLE = ("audit_unavailable", False,
                         "This request cannot be recorded right now; please retry shortly.",
                         "**503**, not 451: the request's evidence record cannot be queued (see "
                         "\"Audit trail and reports\")")


#: The reason a rule of each class gives when it names no code of its own.
CLASS_REASONS: dict[RouteClass, Reason] = {
    RouteClass.ACCOUNT_CREATION: Reason.ACCOUNT_CREATION,
    RouteClass.PROMOTION: Reason.PROMOTION,
    RouteClass.SERVICE: Reason.SERVICE,
    RouteClass.WIND_DOWN: Reason.WIND_DOWN,
    RouteClass.NEUTRAL: Reason.NEUTRAL,
}

#: Codes that rules written by micafence itself name (their reason is their class's).
RULE_CODES: tuple[tuple[str, str], ...] = (
    ("anonymizer.<flag>.<class>", "the address is a VPN, proxy, Tor exit or hosting address whose "
     "tier for the route class blocks (see \"Anonymizers\")"),
    ("breakglass.service", "break-glass is on: service traffic from restricted zones is blocked"),
)

PASS_CODE = Reason.PASS.suffix
_UNIDENTIFIED_SUFFIX = ".unidentified"


def reason_code(zone: str | None, reason: Reason) -> str:
    """The code a decision carries: ``eu.no_grant``; ``pass`` and ``audit_unavailable`` alone."""
    if not reason.zoned:
        return reason.suffix
    return f"{zone}.{reason.suffix}"


def unidentified_code(rule_code: str) -> str:
    """The code of an ``allow_identified`` rule refusing an unidentified client."""
    return rule_code + _UNIDENTIFIED_SUFFIX


def reason_table() -> str:
    """The manual's reason table (docs/reasons.md) (Markdown), in the order of :class:`Reason`."""
    rows = ["| reason | meaning |", "|---|---|"]
    rows += [f"| `{reason.pattern}` | {reason.meaning} |" for reason in Reason
             if reason is not Reason.AUDIT_UNAVAILABLE]
    rows += [f"| `{code}` | {meaning} |" for code, meaning in RULE_CODES]
    rows.append(f"| `{Reason.AUDIT_UNAVAILABLE.pattern}` | {Reason.AUDIT_UNAVAILABLE.meaning} |")
    return "\n".join(rows) + "\n"

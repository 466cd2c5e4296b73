"""The 451 answer: RFC 9457 problem JSON for API clients, a short HTML page for browsers."""

from __future__ import annotations

import html
import json
from collections.abc import MutableMapping
from typing import Any

from micafence.asgi import Send
from micafence.decision import Decision

STATUS = 451
TITLE = "Unavailable For Legal Reasons"

_DETAILS = {
    "account_creation": "New accounts cannot be opened from your location.",
    "promotion": "This content is not available in your location.",
    "service": "This service is not available in your location.",
    "wind_down": "Only existing, signed-in clients can use this from your location.",
    "neutral": "This page is not available in your location.",
}
_NO_GRANT = "This service is only available within a scope you requested from us yourself."
_OUT_OF_SCOPE = "This request is outside the scope you requested from us yourself."
_SCOPE_REASONS = (".out_of_scope.service", ".out_of_scope.asset_type", ".grant_expired")
_INVALID_TOKEN = "This onboarding token is not valid: it is unknown, used or expired."


def detail(decision: Decision) -> str:
    """A sentence for the visitor. It names no country: the reason code carries the facts."""
    if decision.reason.endswith(".no_grant"):
        return _NO_GRANT
    if decision.reason.endswith(_SCOPE_REASONS):
        return _OUT_OF_SCOPE
    if decision.reason.endswith(".onboarding.invalid_token"):
        return _INVALID_TOKEN
    return _DETAILS.get(decision.route_class, _DETAILS["neutral"])


def wants_json(headers: Any) -> bool:
    for name, value in headers or ():
        if name == b"accept":
            return b"json" in value.lower()
    return False


def problem(decision: Decision) -> dict[str, object]:
    """The RFC 9457 problem document for a blocked request."""
    return {
        "type": f"urn:micafence:reason:{decision.reason}",
        "title": TITLE,
        "status": STATUS,
        "detail": detail(decision),
        "reason": decision.reason,
        "rule": decision.rule_id,
        "policy_revision": decision.policy_revision,
    }


def block_body(decision: Decision, as_json: bool) -> tuple[bytes, bytes]:
    """``(content type, body)`` of the 451 answer."""
    if as_json:
        return b"application/problem+json", json.dumps(problem(decision)).encode("utf-8")
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>451 {TITLE}</title></head><body><h1>{TITLE}</h1>"
        f"<p>{html.escape(detail(decision))}</p>"
        f"<p><small>Reason: <code>{html.escape(decision.reason)}</code></small></p>"
        "</body></html>"
    )
    return b"text/html; charset=utf-8", page.encode("utf-8")


def block_headers(decision: Decision, content_type: bytes, length: int,
                  blocked_by: str | None) -> list[tuple[bytes, bytes]]:
    # 451 is cacheable by default (RFC 7725): a block must never be served to someone else.
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(length).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"vary", b"Accept"),
        (b"micafence-reason", decision.reason.encode("ascii", "replace")),
    ]
    if blocked_by:
        headers.append((b"link", f'<{blocked_by}>; rel="blocked-by"'.encode("latin-1", "replace")))
    return headers


async def send_block(
    scope: MutableMapping[str, Any], send: Send, decision: Decision, blocked_by: str | None
) -> None:
    """Answer an ``http`` scope with 451 (no body for ``HEAD``)."""
    content_type, body = block_body(decision, wants_json(scope.get("headers")))
    await send({
        "type": "http.response.start",
        "status": STATUS,
        "headers": block_headers(decision, content_type, len(body), blocked_by),
    })
    await send({
        "type": "http.response.body",
        "body": b"" if scope.get("method") == "HEAD" else body,
    })

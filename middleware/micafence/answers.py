"""Every answer micafence sends itself, instead of the app's.

- 451 for a blocked request: RFC 9457 problem JSON for API clients, a short HTML page for
  browsers (:func:`send_block`); a websocket handshake is refused with the same answer when the
  server supports it, else closed before accept (:func:`refuse_websocket`);
- the empty answers of suppressed promotion routes: ``204`` or the route's empty result
  (:func:`send_no_content`, :func:`send_empty`);
- 503 when a request's evidence cannot be queued (:func:`send_audit_unavailable`) and when the
  middleware did not start (:func:`answer_unstarted`).

Every answer is ``no-store`` and, but for the start-up one, names its reason in
``Micafence-Reason``. The visitor's sentence comes from the :class:`~micafence.reasons.Reason`.
"""

from __future__ import annotations

import html
import json
from collections.abc import MutableMapping, Sequence
from typing import Any, NamedTuple, Protocol

from micafence.asgi import Receive, Send
from micafence.reasons import Reason

STATUS = 451
TITLE = "Unavailable For Legal Reasons"
_FALLBACK = "This page is not available in your location."

Header = tuple[bytes, bytes]


class Refusal(Protocol):
    """What a 451 answer says: a :class:`~micafence.decision.Decision` is one."""

    @property
    def reason(self) -> str: ...
    @property
    def kind(self) -> Reason: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def policy_revision(self) -> str: ...


class Refused(NamedTuple):
    """A refusal that is no request's decision (a page found unrewritable while answering)."""

    reason: str
    kind: Reason
    rule_id: str
    policy_revision: str


def detail(refusal: Refusal) -> str:
    """A sentence for the visitor. It names no country: the reason code carries the facts."""
    return refusal.kind.text or _FALLBACK


def wants_json(headers: Any) -> bool:
    """Does the first ``Accept`` header name a JSON type it does not refuse (``q=0``)?"""
    for name, value in headers or ():
        if name == b"accept":
            value = value.lower()
            if b"json" not in value:  # the common case: a browser's or no JSON at all
                return False
            return any(b"json" in kind and not _refused(params)
                       for kind, _, params in (r.partition(b";") for r in value.split(b",")))
    return False


def _refused(params: bytes) -> bool:
    """Is a media range's ``q`` zero (``;q=0``, ``q=0.000``)?"""
    for param in params.split(b";"):
        key, _, number = param.partition(b"=")
        if key.strip() == b"q":
            try:
                return float(number.strip()) == 0
            except ValueError:
                return False
    return False


def problem(refusal: Refusal) -> dict[str, object]:
    """The RFC 9457 problem document for a blocked request."""
    return {
        "type": f"urn:micafence:reason:{refusal.reason}",
        "title": TITLE,
        "status": STATUS,
        "detail": detail(refusal),
        "reason": refusal.reason,
        "rule": refusal.rule_id,
        "policy_revision": refusal.policy_revision,
    }


def block_body(refusal: Refusal, as_json: bool) -> tuple[bytes, bytes]:
    """``(content type, body)`` of the 451 answer."""
    if as_json:
        return b"application/problem+json", json.dumps(problem(refusal)).encode("utf-8")
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>451 {TITLE}</title></head><body><h1>{TITLE}</h1>"
        f"<p>{html.escape(detail(refusal))}</p>"
        f"<p><small>Reason: <code>{html.escape(refusal.reason)}</code></small></p>"
        "</body></html>"
    )
    return b"text/html; charset=utf-8", page.encode("utf-8")


def block_headers(refusal: Refusal, content_type: bytes, length: int,
                  blocked_by: str | None) -> list[Header]:
    # 451 is cacheable by default (RFC 7725): a block must never be served to someone else.
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(length).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"vary", b"Accept"),
        (b"micafence-reason", refusal.reason.encode("ascii", "replace")),
    ]
    if blocked_by:
        headers.append((b"link", f'<{blocked_by}>; rel="blocked-by"'.encode("latin-1", "replace")))
    return headers


async def send_block(
    scope: MutableMapping[str, Any], send: Send, refusal: Refusal, blocked_by: str | None,
    extra: Sequence[Header] = (),
) -> None:
    """Answer an ``http`` scope with 451 (no body for ``HEAD``); ``extra`` headers added."""
    content_type, body = block_body(refusal, wants_json(scope.get("headers")))
    await send({
        "type": "http.response.start",
        "status": STATUS,
        "headers": [*block_headers(refusal, content_type, len(body), blocked_by), *extra],
    })
    await send({
        "type": "http.response.body",
        "body": b"" if scope.get("method") == "HEAD" else body,
    })


async def refuse_websocket(
    scope: MutableMapping[str, Any], receive: Receive, send: Send, refusal: Refusal,
    blocked_by: str | None,
) -> None:
    """Refuse a websocket handshake: the 451 problem JSON where the server can send it."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        content_type, body = block_body(refusal, as_json=True)
        await send({
            "type": "websocket.http.response.start",
            "status": STATUS,
            "headers": block_headers(refusal, content_type, len(body), blocked_by),
        })
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.reason})


def _empty_headers(reason: str, extra: Sequence[Header]) -> list[Header]:
    return [(b"cache-control", b"no-store"),
            (b"micafence-reason", reason.encode("ascii", "replace")), *extra]


async def send_no_content(send: Send, reason: str, extra: Sequence[Header] = ()) -> None:
    """A suppressed promotion route answered ``204 No Content``."""
    await send({"type": "http.response.start", "status": 204,
                "headers": _empty_headers(reason, extra)})
    await send({"type": "http.response.body", "body": b""})


async def send_empty(
    scope: MutableMapping[str, Any], send: Send, reason: str, content_type: str, body: bytes,
    extra: Sequence[Header] = (),
) -> None:
    """A suppressed promotion answered ``200`` with an empty result (``[]``, an empty page)."""
    headers = _empty_headers(reason, ())
    headers += [(b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("ascii")), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if scope.get("method") == "HEAD" else body})


_AUDIT_REASON = Reason.AUDIT_UNAVAILABLE.suffix
_AUDIT_BODY = json.dumps({
    "type": f"urn:micafence:reason:{_AUDIT_REASON}",
    "title": "Service Unavailable", "status": 503, "reason": _AUDIT_REASON,
    "detail": Reason.AUDIT_UNAVAILABLE.text,
}).encode()
_AUDIT_HEADERS = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(_AUDIT_BODY)).encode()),
    (b"cache-control", b"no-store"),
    (b"retry-after", b"1"),
    (b"micafence-reason", _AUDIT_REASON.encode()),
]


async def send_audit_unavailable(
    scope: MutableMapping[str, Any], receive: Receive, send: Send
) -> None:
    """Answer a request whose evidence could not be queued: 503 ``audit_unavailable`` (a
    websocket is closed with 1013, "try again later")."""
    if scope.get("type") == "websocket":
        message = await receive()
        if message.get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1013, "reason": _AUDIT_REASON})
        return
    await send({"type": "http.response.start", "status": 503, "headers": _AUDIT_HEADERS})
    await send({"type": "http.response.body",
                "body": b"" if scope.get("method") == "HEAD" else _AUDIT_BODY})


_UNSTARTED_BODY = (b"503 Service Unavailable: the compliance middleware did not start "
                   b"(see the server log)\n")
_UNSTARTED_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_UNSTARTED_BODY)).encode("ascii")),
    (b"cache-control", b"no-store"),
]


async def answer_unstarted(
    message: str, scope: MutableMapping[str, Any], receive: Receive, send: Send
) -> None:
    """Answer ``scope`` for a middleware that did not start (:mod:`micafence.live.startup`):
    the lifespan startup fails with ``message``, ``http`` gets 503, a websocket is closed."""
    kind = scope["type"]
    if kind == "http":
        await send({"type": "http.response.start", "status": 503, "headers": _UNSTARTED_HEADERS})
        await send({"type": "http.response.body", "body": _UNSTARTED_BODY})
    elif kind == "websocket":
        if (await receive()).get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1011})
    elif kind == "lifespan":
        while True:
            received = await receive()
            if received.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": message})
                return
            if received.get("type") == "lifespan.shutdown":  # a server that goes on anyway
                await send({"type": "lifespan.shutdown.complete"})
                return

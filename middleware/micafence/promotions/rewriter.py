"""The HTML safety net: a ``send`` wrapper that removes promotions from a restricted visitor's page.

Like Starlette's ``GZipMiddleware``, it holds back ``http.response.start`` until it has the whole
body, because the headers it sends depend on the body it makes. Non-HTML responses pass
straight through. An HTML page is decoded (gzip, br, zstd), parsed, cleaned by a
:class:`~micafence.promotions.filter.PromotionFilter`, written back in its own charset and sent with
a recomputed ``Content-Length``, no ``ETag`` and cache headers that keep it out of shared
caches. A page too large to hold, truncated, partial (206) or undecodable is never sent as it
was: the policy's ``on_unrewritable`` answer goes out instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from micafence.asgi import Message, Send
from micafence.promotions.cache_safety import CacheSafety, typed_html
from micafence.promotions.filter import PromotionFilter
from micafence.promotions.page_codec import (
    Unrewritable,
    content_codings,
    decode_content,
    decode_text,
    encode_text,
    page_charset,
)

Header = tuple[bytes, bytes]

logger = logging.getLogger("micafence.promotions.rewriter")

# Headers that describe the body as the app made it: wrong once it is rewritten or decoded.
_BODY_HEADERS = frozenset({
    b"content-length", b"content-encoding", b"etag", b"content-md5", b"digest",
    b"content-digest", b"repr-digest", b"accept-ranges", b"content-range",
})
_NO_BODY_STATUSES = frozenset({204, 304})
_WAITING, _PASSING, _HOLDING, _SENT, _REFUSED = range(5)


class RewritingSend:
    """Wraps one restricted request's ``send``. One instance per request.

    ``refuse(problem)`` sends the policy's ``on_unrewritable`` answer; ``extra_headers`` (the
    visitor cookie) go on whatever response is sent; ``zone_route`` says whether the route is
    zone-dependent (its non-HTML answers are made private too); ``personal`` whether the decision
    read the client's identity (private even where a CDN keys on the country).
    """

    def __init__(
        self,
        send: Send,
        *,
        page_filter: PromotionFilter,
        limit: int,
        head: bool,
        cache: CacheSafety,
        personal: bool,
        zone_route: bool,
        refuse: Callable[[str], Awaitable[None]],
        extra_headers: list[Header],
    ) -> None:
        self._send = send
        self._filter = page_filter
        self._limit = limit
        self._head = head
        self._cache = cache
        self._personal = personal
        self._zone_route = zone_route
        self._refuse = refuse
        self._extra = extra_headers
        self._state = _WAITING
        self._start: Message = {}
        self._headers: list[Header] = []
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(self, message: Message) -> None:
        kind = message.get("type")
        if self._state == _HOLDING and kind == "http.response.body":
            await self._hold(message)
        elif kind == "http.response.start" and self._state == _WAITING:
            if self._extra or self._zone_route or touches(message):
                await self._begin(message)
            else:  # not a page, nothing to add: pass it on untouched (the common case)
                self._state = _PASSING
                await self._send(message)
        elif self._state != _REFUSED:
            await self._send(message)
        # After a refusal the client has its answer: the rest of the app's page is dropped.

    async def _begin(self, message: Message) -> None:
        headers = message.get("headers") or ()
        status = int(message.get("status", 200))
        if status < 200 or status in _NO_BODY_STATUSES or not _maybe_html(headers):
            self._state = _PASSING
            if self._zone_route:
                headers = self._cache.mark(headers, self._personal)
            await self._send({**message, "headers": [*headers, *self._extra]})
            return
        headers = list(headers)
        self._state = _HOLDING
        self._start, self._headers = message, headers
        if status == 206:
            await self._fail("partial content (206) cannot be rewritten")
            return
        declared = _header(headers, b"content-length")
        encoding = _header(headers, b"content-encoding")
        if declared is not None and not content_codings(encoding) and not self._head:
            try:
                too_big = int(declared) > self._limit
            except ValueError:
                too_big = False
            if too_big:
                await self._fail(f"page larger than {self._limit} bytes")

    async def _hold(self, message: Message) -> None:
        body = message.get("body") or b""
        self._size += len(body)
        if self._size > self._limit:
            self._chunks.clear()
            await self._fail(f"page larger than {self._limit} bytes")
            return
        if body:
            self._chunks.append(bytes(body))
        if not message.get("more_body", False):
            await self._finish()

    async def _finish(self) -> None:
        raw = b"".join(self._chunks)
        self._chunks.clear()
        if self._head or not raw:
            # HEAD (no body to rewrite: the length of the rewritten page is unknown) or an empty
            # page (nothing to rewrite): headers only, still private and without validators.
            await self._send_page(b"", length=None if self._head else 0)
            return
        headers = self._headers
        try:
            decoded = decode_content(raw, content_codings(_header(headers, b"content-encoding")),
                                     self._limit)
            if _header(headers, b"content-type") is None and not _sniffs_as_html(decoded):
                await self._pass_held(raw)  # untyped and not markup: not a page after all
                return
            codec, _ = page_charset(_header(headers, b"content-type"), decoded)
            cleaned = self._filter.apply(decode_text(decoded, codec))
        except Unrewritable as exc:
            await self._fail(str(exc))
            return
        body = decoded if cleaned is None else encode_text(
            cleaned, codec, had_utf8_bom=codec == "utf-8" and decoded.startswith(b"\xef\xbb\xbf")
        )
        await self._send_page(body, length=len(body))

    async def _send_page(self, body: bytes, length: int | None) -> None:
        headers = [(n, v) for n, v in self._headers if n.lower() not in _BODY_HEADERS]
        if length is not None:
            headers.append((b"content-length", str(length).encode("ascii")))
        headers = self._cache.mark(headers, self._personal) + self._extra
        self._state = _SENT
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _pass_held(self, raw: bytes) -> None:
        headers = self._headers
        if self._zone_route:
            headers = self._cache.mark(headers, self._personal)
        self._state = _SENT
        await self._send({**self._start, "headers": [*headers, *self._extra]})
        await self._send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _fail(self, problem: str) -> None:
        logger.warning("promotion rewriter: %s; sending the on_unrewritable answer", problem)
        self._state = _REFUSED
        await self._refuse(problem)


def touches(start: Message) -> bool:
    """Could the response that ``start`` begins be a page (HTML, or untyped so a browser would
    sniff it), or an interim one? Anything else passes the safety net untouched."""
    return _maybe_html(start.get("headers") or ()) or int(start.get("status", 200)) < 200


def _header(headers: list[Header], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _maybe_html(headers: Iterable[Header]) -> bool:
    """HTML, or no ``Content-Type`` at all: browsers sniff untyped bodies and may render them."""
    return typed_html(headers) is not False


def _sniffs_as_html(body: bytes) -> bool:
    """Would a browser sniff this untyped body as markup? (It starts with a tag, roughly.)"""
    start = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n\x0c")
    return start.startswith(b"<")

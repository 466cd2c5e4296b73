"""The safety net: a ``send`` wrapper that streams a restricted visitor's page through lol-html
(HTML) or expat (pages a browser parses as XML: :mod:`~micafence.promotions.xml_rewriter`).

What a response is gets settled before its first byte goes out: its type (the ``Content-Type``
as Fetch reads it, or, untyped, a sniff of the first 1445 decoded bytes), its charset (only
pages whose markup a browser decodes as ASCII are rewritten) and its content coding. For that
this wrapper holds the page's first decoded bytes: the 1445 the sniff reads, and then until the
charset is settled (:class:`~micafence.promotions.charsets.HeadWatch`: for a page typed with
its charset, at once; for one that declares it in ``<head>``, once the head is over), at most
:data:`HOLD_BYTES` (64 KB), so a page that sends its head and then waits on data gets its
first bytes out without waiting. The app's (still encoded) bytes are held too, for a response
that turns out not to be a page and goes out as it came; at most :data:`RAW_HOLD_BYTES`
(1 MiB): a compressed body that decodes to too little to decide by then (NUL padding, empty gzip
members, skippable zstd frames) gets the failure posture rather than being held whole. Then
the page streams: each body message is decoded, rewritten by a
:class:`~micafence.promotions.engine.PageRewriter` (or an ``XmlRewriter``) in pieces of at most
64 KB, encoded again in the same coding and sent. Bytes outside removed elements go out as
they came. The event loop gets a turn after every 64 KB of decoded page (a gzip member's end
counts as :data:`_END_COST` bytes) and, for a compressed body, between steps of
:data:`CODED_STEP` bytes of its input, so one large body message (as Starlette's ``Response``
hands over) never holds the loop for long.

The headers of a page: no ``Content-Length`` (unless the whole body had arrived before the
first byte went out, then the length of what is sent), no ``ETag`` or other validators or
digests, ``Cache-Control: private`` and ``Vary`` (:class:`CacheSafety`), and
``X-Content-Type-Options: nosniff`` on every response the net judged, with the type it was
judged as when it came untyped (so no browser sniffs it into something else).

A failure before the first byte (partial content, an unknown coding or charset, a body larger
than ``max_rewrite_bytes``, a corrupt compressed body) sends the policy's ``on_unrewritable``
answer. After it, the response can no longer become that answer: :class:`RewriteAborted` is
raised through the app to the server, which drops the connection, so the visitor sees a broken
download, never a page with its promotions; the abort is logged and counted
(:data:`ABORTS`, exported as ``micafence_rewrite_aborted_total{reason}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from micafence.asgi import Message, Send
from micafence.caches import BoundedCache
from micafence.promotions.cache_safety import CacheSafety
from micafence.promotions.charsets import EXTENDED_PRESCAN, HeadWatch, encoding, header_decides
from micafence.promotions.codings import CodingError, Decoder, Encoder, parse_codings
from micafence.promotions.engine import RewriteError
from micafence.promotions.filter import PromotionFilter, Rewriter
from micafence.promotions.mime import (
    SNIFF_BYTES,
    Kind,
    MimeType,
    extract,
    kind_of,
    may_be_page,
    sniff,
)

Header = tuple[bytes, bytes]

logger = logging.getLogger("micafence.promotions.rewriter")

#: Why a response was aborted after its first byte (the metric's ``reason`` label).
ABORT_REASONS = ("coding", "engine", "too_large")
#: Aborts so far in this process, by reason (:mod:`micafence.metrics` exports them).
ABORTS: dict[str, int] = dict.fromkeys(ABORT_REASONS, 0)

#: Decoded bytes handled between two turns of the event loop: rewriting and re-encoding 64 KB
#: takes a millisecond or two.
PIECE = 65536
#: What the end of a gzip member counts as, in decoded bytes, towards the next turn: a body of
#: empty members decodes to nothing but costs a codec call each.
_END_COST = 256
#: The most compressed bytes handed to the decoder between two turns of the event loop, so a
#: body that decodes to little (padding, empty members) cannot hold it either.
CODED_STEP = 16384
#: The most raw (still encoded) bytes held while the type and charset are not settled.
RAW_HOLD_BYTES = 1 << 20
#: The most decoded bytes held before the type and charset are settled: the sniff needs 1445,
#: the charset the first 1024, and Blink reads a late ``<meta charset>`` in ``<head>`` beyond
#: them (:data:`~micafence.promotions.charsets.EXTENDED_PRESCAN`). The hold ends sooner when
#: the bytes held settle both (:meth:`RewritingSend._settled`). A page that ends while held, or
#: whose last message is in hand when the hold ends (one message of a megabyte, as Starlette's
#: ``Response`` sends), is rewritten whole before its first byte goes out, and sent with its
#: ``Content-Length``: a failure in it still gets the ``on_unrewritable`` answer.
HOLD_BYTES = max(SNIFF_BYTES, EXTENDED_PRESCAN)

# Headers that describe the body as the app made it, or let a cache revalidate it.
_BODY_HEADERS = frozenset({
    b"content-length", b"etag", b"last-modified", b"content-md5", b"digest", b"content-digest",
    b"repr-digest", b"accept-ranges", b"content-range",
})
_BODY_AND_TYPE_HEADERS = _BODY_HEADERS | {b"content-type"}
_NO_BODY_STATUSES = frozenset({204, 304})
_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
#: The type an untyped response goes out with, once judged.
_JUDGED_TYPES = {Kind.HTML: b"text/html", Kind.XML: b"text/xml"}
#: :meth:`RewritingSend._page_headers` remembered per app header set (bounded: entries, bytes).
_PAGE_HEADERS: BoundedCache[tuple[object, ...], list[Header]] = BoundedCache(256, 1 << 20)
#: What one header costs the memo besides its name and value: its tuple and two bytes objects
#: in the key, its tuple in the headers made (a set of many short headers is not small).
_HEADER_COST = 200
_WAITING, _PASSING, _HOLDING, _STREAMING, _DONE, _REFUSED, _ABORTED, _HEAD_ONLY = range(8)


def _memo_size(headers: list[Header]) -> int | None:
    """What remembering the page headers made from ``headers`` costs the memo, counting
    :data:`_HEADER_COST` per header; ``None``: they may not be remembered, not being all bytes
    (another response with equal headers gets them: never an object of the app's that can
    change or be released, as a ``memoryview`` can)."""
    size = 0
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            return None
        size += len(name) + len(value) + _HEADER_COST
    return size


class RewriteAborted(Exception):
    """A page failed after its first byte went out: the server must drop the connection."""


class _TooLarge(Exception):
    pass


class RewritingSend:
    """Wraps one restricted request's ``send``. One instance per request.

    ``refuse(problem)`` sends the policy's ``on_unrewritable`` answer; ``extra_headers`` (the
    visitor cookie) go on whatever response is sent; ``zone_route`` says whether the route is
    zone-dependent (its non-page answers are made private too); ``personal`` whether the
    decision read the client's identity (private even where a CDN keys on the country);
    ``limit`` is ``max_rewrite_bytes``, the most decoded bytes one page may have.
    """

    __slots__ = (
        "_cache", "_codings", "_decoder", "_encoder", "_extra", "_filter", "_head", "_headers",
        "_held", "_held_size", "_kind", "_limit", "_member_end", "_mime", "_opened",
        "_pending", "_personal", "_raw", "_raw_size", "_refuse", "_rewriter", "_send",
        "_size", "_start", "_state", "_untyped", "_watch", "_work", "_zone_route",
    )

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
        self._mime: MimeType | None = None
        self._kind = Kind.OTHER
        self._codings: list[str] = []
        self._decoder: Decoder | None = None
        self._encoder: Encoder | None = None
        self._rewriter: Rewriter | None = None
        self._raw: list[bytes] = []  # the app's bytes while the type is not settled
        self._held: list[bytes] = []  # ... decoded (MEMBER_END marks included)
        self._held_size = 0
        self._raw_size = 0
        self._work = 0  # decoded bytes (and member ends) since the loop's last turn
        self._pending: list[bytes] = []  # encoded output of a page rewritten before its start
        self._member_end = False  # a gzip member of the app's body ended; ours ends before more
        self._watch = HeadWatch()
        self._size = 0  # decoded bytes so far
        self._opened = False  # the response start has gone out
        self._untyped = False

    async def __call__(self, message: Message) -> None:
        kind = message.get("type")
        state = self._state
        if kind == "http.response.body" and state in (_HOLDING, _STREAMING):
            body = message.get("body") or b""
            if state == _HOLDING and not self._raw and not self._codings \
                    and len(body) < PIECE and not message.get("more_body", False):
                await self._whole(body if type(body) is bytes else bytes(body))
            else:
                await self._body(message)
        elif kind == "http.response.start" and state == _WAITING:
            headers = list(message.get("headers") or ())
            page = may_be_page(headers)
            if page or self._extra or self._zone_route or int(message.get("status", 200)) < 200:
                await self.begin(message, headers, page)
            else:  # not a page, nothing to add: pass it on untouched (the common case)
                self._state = _PASSING
                await self._send(message)
        elif state == _HEAD_ONLY:  # a body to a HEAD request goes nowhere, however judged
            if kind == "http.response.body":
                message = {**message, "body": b""}
            await self._send(message)
        elif state == _ABORTED:
            raise RewriteAborted("the response was aborted")
        elif state != _REFUSED:
            await self._send(message)
        # After a refusal the client has its answer: the rest of the app's page is dropped.

    # -- the response start ----------------------------------------------------------------------

    async def begin(self, message: Message, headers: list[Header], page: bool) -> None:
        """The response start (``headers`` as a list, ``page``: it :func:`may_be_page`) of a
        response worth judging: a page, one that gets extra headers or a zone route's privacy,
        or an interim one. :meth:`__call__` asks that; the guard, which asked it already before
        making this object, calls this directly."""
        status = int(message.get("status", 200))
        if status < 200:  # an interim answer (103 Early Hints): the final start is judged next
            await self._send(message)
            return
        if status in _NO_BODY_STATUSES or not page:
            self._state = _PASSING
            if self._zone_route:
                headers = self._cache.mark(headers, self._personal)
            await self._send({**message, "headers": [*headers, *self._extra]})
            return
        self._start, self._headers = message, headers
        self._mime = extract(headers)
        self._kind = kind_of(self._mime)
        self._untyped = self._kind is Kind.UNTYPED
        if self._head:
            # No body to judge: headers as for a page, without the length of one we do not
            # make; a body the app sends all the same is dropped (the server should drop it).
            self._state = _HEAD_ONLY
            await self._send({**message, "headers": self._page_headers(None, None)})
            return
        self._state = _HOLDING
        if status == 206:
            await self._fail("partial content (206) cannot be rewritten")
            return
        codings: list[bytes] = []
        declared: bytes | None = None
        for name, value in headers:  # one pass for both
            lower = bytes(name).lower()
            if lower == b"content-encoding":
                codings.append(value)
            elif lower == b"content-length" and declared is None:
                declared = value
        self._codings = parse_codings(codings) if codings else []
        if self._codings:  # (an uncoded body gets its decoder when it needs one: _body)
            try:
                self._decoder = Decoder(self._codings)
            except CodingError as exc:  # a coding we cannot undo
                await self._fail(str(exc))
                return
        if declared is not None and not self._codings and declared.strip().isdigit() \
                and int(declared) > self._limit:
            await self._fail(f"page larger than {self._limit} bytes")

    # -- the body --------------------------------------------------------------------------------

    async def _body(self, message: Message) -> None:
        body = bytes(message.get("body") or b"")
        more = bool(message.get("more_body", False))
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = Decoder([])
        if self._state == _HOLDING:
            self._raw.append(body)
            self._raw_size += len(body)
        step = CODED_STEP if self._codings else max(len(body), 1)
        try:
            for start in range(0, len(body), step):
                if start:
                    await asyncio.sleep(0)  # a turn for the loop between steps of input
                    if self._state not in (_HOLDING, _STREAMING):
                        break
                await self._consume(decoder.feed(body[start:start + step]), more)
            if not more and self._state in (_HOLDING, _STREAMING):
                rest = decoder.finish()
                if rest:  # (nothing, for an uncoded body: no call for it)
                    await self._consume(rest, more)
                await self._finish()
            elif self._state == _HOLDING and self._settled():
                await self._settle(complete=False, more=more)
            elif self._state == _HOLDING and self._raw_size > RAW_HOLD_BYTES:
                if self._decidable():
                    await self._settle(complete=False, more=more)
                    return
                await self._fail(f"{self._raw_size} bytes of {', '.join(self._codings)} body "
                                 f"decode to {self._held_size}: too little to settle the "
                                 "page's type and charset")
        except BaseException as exc:
            await self._failed(exc)

    async def _consume(self, pieces: Iterable[bytes], more: bool) -> None:
        for piece in pieces:
            self._size += len(piece)
            if self._size > self._limit:
                raise _TooLarge
            if self._state == _HOLDING:
                # A MEMBER_END (empty) too, but not twice in a row: members that decode to
                # nothing must not pile up (one empty member already ends the first).
                if piece or not self._held or self._held[-1]:
                    self._held.append(piece)
                self._held_size += len(piece)
                if self._held_size >= HOLD_BYTES:
                    await self._settle(complete=False, more=more)
            elif self._state == _STREAMING:
                await self._rewrite(piece)
            else:
                return  # passed on as it came, or refused
            self._work += len(piece) or _END_COST
            if self._work >= PIECE:
                self._work = 0
                await asyncio.sleep(0)  # a turn for the event loop

    async def _rewrite(self, piece: bytes) -> None:
        """Rewrite and encode one decoded piece; an empty one (MEMBER_END) is the end of a gzip
        member of the app's body: our member ends there too, once something follows it (the
        last member also takes what the rewriter still holds at the end of the page)."""
        rewriter, encoder = self._rewriter, self._encoder
        assert rewriter is not None and encoder is not None
        if not piece:
            self._member_end = True
            return
        if self._member_end:
            self._member_end = False
            await self._emit(encoder.end_member())
        out = rewriter.write(piece)  # (at most CHUNK bytes, as the decoder gives them)
        if out:
            if self._opened:
                await self._emit(encoder.feed(out))
            else:  # (what _emit does before the start: no call for it)
                self._pending.append(encoder.feed(out))

    async def _emit(self, data: bytes) -> None:
        """Send encoded bytes, or keep them until the start goes out with the page's length."""
        if not data:
            return
        if self._opened:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        else:
            self._pending.append(data)

    def _settled(self) -> bool:
        """Do the bytes held so far settle the type and the charset (the hold may end)?"""
        if self._held_size < SNIFF_BYTES:
            return False
        prefix = b"".join(self._held)
        kind = self._kind
        if kind is Kind.UNTYPED:
            kind = sniff(prefix, False)
        if kind is not Kind.HTML and kind is not Kind.XML:
            return True  # passed on as it came: nothing more to read
        return self._watch.settled(self._mime, prefix, kind)

    def _decidable(self) -> bool:
        """Do the few bytes held settle type and charset all the same (a page typed HTML or XML
        with its charset in the header: only a byte order mark could still change it)?"""
        return (self._kind is Kind.HTML or self._kind is Kind.XML) and self._held_size >= 3 \
            and header_decides(self._mime)

    def _judge(self, prefix: bytes, complete: bool) -> str | None:
        """The rules that settle a response from its first decoded bytes, for both paths (the
        hold and :meth:`_whole`): its kind (sniffed when untyped, kept in ``_kind``), and for a
        page its charset and the rewriter for it (``_rewriter``). Returns the problem that
        refuses the page, if any; no problem and no rewriter: not a page, it passes as it came.
        """
        kind = self._kind
        if kind is Kind.UNTYPED:
            kind = sniff(prefix, complete)
            self._kind = kind
        if kind is not Kind.HTML and kind is not Kind.XML:
            return None
        mime = self._mime
        name, problem = encoding(mime, prefix, kind)
        if problem is not None:
            return problem
        xml = kind is Kind.XML or (mime is not None and mime.essence == "application/xhtml+xml")
        fixed = prefix.startswith(_BOMS) or header_decides(mime)
        self._rewriter = self._filter.rewriter(utf8=name == "UTF-8", xml=xml,
                                               meta_charset=not xml and not fixed)
        return None

    async def _settle(self, *, complete: bool, more: bool) -> None:
        """Type and charset from the bytes held; then pass the response, refuse it, or start
        rewriting (sending the start unless the whole body is already here)."""
        problem = self._judge(b"".join(self._held), complete)
        if problem is not None:
            await self._fail(problem)
            return
        if self._rewriter is None:
            await self._pass_held(more)
            return
        self._raw.clear()
        self._encoder = Encoder(self._codings)
        self._state = _STREAMING
        held, self._held = self._held, []
        # The bytes held are rewritten before the start goes out (their output waits in
        # _pending), so what they show wrong (a DOCTYPE the XML rewriter refuses, markup
        # lol-html cannot take) is refused, not aborted. The start goes out now unless the
        # app's last message is in hand: then _finish sends the whole page with its length.
        for piece in held:
            await self._rewrite(piece)
        if more:
            self._opened = True
            await self._send({**self._start, "headers": self._page_headers(None, self._kind)})
            pending, self._pending = b"".join(self._pending), []
            await self._emit(pending)

    async def _finish(self) -> None:
        if self._state == _HOLDING:
            await self._settle(complete=True, more=False)
            if self._state != _STREAMING:
                return
        rewriter, encoder = self._rewriter, self._encoder
        assert rewriter is not None and encoder is not None
        self._rewriter = None
        tail = rewriter.end()
        self._state = _DONE
        body = (encoder.feed(tail) if tail else b"") + encoder.finish()
        if not self._opened:
            parts = [*self._pending, body] if body else self._pending
            body = parts[0] if len(parts) == 1 else b"".join(parts)  # (one: no copy)
            self._pending = []
            self._opened = True
            await self._send({**self._start, "headers": self._page_headers(len(body), self._kind)})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _whole(self, body: bytes) -> None:
        """The whole page in one message, uncoded and under :data:`PIECE` bytes (a small page
        as ``Response`` sends it): the rules of the hold (:meth:`_judge`, the size limit, the
        failures) in one go, with no hold, decoder or encoder, and one send of the start with the
        page's length and one of the body."""
        try:
            if len(body) > self._limit:
                raise _TooLarge
            problem = self._judge(body, True)
            if problem is not None:
                await self._fail(problem)
                return
            rewriter = self._rewriter
            if rewriter is None:  # not a page after all: as it came
                self._raw = [body]
                await self._pass_held(False)
                return
            self._rewriter = None
            out = rewriter.whole(body)
            self._state = _DONE
            self._opened = True
            await self._send({**self._start, "headers": self._page_headers(len(out), self._kind)})
            await self._send({"type": "http.response.body", "body": out, "more_body": False})
        except BaseException as exc:
            await self._failed(exc)

    async def _pass_held(self, more: bool) -> None:
        """Not a page after all (an untyped body that does not sniff as markup): as it came."""
        headers = self._headers
        if self._zone_route:
            headers = self._cache.mark(headers, self._personal)
        if _NOSNIFF[0] not in (bytes(name).lower() for name, _ in headers):
            headers = [*headers, _NOSNIFF]
        self._state = _PASSING if more else _DONE
        raw, self._raw, self._held = b"".join(self._raw), [], []
        self._opened = True
        await self._send({**self._start, "headers": [*headers, *self._extra]})
        await self._send({"type": "http.response.body", "body": raw, "more_body": more})

    def _page_headers(self, length: int | None, kind: Kind | None) -> list[Header]:
        judged = _JUDGED_TYPES.get(kind) if self._untyped and kind is not None else None
        try:  # an app answers its pages with a handful of header sets: remembered, bounded
            key = (tuple(self._headers), judged, self._personal, self._cache)
            headers = _PAGE_HEADERS.get(key)
        except (TypeError, ValueError):  # unhashable (lists, bytearrays, some memoryviews)
            key, headers = None, None
        if headers is None:
            headers = self._made_page_headers(judged)
            size = None if key is None else _memo_size(self._headers)
            if key is not None and size is not None:
                _PAGE_HEADERS.put(key, headers, size)
        if length is not None:
            return [*headers, (b"content-length", b"%d" % length), *self._extra]
        return headers + self._extra

    def _made_page_headers(self, judged: bytes | None) -> list[Header]:
        """The page's headers but its length: the app's without what described its body (and,
        when it came untyped, with the type it was judged as), nosniff, made private."""
        dropped = _BODY_HEADERS if judged is None else _BODY_AND_TYPE_HEADERS
        headers: list[Header] = []
        nosniff = False
        for name, value in self._headers:  # one pass: what goes, and is nosniff there
            lower = bytes(name).lower()  # (a bytearray or memoryview name: as ASGI allows)
            if lower not in dropped:
                headers.append((name, value))
                nosniff = nosniff or lower == _NOSNIFF[0]
        if judged is not None:
            headers.append((b"content-type", judged))
        if not nosniff:
            headers.append(_NOSNIFF)
        return self._cache.mark(headers, self._personal)

    # -- failures --------------------------------------------------------------------------------

    async def _failed(self, exc: BaseException) -> None:
        """What a failure while reading or rewriting the body means: the on_unrewritable
        answer before the first byte, an abort after (:meth:`_trouble`); anything else (the
        send failed, the task was cancelled) ends the page and goes on up."""
        if isinstance(exc, CodingError):
            await self._trouble("coding", f"bad {', '.join(self._codings)} body: {exc}")
        elif isinstance(exc, RewriteError):
            await self._trouble("engine", f"the rewriter refused the page: {exc}")
        elif isinstance(exc, _TooLarge):
            await self._trouble("too_large", f"page larger than {self._limit} bytes")
        else:
            self._release()
            raise exc

    async def _trouble(self, reason: str, problem: str) -> None:
        if not self._opened:
            await self._fail(problem)
            return
        self._state = _ABORTED
        self._held, self._raw, self._pending = [], [], []
        self._release()
        ABORTS[reason] += 1
        logger.error("promotion rewriter: %s after the page started; aborting the response",
                     problem)
        raise RewriteAborted(problem)

    async def _fail(self, problem: str) -> None:
        logger.warning("promotion rewriter: %s; sending the on_unrewritable answer", problem)
        self._state = _REFUSED
        self._held, self._raw, self._pending = [], [], []
        self._release()
        await self._refuse(problem)

    def _release(self) -> None:
        """Drop the engine now, on the loop's thread (see ``PageRewriter``: lol-html's rewriter
        must not be freed by whoever later drops an exception that reaches this object)."""
        rewriter, self._rewriter = self._rewriter, None
        if rewriter is not None:
            rewriter.close()

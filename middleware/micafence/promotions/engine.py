"""The streaming rewriter: Cloudflare's lol-html (``python-lolhtml``) cutting promotions out.

lol-html tokenizes the page as a browser does (with the tree builder's feedback that decides
which text is markup: ``<style>`` and ``<textarea>`` content, foreign content, ``<template>``)
and, when a start tag matches, drops the element's bytes up to its end tag. Every other byte
goes out as it came: nothing is re-serialised, so the browser parses the rest of the page as it
would have parsed the original (no mutation XSS through a rebuilt tree, issue 19). The output of
a write comes back from that write, so a page streams; lol-html holds at most an unfinished tag.

What lol-html cannot decide alone (character references in attribute values, approvals,
incentives) is decided here, in Python, per matching start tag: see
:mod:`micafence.policy.selectors`.

Two places hold markup lol-html reads as something else, and get a nested rewriter of their
own: ``<noscript>`` content (text to lol-html, markup to a browser without JavaScript) and the
``srcdoc`` attribute of an ``<iframe>`` (a whole document, which the browser parses as one).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import lolhtml

from micafence.policy.selectors import decode_attribute
from micafence.promotions.charsets import meta_problem


class PromotionFilter(Protocol):
    """What the engine asks of :class:`micafence.promotions.filter.PromotionFilter` (which
    builds engines, so this module does not import it)."""

    @property
    def engine_plan(self) -> tuple[str | None, str | None]: ...

    def removes(self, tag: str, attributes: Mapping[str, str], html: bool = True) -> bool: ...


#: The namespace of HTML elements (lol-html's ``namespace_uri``; SVG and MathML have theirs).
_HTML_NAMESPACE = "http://www.w3.org/1999/xhtml"


class RewriteError(Exception):
    """lol-html refused the page (a parsing ambiguity it cannot resolve while streaming, say);
    the rewriter is unusable afterwards."""


class _Decide:
    """lol-html's element handler: remove the element if the filter says it goes."""

    __slots__ = ("page_filter", "removed")

    def __init__(self, page_filter: PromotionFilter) -> None:
        self.page_filter = page_filter
        self.removed = 0

    def element(self, element: lolhtml.Element) -> None:
        if element.removed:  # matched by an earlier selector of the same filter
            return
        attributes: dict[str, str] = {}
        for name, value in element.attributes:
            attributes.setdefault(name.lower(), decode_attribute(value))
        if self.page_filter.removes(element.tag_name, attributes,
                                    element.namespace_uri == _HTML_NAMESPACE):
            element.remove()
            self.removed += 1


class _Remove:
    """lol-html's element handler for selectors whose match is exact: the element goes."""

    __slots__ = ("removed",)

    def __init__(self) -> None:
        self.removed = 0

    def element(self, element: lolhtml.Element) -> None:
        element.remove()
        self.removed += 1


class _MetaCharset:
    """Every ``<meta>`` of a page whose encoding its own bytes may still change (no BOM, no
    charset in the ``Content-Type``): Blink obeys a ``<meta charset>`` anywhere in ``<head>``,
    past the bytes the rewriter held to settle the charset, and one naming an encoding whose
    markup bytes are not ASCII (ISO-2022-JP) makes the browser read markup that lol-html read
    otherwise. Such a ``<meta>`` (in ``<head>`` or not: a superset) fails the page. The value is
    judged as written and with its character references decoded (Blink's tokenizer decodes
    them, the prescan does not)."""

    __slots__ = ()

    def element(self, element: lolhtml.Element) -> None:
        raw: dict[str, str] = {}
        for name, value in element.attributes:
            raw.setdefault(name.lower(), value)
        decoded = {name: decode_attribute(value) for name, value in raw.items()}
        problem = meta_problem(raw) or meta_problem(decoded)
        if problem is not None:
            raise RewriteError(problem)


#: The most text one ``<noscript>`` may hold (it is held whole, see :class:`_NoScript`).
NOSCRIPT_LIMIT = 262_144


class _NoScript:
    """``<noscript>`` content: text to lol-html (as to a browser running scripts), markup to a
    browser with JavaScript off, which would show a promotion in it.

    The content is held (lol-html hands it over as text, in pieces), rewritten as markup by a
    nested rewriter when complete, and put back. Only on a UTF-8 page: lol-html re-encodes the
    text of an element with a text handler from its UTF-8 reading, which is the page's own text
    only when the page is UTF-8 (invalid bytes become U+FFFD, as the browser shows them).
    """

    __slots__ = ("depth", "held", "page_filter", "size")

    def __init__(self, page_filter: PromotionFilter, depth: int) -> None:
        self.page_filter = page_filter
        self.depth = depth
        self.held: list[str] = []
        self.size = 0

    def element(self, element: lolhtml.Element) -> None:
        self.held.clear()
        self.size = 0

    def text(self, chunk: lolhtml.TextChunk) -> None:
        text = chunk.text
        self.size += len(text)
        if self.size > NOSCRIPT_LIMIT:
            raise RewriteError(f"a <noscript> longer than {NOSCRIPT_LIMIT} characters")
        self.held.append(text)
        chunk.remove()
        if not chunk.last_in_text_node:
            return
        content = "".join(self.held)
        self.held.clear()
        self.size = 0
        nested = PageRewriter(self.page_filter, noscript=False, depth=self.depth)
        cleaned = nested.whole(content.encode("utf-8", "surrogatepass"))
        chunk.replace(cleaned.decode("utf-8", "surrogatepass") if nested.removed else content,
                      lolhtml.ContentType.HTML)


#: How deep ``srcdoc`` documents nest before the net stops reading them (see :class:`_SrcDoc`).
SRCDOC_DEPTH = 4
# What set_attribute needs escaped for the browser to read the value back exactly: lol-html
# writes it between double quotes and escapes '"' alone (as &quot;); '&' would start a character
# reference and a CR would become LF in the browser's input stream (NUL cannot occur: the value
# comes from decode_attribute, which makes it U+FFFD).
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", '"': "&quot;", "\r": "&#13;"})


def escape_attribute(value: str) -> str:
    """``value`` written so that an HTML attribute value in double quotes reads it back as is."""
    return value.translate(_ATTRIBUTE_ESCAPES)


class _SrcDoc:
    """``<iframe srcdoc="...">``: the attribute's value is a whole HTML document, which the
    browser parses and renders in the frame; lol-html sees one attribute value.

    The value is read as the DOM holds it (character references decoded), rewritten by a nested
    :class:`PageRewriter` (whose own ``<iframe srcdoc>`` get the same, up to
    :data:`SRCDOC_DEPTH` levels) and, when that removed anything, written back escaped so the
    browser reads exactly the rewritten document (:func:`escape_attribute`). Written back only
    where that round trip is exact: on a UTF-8 HTML page. On a page in another charset lol-html
    read the value through UTF-8 (non-ASCII bytes became U+FFFD), and in a page parsed as XML
    the attribute obeys XML's rules (``<`` is an error, whitespace is normalised); there the
    frame gets an empty document instead (``srcdoc=""``: no promotion and no script, and no
    fall-back to its ``src``). Past the depth limit every ``srcdoc`` is emptied, unread.
    """

    __slots__ = ("depth", "exact", "page_filter", "removed")

    def __init__(self, page_filter: PromotionFilter, *, exact: bool, depth: int) -> None:
        self.page_filter = page_filter
        self.exact = exact
        self.depth = depth
        self.removed = 0

    def element(self, element: lolhtml.Element) -> None:
        if element.removed:  # the iframe itself was a promotion
            return
        raw = element.get_attribute("srcdoc")
        if raw is None:
            return
        if self.depth >= SRCDOC_DEPTH:
            element.set_attribute("srcdoc", "")
            self.removed += 1
            return
        document = decode_attribute(raw)
        nested = PageRewriter(self.page_filter, depth=self.depth + 1)
        cleaned = nested.whole(document.encode("utf-8", "surrogatepass"))
        if not nested.removed:
            return
        self.removed += nested.removed
        value = escape_attribute(cleaned.decode("utf-8", "surrogatepass")) if self.exact else ""
        element.set_attribute("srcdoc", value)


#: What lol-html's stub says its sink is (spelt once: a subscript made per page costs).
_Sink = Callable[[Any], Any]


class _Nested:
    """``<noscript>`` (:class:`_NoScript`) and ``<iframe srcdoc>`` (:class:`_SrcDoc`) matched
    by one selector list (one matching pass), each element handed to its own handler, made when
    the first such element comes (most pages have none). Text reaches the handler only inside a
    ``<noscript>``: an ``<iframe>``'s content (raw text to the browser too) is left as it is,
    and nothing matches inside a ``<noscript>``, whose content lol-html reads as text."""

    __slots__ = ("depth", "exact", "in_noscript", "noscript", "page_filter", "srcdoc")

    def __init__(self, page_filter: PromotionFilter, *, exact: bool, depth: int) -> None:
        self.page_filter = page_filter
        self.exact = exact
        self.depth = depth
        self.noscript: _NoScript | None = None
        self.srcdoc: _SrcDoc | None = None
        self.in_noscript = False

    @property
    def removed(self) -> int:
        return 0 if self.srcdoc is None else self.srcdoc.removed

    def element(self, element: lolhtml.Element) -> None:
        self.in_noscript = element.tag_name.lower() == "noscript"
        if self.in_noscript:
            if self.noscript is None:
                self.noscript = _NoScript(self.page_filter, self.depth)
            self.noscript.element(element)
        else:
            if self.srcdoc is None:
                self.srcdoc = _SrcDoc(self.page_filter, exact=self.exact, depth=self.depth)
            self.srcdoc.element(element)

    def text(self, chunk: lolhtml.TextChunk) -> None:
        if self.in_noscript and self.noscript is not None:
            self.noscript.text(chunk)


class PageRewriter:
    """One response's rewriter: :meth:`write` each piece of the page, then :meth:`end`.

    Both return the bytes ready to send (maybe none). After a :class:`RewriteError` the
    rewriter refuses every call: lol-html must not be used after a fatal error. The lol-html
    rewriter is released as soon as the page is ended, fails or is closed (:meth:`close`): it is a
    PyO3 "unsendable" object, leaked (with an unraisable error) if freed on another thread than
    the one that made it, so nothing that outlives the response (an exception's traceback kept
    by an error reporter) may keep it alive. ``utf8``: the
    page is in UTF-8, so ``<noscript>`` content can be cleaned too (:class:`_NoScript`); on a
    page in another charset it passes as it came. ``xml``: the browser parses the page as XML
    (XHTML, SVG): ``srcdoc`` is not written back (:class:`_SrcDoc`). ``noscript``: clean
    ``<noscript>`` content (off for that content's own rewriter); ``depth``: how many ``srcdoc``
    documents this one is nested in. ``meta_charset``: the page's encoding was not fixed by a
    byte order mark or the ``Content-Type``, so a ``<meta>`` naming an encoding that is not
    ASCII-compatible fails it (:class:`_MetaCharset`).
    """

    __slots__ = ("_decide", "_loop", "_nested", "_out", "_remove", "_rewriter", "_thread")

    def __init__(self, page_filter: PromotionFilter, *, utf8: bool = True, xml: bool = False,
                 noscript: bool = True, depth: int = 0, meta_charset: bool = False) -> None:
        self._out: list[bytes] = []
        # lol-html hands the sink bytes (the stub is wider than the binding).
        rewriter = lolhtml.HTMLRewriter(cast(_Sink, self._out.append))
        # Each list in one call: lol-html matches a list in one pass, not one per selector.
        exact, checked = page_filter.engine_plan
        self._remove = _Remove()
        if exact is not None:
            rewriter.on(exact, self._remove)
        self._decide: _Decide | None = None
        if checked is not None:
            self._decide = _Decide(page_filter)
            rewriter.on(checked, self._decide)
        # <noscript> content is cleaned on a UTF-8 page only (see _NoScript).
        self._nested = _Nested(page_filter, exact=utf8 and not xml, depth=depth)
        rewriter.on("noscript, iframe[srcdoc]" if utf8 and noscript else "iframe[srcdoc]",
                    self._nested)
        if meta_charset:
            rewriter.on("meta", _MetaCharset())
        self._rewriter: lolhtml.HTMLRewriter | None = rewriter
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside an event loop (tests, benchmarks)
            self._loop = None

    @property
    def removed(self) -> int:
        """Elements removed so far (in ``srcdoc`` documents too; an emptied one counts)."""
        decided = 0 if self._decide is None else self._decide.removed
        return self._remove.removed + decided + self._nested.removed

    def write(self, chunk: bytes) -> bytes:
        """Rewrite the next piece of the page; the bytes that can go out now."""
        rewriter = self._rewriter
        if rewriter is None:
            raise RewriteError("the rewriter was ended or failed")
        try:
            rewriter.write(chunk)
        except RuntimeError as exc:
            problem = _problem(exc)
        else:
            return self._take()
        self.close()
        del rewriter
        raise RewriteError(problem)  # not chained: lol-html's error keeps nothing alive

    def end(self) -> bytes:
        """The page is complete: the last bytes."""
        return self.whole(b"")

    def whole(self, page: bytes) -> bytes:
        """The last piece of the page (or all of it) and its end, as one output (no joining of
        what :meth:`write` and :meth:`end` would each return)."""
        rewriter = self._rewriter
        if rewriter is None:
            raise RewriteError("the rewriter was ended or failed")
        self.close()
        try:
            if page:
                rewriter.write(page)
            rewriter.end()
        except RuntimeError as exc:
            problem = _problem(exc)
        else:
            return self._take()
        del rewriter
        raise RewriteError(problem)

    def close(self) -> None:
        """Release lol-html (the page is over, or abandoned); every later call is refused."""
        self._rewriter = None

    def __del__(self) -> None:
        # A page nobody ended (the app failed half way, and its exception, whose traceback
        # holds this rewriter, was logged and dropped by another thread): lol-html goes back to
        # the loop of the thread that made it, to be freed there.
        rewriter = getattr(self, "_rewriter", None)
        if rewriter is None or threading.get_ident() == self._thread:
            return
        loop, box = self._loop, [rewriter]
        self._rewriter = None
        del rewriter
        if loop is not None and not loop.is_closed():
            # The loop empties the box; whoever drops the box last drops an empty list.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(box.clear)

    def _take(self) -> bytes:
        return take(self._out)


def _problem(exc: RuntimeError) -> str:
    """lol-html's message, first line (a handler's own error keeps its message)."""
    return str(exc).split("\n", 1)[0].removeprefix("Content handler error: ").removeprefix(
        "RewriteError: ")


def rewrite(page_filter: PromotionFilter, page: bytes, *, utf8: bool = True,
            xml: bool = False, meta_charset: bool = False) -> bytes:
    """The whole of ``page`` rewritten (tests, benchmarks; the server streams)."""
    return PageRewriter(page_filter, utf8=utf8, xml=xml, meta_charset=meta_charset).whole(page)


def take(out: list[bytes]) -> bytes:
    """Everything a rewriter's sink collected since the last call (the list is emptied)."""
    if not out:
        return b""
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    return bytes(data)

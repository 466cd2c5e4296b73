"""The streaming rewriter for pages a browser parses as XML (XHTML, SVG, ``application/xml``).

lol-html tokenizes HTML; Chromium parses these documents with an XML parser, and the two read
the same bytes differently (issue 19, outside review): ``<xmp>`` and ``<plaintext/>`` are raw
text to HTML and ordinary elements to XML, an entity declared in the DOCTYPE can carry an
element no start tag spells, and an ``<?xml-stylesheet?>`` lets XSLT build the page. So XML
pages are read here by expat (the standard library's XML parser), fed as the page arrives.

Where expat reports a start tag the filter removes (the same
:meth:`~micafence.promotions.filter.PromotionFilter.removes` as for HTML, with the element's
local name, as CSS type selectors match in XML), the bytes from that tag's ``<`` to the end of
its matching end tag (or of the empty-element tag ``<div data-promo/>``) are dropped; every
other byte goes out as it came. expat gives the byte offset where each event begins
(``CurrentByteIndex``), so a token ends where the next event begins: bytes are sent up to the
latest event seen (never inside a removed element), and what is held is the token being read.

Refused (:class:`~micafence.promotions.engine.RewriteError`: the ``on_unrewritable`` answer
before the first byte, an abort after): a document that is not well-formed (Chromium shows an
error page with the content parsed so far, which we cannot vouch for); any ``xml-stylesheet``
processing instruction; and a DOCTYPE internal subset that can make markup or attributes no
byte spells: a parameter entity, an external parsed entity, a general entity whose replacement
text holds a ``<`` (character references in an entity value are expanded when it is declared,
so expat reports the text the browser will parse), or an attribute default. An internal subset
with text entities only (as illustration programs write into SVG icons) is read as usual.

``<iframe srcdoc>``: the value is an HTML document; when the HTML rewriter removes anything
from it, the frame gets an empty document instead (the attribute written back as ``""``: in
XML an attribute value obeys XML's rules, so the rewritten document could not be put back
exactly).

Attributes: a prefixed attribute (``x:data-promo``) is also read under its local name when no
unprefixed one has that name (CSS ``[data-promo]`` matches only the unprefixed one: a
superset); names are lower-cased (XML is case-sensitive: a superset again).
"""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat

from micafence.promotions.engine import (
    SRCDOC_DEPTH,
    PageRewriter,
    PromotionFilter,
    RewriteError,
    take,
)

_ATTRIBUTE = re.compile(rb"""([^\s=<>/"']+)\s*=\s*("[^"]*"|'[^']*')""")


class XmlRewriter:
    """One XML response's rewriter, with :class:`~micafence.promotions.engine.PageRewriter`'s
    interface: :meth:`write` each piece, then :meth:`end`; both return the bytes ready to send.

    ``utf8``: the page is in UTF-8, and expat reads it so (a byte sequence that is not UTF-8 is
    an error, as in the browser). Otherwise the page is in another ASCII-compatible encoding
    (:mod:`~micafence.promotions.charsets` let nothing else through) and expat reads it as
    ISO-8859-1, which tokenizes the ASCII bytes of markup the same way. ``depth``: how many
    ``srcdoc`` documents this one is nested in.
    """

    __slots__ = ("_base", "_buf", "_depth", "_filter", "_last", "_out", "_parser", "_pending",
                 "_removed", "_srcdoc_depth")

    def __init__(self, page_filter: PromotionFilter, *, utf8: bool = True,
                 depth: int = 0) -> None:
        self._filter = page_filter
        self._srcdoc_depth = depth
        self._buf = bytearray()  # input from _base on, not yet sent nor dropped
        self._base = 0
        self._last = 0  # the latest event's offset
        self._out: list[bytes] = []
        self._depth = 0  # elements open inside a removed one (itself included)
        self._pending: tuple[Any, ...] | None = None  # a token whose end is the next event
        self._removed = 0
        parser = expat.ParserCreate(encoding="UTF-8" if utf8 else "ISO-8859-1")
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        for name in ("CharacterDataHandler", "CommentHandler", "StartCdataSectionHandler",
                     "EndCdataSectionHandler", "DefaultHandlerExpand", "XmlDeclHandler",
                     "EndDoctypeDeclHandler", "SkippedEntityHandler", "NotationDeclHandler",
                     "UnparsedEntityDeclHandler", "ElementDeclHandler",
                     "StartNamespaceDeclHandler", "EndNamespaceDeclHandler"):
            setattr(parser, name, self._other)
        parser.ProcessingInstructionHandler = self._instruction
        parser.EntityDeclHandler = self._entity
        parser.AttlistDeclHandler = self._attlist
        parser.StartDoctypeDeclHandler = self._other
        self._parser: Any = parser

    @property
    def removed(self) -> int:
        """Elements removed so far (an emptied ``srcdoc`` counts)."""
        return self._removed

    def write(self, chunk: bytes) -> bytes:
        """Rewrite the next piece of the page; the bytes that can go out now."""
        self._parse(chunk, False)
        return self._take()

    def whole(self, page: bytes) -> bytes:
        """The whole page in one piece: :meth:`write` and :meth:`end` as one output."""
        self._parse(page, False)
        return self.end()

    def end(self) -> bytes:
        """The page is complete: the last bytes."""
        self._parse(b"", True)
        self._resolve(self._base + len(self._buf))
        self._send_to(self._base + len(self._buf))
        self.close()
        return self._take()

    def close(self) -> None:
        """Drop the parser (the page is over, or abandoned); every later call is refused."""
        self._parser = None

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self, chunk: bytes, final: bool) -> None:
        parser = self._parser
        if parser is None:
            raise RewriteError("the rewriter was ended or failed")
        self._buf += chunk
        try:
            parser.Parse(chunk, final)
        except expat.ExpatError as exc:
            problem = f"not well-formed XML ({exc})"
        except RewriteError as exc:
            problem = str(exc)
        else:
            return
        self.close()
        raise RewriteError(problem)

    def _take(self) -> bytes:
        return take(self._out)

    def _send_to(self, offset: int) -> None:
        count = offset - self._base
        if count > 0:
            self._out.append(bytes(self._buf[:count]))
            del self._buf[:count]
            self._base = offset

    def _drop_to(self, offset: int) -> None:
        count = offset - self._base
        if count > 0:
            del self._buf[:count]
            self._base = offset

    def _event(self) -> int:
        """Every handler starts here: the event's offset; what came before it is settled."""
        offset: int = max(self._parser.CurrentByteIndex, self._last)
        self._last = offset
        self._resolve(offset)
        if self._depth:
            self._drop_to(offset)  # inside a removed element: its bytes go as they are read
        else:
            self._send_to(offset)
        return offset

    def _resolve(self, offset: int) -> None:
        """The token whose end was awaited ends at ``offset``: drop or rewrite it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending[0] == "cut":  # the end tag of a removed element
            self._drop_to(offset)
            return
        _, start, value = pending  # an <iframe srcdoc> start tag, from start to offset
        tag = bytes(self._buf[start - self._base:offset - self._base])
        if self._srcdoc_removes(value):
            self._removed += 1
            self._drop_to(offset)
            self._out.append(_empty_srcdoc(tag))

    def _srcdoc_removes(self, document: str) -> bool:
        if self._srcdoc_depth >= SRCDOC_DEPTH:
            return True
        nested = PageRewriter(self._filter, depth=self._srcdoc_depth + 1)
        nested.write(document.encode("utf-8", "surrogatepass"))
        nested.end()
        return nested.removed > 0

    # -- handlers --------------------------------------------------------------------------------

    def _start(self, name: str, attributes: dict[str, str]) -> None:
        offset = self._event()
        if self._depth:
            self._depth += 1
            return
        read: dict[str, str] = {}
        prefixed: list[tuple[str, str]] = []
        for key, value in attributes.items():
            if ":" in key:
                prefixed.append((key.rpartition(":")[2].lower(), value))
            else:
                read.setdefault(key.lower(), value)
        for key, value in prefixed:
            read.setdefault(key, value)
        local = name.rpartition(":")[2].lower()
        if self._filter.removes(local, read):
            self._depth = 1
            self._removed += 1
        elif local == "iframe" and "srcdoc" in read:
            self._pending = ("srcdoc", offset, read["srcdoc"])

    def _end(self, name: str) -> None:
        self._event()
        if self._depth:
            self._depth -= 1
            if not self._depth:
                self._pending = ("cut",)

    def _other(self, *args: object) -> None:
        self._event()

    def _instruction(self, target: str, data: str) -> None:
        self._event()
        if target.lower() == "xml-stylesheet":
            raise RewriteError("an <?xml-stylesheet?> (XSLT can build elements no start tag "
                               "spells)")

    def _entity(self, name: str, parameter: bool, value: str | None, base: str | None,
                system: str | None, public: str | None, notation: str | None) -> None:
        self._event()
        if parameter:
            raise RewriteError(f"a parameter entity ({name!r}) in the DOCTYPE")
        if value is None and notation is None:
            raise RewriteError(f"an external entity ({name!r}) in the DOCTYPE")
        if value is not None and "<" in value:
            raise RewriteError(f"an entity ({name!r}) whose replacement text is markup")

    def _attlist(self, element: str, attribute: str, kind: str | None, default: str | None,
                 required: bool) -> None:
        self._event()
        if default is not None:
            raise RewriteError(f"a default for attribute {attribute!r} of {element!r} in the "
                               "DOCTYPE")


def _empty_srcdoc(tag: bytes) -> bytes:
    """``tag`` (a well-formed XML start tag) with every ``srcdoc`` attribute's value emptied."""
    def empty(match: re.Match[bytes]) -> bytes:
        if match.group(1).rpartition(b":")[2].lower() != b"srcdoc":
            return match.group(0)
        quote = match.group(2)[:1]
        return match.group(0)[:match.start(2) - match.start(0)] + quote + quote

    return _ATTRIBUTE.sub(empty, tag)

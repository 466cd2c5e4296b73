"""What a response is, as a browser decides it: its MIME type and, when it has none, a sniff.

The safety net must judge every response a browser could render as HTML (or XML), not only the
ones that say ``text/html`` plainly. So the ``Content-Type`` is read as the standards read it:

* :func:`extract` is Fetch's "extract a MIME type" over every ``Content-Type`` line (combined,
  then split on commas outside quoted strings), with WHATWG MIME Sniffing's "parse a MIME type"
  for each value. ``text/plain, text/html`` is therefore ``text/html``, as browsers render it.
* :func:`kind_of` sorts the result into what the safety net does with it.
* :func:`sniff` is MIME Sniffing's "rules for identifying an unknown MIME type" for an untyped
  body, widened to catch what Chromium renders as HTML too.
* :func:`may_be_page` is the hot-path filter run on every response start.

Deviations from Fetch, each to be a superset of what Chromium renders as HTML
(Chromium's ``net::HttpUtil::ParseContentType`` and ``net::SniffMimeType`` differ from the
standards; when the two readings disagree, the one that renders more is taken):

1. Chromium ends the type at the first space, tab, ``;`` or ``(`` and does not check token
   characters: ``text/html foo`` and ``text/html(comment)`` are HTML in Chromium but parse
   failures in Fetch; ``text /html`` is the type ``text`` in Chromium, which has no ``/`` and is
   therefore sniffed, like Fetch's failure. :func:`extract` reads each value both ways and, when
   the resulting kinds differ, keeps the higher of HTML > untyped (may sniff as HTML) > XML >
   other. So ``text/plain, text/html foo`` is HTML and ``text/plain, text /html`` is untyped.
   (A reading that is XML in one and untyped in the other becomes untyped: Chromium's sniff
   wins over Firefox's XML there.)
2. When both readings agree on the kind but name different charsets (Chromium takes the first
   ``charset`` parameter whatever its characters, Fetch the first valid one), the result keeps
   Fetch's parameters and records Chromium's charset in :attr:`MimeType.other_charsets`, which
   :mod:`~micafence.promotions.charsets` checks as well.
3. :func:`kind_of` also counts ``text/xsl`` as XML (Blink renders it as XML) and
   ``multipart/x-mixed-replace`` as HTML: Chromium renders the parts of such a stream by their
   own types, so its bytes may hold a rendered HTML page.
4. :func:`sniff` matches the HTML tag patterns as Chromium does: a prefix match with no
   terminating byte required (``<bx`` matches ``<b``), after skipping leading whitespace that
   includes ``\\x0b`` (Chromium's ``IsAsciiWhitespace``; the standard does not skip it), over the
   standard's 1445-byte window (Chromium looks at 512 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from micafence.caches import BoundedCache

__all__ = [
    "SNIFF_BYTES",
    "Kind",
    "MimeType",
    "extract",
    "kind_of",
    "may_be_page",
    "parse",
    "sniff",
]

#: MIME Sniffing's resource header: the bytes the unknown-type rules look at.
SNIFF_BYTES = 1445

_CONTENT_TYPE = b"content-type"
_HTTP_WHITESPACE = "\t\n\r "
_HTTP_TAB_OR_SPACE = "\t "
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# HTTP quoted-string token code points: tab, 0x20-0x7E, 0x80-0xFF.
_QUOTED_TOKEN = frozenset(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))])
# Chromium's HTTP_LWS (tab, space); its type ends at one of these, ';' or '('.
_CHROMIUM_LWS = " \t"


@dataclass(frozen=True, slots=True)
class MimeType:
    """A parsed MIME type: ``essence`` lower case, parameter names lower case, values as given."""

    essence: str
    params: tuple[tuple[str, str], ...] = ()
    #: Charset labels another browser reads from the same header (see the module docstring, 2).
    other_charsets: tuple[str, ...] = ()
    # The hash, made once: a page's MimeType keys the charset memos several times per page.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.essence, self.params, self.other_charsets)))

    def __hash__(self) -> int:
        return self._hash

    def param(self, name: str) -> str | None:
        """The first parameter called ``name`` (lower case), or ``None``."""
        for key, value in self.params:
            if key == name:
                return value
        return None


class Kind(Enum):
    """What the safety net does with a response."""

    HTML = "html"  # rewritten
    XML = "xml"  # passed unless the selector's attribute appears in it
    OTHER = "other"  # passed: browsers do not render it as a page
    UNTYPED = "untyped"  # no usable type: the browser sniffs the body (see sniff)


# --- MIME Sniffing: parse a MIME type ------------------------------------------------------


def _quoted_string(text: str, position: int, extract_value: bool) -> tuple[str, int]:
    """Fetch's "collect an HTTP quoted string" from ``text[position] == '"'``: (string, end)."""
    start = position
    position += 1
    value: list[str] = []
    end = len(text)
    while True:
        stop = position
        while stop < end and text[stop] not in '"\\':
            stop += 1
        value.append(text[position:stop])
        position = stop
        if position >= end:
            break
        quote_or_backslash = text[position]
        position += 1
        if quote_or_backslash == "\\":
            if position >= end:
                value.append("\\")
                break
            value.append(text[position])
            position += 1
        else:
            break
    if extract_value:
        return "".join(value), position
    return text[start:position], position


def parse(text: str) -> MimeType | None:
    """MIME Sniffing's "parse a MIME type" (``text`` is the isomorphic decoding); None = failure."""
    text = text.strip(_HTTP_WHITESPACE)
    slash = text.find("/")
    if slash <= 0:
        return None
    kind = text[:slash]
    if not _TOKEN.issuperset(kind):
        return None
    semicolon = text.find(";", slash + 1)
    end = len(text)
    if semicolon < 0:
        semicolon = end
    subtype = text[slash + 1 : semicolon].rstrip(_HTTP_WHITESPACE)
    if not subtype or not _TOKEN.issuperset(subtype):
        return None
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    position = semicolon
    while position < end:
        position += 1  # the ';'
        while position < end and text[position] in _HTTP_WHITESPACE:
            position += 1
        stop = position
        while stop < end and text[stop] not in ";=":
            stop += 1
        name = text[position:stop].lower()
        position = stop
        if position < end:
            if text[position] == ";":
                continue
            position += 1  # the '='
        if position >= end:
            break
        if text[position] == '"':
            value, position = _quoted_string(text, position, True)
            stop = text.find(";", position)
            position = end if stop < 0 else stop
        else:
            stop = text.find(";", position)
            stop = end if stop < 0 else stop
            value = text[position:stop].rstrip(_HTTP_WHITESPACE)
            position = stop
            if not value:
                continue
        if (
            name
            and name not in seen
            and _TOKEN.issuperset(name)
            and _QUOTED_TOKEN.issuperset(value)
        ):
            seen.add(name)
            params.append((name, value))
    return MimeType(f"{kind}/{subtype}".lower(), tuple(params))


# --- Fetch: get, decode, and split; extract a MIME type ------------------------------------


def _split(text: str) -> list[str]:
    """Fetch's "get, decode, and split" on an already combined, decoded value."""
    values: list[str] = []
    position = 0
    end = len(text)
    pending: list[str] = []
    while True:
        stop = position
        while stop < end and text[stop] not in '",':
            stop += 1
        pending.append(text[position:stop])
        position = stop
        if position < end and text[position] == '"':
            quoted, position = _quoted_string(text, position, False)
            pending.append(quoted)
            if position < end:
                continue
        values.append("".join(pending).strip(_HTTP_TAB_OR_SPACE))
        pending = []
        if position >= end:
            return values
        position += 1  # the ','


def _fetch_extract(values: list[str]) -> MimeType | None:
    charset: str | None = None
    essence: str | None = None
    result: MimeType | None = None
    for value in values:
        parsed = parse(value)
        if parsed is None or parsed.essence == "*/*":
            continue
        if parsed.essence != essence:
            charset = parsed.param("charset")
            essence = parsed.essence
        elif charset is not None and parsed.param("charset") is None:
            parsed = MimeType(parsed.essence, (*parsed.params, ("charset", charset)))
        result = parsed
    return result


def _chromium_one(text: str) -> tuple[str, str | None] | None:
    """Chromium's ParseContentType on one value: (type, charset), or None when it is ignored.

    The type may come out empty (``;a=/``): Chromium then stores no type and sniffs.
    """
    start = 0
    end = len(text)
    while start < end and text[start] in _CHROMIUM_LWS:
        start += 1
    type_end = start
    while type_end < end and text[type_end] not in " \t;(":
        type_end += 1
    charset: str | None = None
    position = text.find(";", type_end)
    position = end if position < 0 else position
    while position < end:
        position += 1
        while position < end and text[position] in _CHROMIUM_LWS:
            position += 1
        name_start = position
        while position < end and text[position] not in ";=":
            position += 1
        if position >= end or text[position] == ";":
            continue
        name = text[name_start:position]
        position += 1
        while position < end and text[position] in _CHROMIUM_LWS:
            position += 1
        if position >= end or text[position] == ";":
            continue
        if text[position] != '"':
            stop = text.find(";", position)
            stop = end if stop < 0 else stop
            value = text[position:stop].rstrip(_CHROMIUM_LWS)
            position = stop
        else:
            position += 1
            chars: list[str] = []
            while position < end and text[position] != '"':
                if text[position] == "\\" and position + 1 < end:
                    position += 1
                chars.append(text[position])
                position += 1
            value = "".join(chars)
            stop = text.find(";", position)
            position = end if stop < 0 else stop
        if charset is None and name.lower() == "charset":
            charset = value.lower()
    if not text or text == "*/*" or "/" not in text:
        return None
    return text[start:type_end].lower(), charset


def _chromium_extract(values: list[str]) -> MimeType | None:
    """Chromium's reading of the same values (net::HttpResponseHeaders::GetMimeTypeAndCharset)."""
    mime_type = ""
    charset: str | None = None
    for value in values:
        parsed = _chromium_one(value)
        if parsed is None:
            continue
        kind, value_charset = parsed
        if not mime_type or kind != mime_type:
            mime_type = kind
            charset = value_charset
        elif value_charset is not None:
            charset = value_charset
    if not mime_type:
        return None
    params = (("charset", charset),) if charset is not None else ()
    return MimeType(mime_type, params)


_RANK = {"html": 3, "untyped": 2, "xml": 1, "other": 0}


def extract(headers: Iterable[tuple[bytes, bytes]]) -> MimeType | None:
    """Fetch's "extract a MIME type" over every ``Content-Type`` line; ``None`` = failure.

    Header names match case-insensitively; all lines are combined with ``", "`` and split on
    commas outside quoted strings, each value parsed; the last valid one that is not ``*/*``
    wins, keeping an earlier charset when the essence repeats without one. Where Chromium reads
    the header as a type that renders more (module docstring, 1 and 2), its reading is taken.
    Never raises: every byte is a Latin-1 character.

    Ask :func:`kind_of` what the result is: ``None`` is untyped, but so are the unknown types
    browsers sniff (``unknown/unknown``, and Chromium's slash-less ``text`` from ``text /html``,
    which is returned so that its charset still counts).
    """
    lines = [
        value
        for name, value in headers
        if name == _CONTENT_TYPE or (len(name) == 12 and name.lower() == _CONTENT_TYPE)
    ]
    if not lines:
        return None
    joined = b", ".join(lines)
    # A function of the joined value alone: remembered per value (a MimeType is immutable).
    held = _EXTRACTED.get(joined)
    if held is not None:
        return held[0]
    found = _extract(_split(joined.decode("latin-1")))
    if len(joined) <= _ONE_LINE_BYTES:
        _EXTRACTED.put(joined, (found,))
    return found


def _extract(values: list[str]) -> MimeType | None:
    fetch = _fetch_extract(values)
    chromium = _chromium_extract(values)
    fetch_kind = kind_of(fetch)
    chromium_kind = kind_of(chromium)
    if fetch_kind is not chromium_kind:
        if _RANK[chromium_kind.value] > _RANK[fetch_kind.value]:
            return chromium
        return fetch
    if fetch is None or chromium is None:
        return fetch
    theirs = chromium.param("charset")
    if theirs is not None and theirs != (fetch.param("charset") or "").lower():
        return MimeType(fetch.essence, fetch.params, (theirs,))
    return fetch


# --- kinds ----------------------------------------------------------------------------------

_HTML = frozenset({"text/html", "application/xhtml+xml", "multipart/x-mixed-replace"})
_XML = frozenset({"text/xml", "application/xml", "text/xsl"})
_UNKNOWN = frozenset({"unknown/unknown", "application/unknown", "*/*"})


def kind_of(mime: MimeType | None) -> Kind:
    """HTML, XML, OTHER, or UNTYPED (no type, or one browsers treat as unknown and sniff)."""
    if mime is None:
        return Kind.UNTYPED
    essence = mime.essence
    if essence in _HTML:
        return Kind.HTML
    if essence in _XML or essence.endswith("+xml"):
        return Kind.XML
    if essence in _UNKNOWN or "/" not in essence:
        return Kind.UNTYPED
    return Kind.OTHER


# --- sniffing -------------------------------------------------------------------------------

# Chromium's base::IsAsciiWhitespace: the standard's whitespace bytes plus \x0b.
_SNIFF_WHITESPACE = b"\t\n\x0b\x0c\r "
# MIME Sniffing's HTML patterns (and Chromium's kSniffableTags), upper case, without the '<'.
_HTML_TAGS = (
    b"!DOCTYPE HTML", b"HTML", b"HEAD", b"SCRIPT", b"IFRAME", b"H1", b"DIV", b"FONT", b"TABLE",
    b"A", b"STYLE", b"TITLE", b"B", b"BODY", b"BR", b"P", b"!--",
)
_LONGEST = max(len(tag) for tag in _HTML_TAGS) + 1


def sniff(prefix: bytes, complete: bool) -> Kind:
    """The kind a browser gives an untyped body starting with ``prefix``: HTML, XML or OTHER.

    MIME Sniffing's unknown-type rules (sniff-scriptable) widened to Chromium's (module
    docstring, 4): HTML when, after leading whitespace, the body starts with ``<`` and one of the
    HTML tag names; XML for ``<?xml``; anything else renders as text or is not rendered.
    ``complete`` says the body ends within ``prefix``. An incomplete prefix shorter than
    :data:`SNIFF_BYTES` that could still become HTML with more bytes is answered HTML.
    """
    head = prefix[:SNIFF_BYTES]
    rest = head.lstrip(_SNIFF_WHITESPACE)
    if not rest:
        return Kind.OTHER if complete or len(head) >= SNIFF_BYTES else Kind.HTML
    if rest[:1] != b"<":
        return Kind.OTHER
    upper = rest[1:_LONGEST].upper()
    for tag in _HTML_TAGS:
        if upper.startswith(tag):
            return Kind.HTML
    if upper.startswith(b"?XML"):
        return Kind.XML
    if not complete and len(head) < SNIFF_BYTES and len(upper) < _LONGEST - 1:
        # More bytes could still make a tag (``<ht`` -> ``<html``, ``<?x`` -> ``<?xml``).
        for tag in (*_HTML_TAGS, b"?XML"):
            if tag.startswith(upper):
                return Kind.HTML
    return Kind.OTHER


# --- the hot path ---------------------------------------------------------------------------

_NOT_PAGES = frozenset({
    b"application/json", b"application/javascript", b"text/javascript", b"text/css",
    b"text/plain", b"image/png", b"image/jpeg", b"image/gif", b"image/webp", b"image/avif",
    b"image/x-icon", b"application/octet-stream", b"font/woff2", b"font/woff",
    b"application/wasm", b"text/event-stream", b"application/pdf", b"text/csv",
})
_PAGES = frozenset({b"text/html", b"application/xhtml+xml", b"image/svg+xml", b"application/xml"})
# Bytes after the type that could make Chromium or Fetch read another value (``,`` ``"``
# ``(``): :func:`extract` reads those.
# A response's one Content-Type value -> may it be a page: an app sends a handful of values.
# Bounded (entries and value length): the values are the app's, but a ceiling costs nothing.
_ONE_LINE: BoundedCache[bytes, bool] = BoundedCache(256)
_ONE_LINE_BYTES = 256
#: extract()'s answers per joined Content-Type value (as bounded as _ONE_LINE), each in a
#: 1-tuple (``None``, untyped, is an answer too).
_EXTRACTED: BoundedCache[bytes, tuple[MimeType | None]] = BoundedCache(256)


def may_be_page(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """False only when the response certainly is not HTML, XML or untyped. Never raises.

    The common case (one ``Content-Type`` line whose type is a plain lower-case one from a small
    table, such as ``application/json; charset=utf-8``) is answered without parsing; anything
    else (several lines, commas, quotes, odd spacing or case) goes through :func:`extract`.
    """
    try:
        lines = headers if isinstance(headers, list) else list(headers)
        found: bytes | None = None
        count = 0
        for name, value in lines:
            if name == _CONTENT_TYPE or (len(name) == 12 and name.lower() == _CONTENT_TYPE):
                found = value
                count += 1
        if count == 0:
            return True
        if count == 1 and found is not None:
            if type(found) is not bytes:  # not as ASGI gives them: not memoised
                return _one_line(found, lines)
            known = _ONE_LINE.get(found)
            if known is not None:
                return known
            verdict = _one_line(found, lines)
            if len(found) <= _ONE_LINE_BYTES:
                _ONE_LINE.put(found, verdict)
            return verdict
        return kind_of(extract(lines)) is not Kind.OTHER
    except Exception:  # headers not as ASGI gives them: judge the response rather than crash
        return True


def _one_line(value: bytes, lines: list[tuple[bytes, bytes]]) -> bool:
    """:func:`may_be_page` of a response with one ``Content-Type`` line, ``value``: a
    function of that value alone, so it is memoised per value."""
    try:
        essence, _, rest = value.partition(b";")
        if b"," not in rest and b'"' not in rest and b"(" not in rest:
            if essence in _NOT_PAGES:
                return False
            if essence in _PAGES:
                return True
        return kind_of(extract(lines)) is not Kind.OTHER
    except Exception:  # headers not as ASGI gives them: judge the response rather than crash
        return True

"""Will the browser decode a page so that its markup bytes are ASCII? If not, say why.

The promotion rewriter tokenizes bytes as ASCII/UTF-8. That finds the same tags and attribute
names as the browser only when the browser decodes the page in an encoding where every byte
below 0x80 that is markup (``<``, ``>``, ``/``, ``=``, quotes, whitespace, and ASCII letters at
token boundaries) is the same ASCII character. :func:`encoding_problem` follows the browser's
choice of encoding and answers ``None`` when that holds, or a short reason when it does not;
:func:`encoding` gives that answer and the encoding's name together.

The browser's choice, in order (HTML Standard "encoding sniffing algorithm", Blink's
``TextResourceDecoder``):

1. A byte order mark: UTF-8 is fine; UTF-16LE/BE is not ASCII-compatible.
2. The ``charset`` parameter of the parsed Content-Type (:mod:`~micafence.promotions.mime`),
   through the WHATWG Encoding label table (:data:`LABELS`). A label browsers do not know is
   ignored, as they ignore it.
3. HTML: the meta prescan of the first 1024 bytes (:func:`prescan`): comments skipped,
   ``<meta charset>`` and ``<meta http-equiv=content-type content="...charset=...">``; UTF-16
   there means UTF-8 and x-user-defined means windows-1252; if no meta, an XML declaration at
   byte 0 (Blink reads it in HTML too; the standard's prescan adopted it). XML (and XHTML, which
   Blink decodes as XML): the XML declaration's ``encoding`` (UTF-16 there means UTF-8), and
   ``<\\0?\\0x\\0`` / ``\\0<\\0?\\0x`` as UTF-16 without a BOM.
4. Undeclared: windows-1252 for HTML (the default of most locales), UTF-8 for XML. Chromium
   then runs an encoding detector over the bytes, which may choose ISO-2022-JP (escape
   sequences, ESC = 0x1B) or UTF-16 (NUL bytes): a prefix holding either is a problem.

Superset rules, where a browser may read more than the standard says: Blink keeps looking for
a ``<meta>`` past 1024 bytes while it is still in ``<head>``, and its tokenizer sees comments
and raw text otherwise than the prescan, so when the first 1024 bytes declare nothing every
``<meta`` in the prefix given (up to :data:`EXTENDED_PRESCAN` bytes) is read on its own and a
problem encoding named there counts. A meta beyond the prefix given is not seen. The ESC/NUL
test of an undeclared page applies whatever those late metas say. When Chromium
reads another charset from the header than Fetch does (``MimeType.other_charsets``), that
encoding is checked as well.

Which encodings are fine:

* UTF-8, and every single-byte encoding of the WHATWG table (IBM866, ISO-8859-x, KOI8,
  macintosh, windows-874/125x, x-mac-cyrillic, x-user-defined): bytes 0x00-0x7F are ASCII.
* The multi-byte CJK encodings: their lead bytes are all >= 0x81 and their trail bytes never
  fall in 0x00-0x3F, where every markup delimiter lives (``"`` 0x22, ``'`` 0x27, ``/`` 0x2F,
  ``<`` 0x3C, ``=`` 0x3D, ``>`` 0x3E, whitespace 0x09-0x0D and 0x20). Shift_JIS trail bytes are
  0x40-0x7E and 0x80-0xFC; GBK 0x40-0x7E and 0x80-0xFE; gb18030 the same, its four-byte
  sequences using 0x30-0x39 (digits) in second and fourth place; Big5 0x40-0x7E and 0xA1-0xFE;
  EUC-KR 0x41-0xFE; EUC-JP 0xA1-0xFE. A trail letter or digit follows a lead byte >= 0x81, so it
  sits inside a token that is non-ASCII in both readings: a delimiter is never swallowed, token
  boundaries fall in the same places, and a token made only of ASCII bytes reads the same. An
  invalid pair puts its ASCII byte back in the stream (WHATWG decoders "prepend" it).
* ``replacement`` (ISO-2022-KR, ISO-2022-CN, HZ): the page renders as one U+FFFD, nothing else.

Problems: UTF-16BE/LE (two bytes a character) and ISO-2022-JP (after ``ESC $ B`` byte pairs in
0x21-0x7E are one character, ``<`` among them).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from functools import lru_cache

from micafence.promotions.mime import Kind, MimeType

__all__ = [
    "EXTENDED_PRESCAN",
    "LABELS",
    "HeadWatch",
    "encoding",
    "encoding_name",
    "encoding_problem",
    "get_encoding",
    "header_decides",
    "meta_problem",
    "prescan",
    "xml_encoding",
]

#: How far into the prefix the superset prescan looks when the first 1024 bytes declare nothing.
EXTENDED_PRESCAN = 64 * 1024
_PRESCAN = 1024

# The WHATWG Encoding Standard's labels (https://encoding.spec.whatwg.org/#names-and-labels).
_TABLE: dict[str, tuple[str, ...]] = {
    "UTF-8": (
        "unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "utf-8", "utf8",
        "x-unicode20utf8",
    ),
    "IBM866": ("866", "cp866", "csibm866", "ibm866"),
    "ISO-8859-2": (
        "csisolatin2", "iso-8859-2", "iso-ir-101", "iso8859-2", "iso88592", "iso_8859-2",
        "iso_8859-2:1987", "l2", "latin2",
    ),
    "ISO-8859-3": (
        "csisolatin3", "iso-8859-3", "iso-ir-109", "iso8859-3", "iso88593", "iso_8859-3",
        "iso_8859-3:1988", "l3", "latin3",
    ),
    "ISO-8859-4": (
        "csisolatin4", "iso-8859-4", "iso-ir-110", "iso8859-4", "iso88594", "iso_8859-4",
        "iso_8859-4:1988", "l4", "latin4",
    ),
    "ISO-8859-5": (
        "csisolatincyrillic", "cyrillic", "iso-8859-5", "iso-ir-144", "iso8859-5", "iso88595",
        "iso_8859-5", "iso_8859-5:1988",
    ),
    "ISO-8859-6": (
        "arabic", "asmo-708", "csiso88596e", "csiso88596i", "csisolatinarabic", "ecma-114",
        "iso-8859-6", "iso-8859-6-e", "iso-8859-6-i", "iso-ir-127", "iso8859-6", "iso88596",
        "iso_8859-6", "iso_8859-6:1987",
    ),
    "ISO-8859-7": (
        "csisolatingreek", "ecma-118", "elot_928", "greek", "greek8", "iso-8859-7",
        "iso-ir-126", "iso8859-7", "iso88597", "iso_8859-7", "iso_8859-7:1987", "sun_eu_greek",
    ),
    "ISO-8859-8": (
        "csiso88598e", "csisolatinhebrew", "hebrew", "iso-8859-8", "iso-8859-8-e", "iso-ir-138",
        "iso8859-8", "iso88598", "iso_8859-8", "iso_8859-8:1988", "visual",
    ),
    "ISO-8859-8-I": ("csiso88598i", "iso-8859-8-i", "logical"),
    "ISO-8859-10": (
        "csisolatin6", "iso-8859-10", "iso-ir-157", "iso8859-10", "iso885910", "l6", "latin6",
    ),
    "ISO-8859-13": ("iso-8859-13", "iso8859-13", "iso885913"),
    "ISO-8859-14": ("iso-8859-14", "iso8859-14", "iso885914"),
    "ISO-8859-15": (
        "csisolatin9", "iso-8859-15", "iso8859-15", "iso885915", "iso_8859-15", "l9",
    ),
    "ISO-8859-16": ("iso-8859-16",),
    "KOI8-R": ("cskoi8r", "koi", "koi8", "koi8-r", "koi8_r"),
    "KOI8-U": ("koi8-ru", "koi8-u"),
    "macintosh": ("csmacintosh", "mac", "macintosh", "x-mac-roman"),
    "windows-874": (
        "dos-874", "iso-8859-11", "iso8859-11", "iso885911", "tis-620", "windows-874",
    ),
    "windows-1250": ("cp1250", "windows-1250", "x-cp1250"),
    "windows-1251": ("cp1251", "windows-1251", "x-cp1251"),
    "windows-1252": (
        "ansi_x3.4-1968", "ascii", "cp1252", "cp819", "csisolatin1", "ibm819", "iso-8859-1",
        "iso-ir-100", "iso8859-1", "iso88591", "iso_8859-1", "iso_8859-1:1987", "l1", "latin1",
        "us-ascii", "windows-1252", "x-cp1252",
    ),
    "windows-1253": ("cp1253", "windows-1253", "x-cp1253"),
    "windows-1254": (
        "cp1254", "csisolatin5", "iso-8859-9", "iso-ir-148", "iso8859-9", "iso88599",
        "iso_8859-9", "iso_8859-9:1989", "l5", "latin5", "windows-1254", "x-cp1254",
    ),
    "windows-1255": ("cp1255", "windows-1255", "x-cp1255"),
    "windows-1256": ("cp1256", "windows-1256", "x-cp1256"),
    "windows-1257": ("cp1257", "windows-1257", "x-cp1257"),
    "windows-1258": ("cp1258", "windows-1258", "x-cp1258"),
    "x-mac-cyrillic": ("x-mac-cyrillic", "x-mac-ukrainian"),
    "GBK": (
        "chinese", "csgb2312", "csiso58gb231280", "gb2312", "gb_2312", "gb_2312-80", "gbk",
        "iso-ir-58", "x-gbk",
    ),
    "gb18030": ("gb18030",),
    "Big5": ("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5"),
    "EUC-JP": ("cseucpkdfmtjapanese", "euc-jp", "x-euc-jp"),
    "ISO-2022-JP": ("csiso2022jp", "iso-2022-jp"),
    "Shift_JIS": (
        "csshiftjis", "ms932", "ms_kanji", "shift-jis", "shift_jis", "sjis", "windows-31j",
        "x-sjis",
    ),
    "EUC-KR": (
        "cseuckr", "csksc56011987", "euc-kr", "iso-ir-149", "korean", "ks_c_5601-1987",
        "ks_c_5601-1989", "ksc5601", "ksc_5601", "windows-949",
    ),
    "replacement": (
        "csiso2022kr", "hz-gb-2312", "iso-2022-cn", "iso-2022-cn-ext", "iso-2022-kr",
        "replacement",
    ),
    "UTF-16BE": ("unicodefffe", "utf-16be"),
    "UTF-16LE": (
        "csunicode", "iso-10646-ucs-2", "ucs-2", "unicode", "unicodefeff", "utf-16", "utf-16le",
    ),
    "x-user-defined": ("x-user-defined",),
}

#: Label (lower case) -> the encoding's WHATWG name.
LABELS: dict[str, str] = {label: name for name, labels in _TABLE.items() for label in labels}

_UTF16 = frozenset({"UTF-16BE", "UTF-16LE"})
_NOT_ASCII_COMPATIBLE = {
    "UTF-16BE": "two bytes a character",
    "UTF-16LE": "two bytes a character",
    "ISO-2022-JP": "after ESC $ B, pairs of ASCII bytes such as '<' are one character",
}
_ASCII_WHITESPACE = "\t\n\x0c\r "
_SPACE_BYTES = b"\t\n\x0c\r "


def get_encoding(label: str) -> str | None:
    """The Encoding Standard's "get an encoding": the name for ``label``, None if unknown."""
    return LABELS.get(label.strip(_ASCII_WHITESPACE).lower())


# --- the meta prescan (HTML Standard, "prescan a byte stream to determine its encoding") ---


class _OutOfBytes(Exception):
    """The prescan ran past the bytes it was given: it ends there, declaring nothing more."""


_SKIP_BEFORE_NAME = re.compile(rb"[\t\n\x0c\r /]*")
_SKIP_SPACE = re.compile(rb"[\t\n\x0c\r ]*")
_NAME_REST = re.compile(rb"[^\t\n\x0c\r />=]*")
_UNQUOTED = re.compile(rb"[^\t\n\x0c\r >]*")


def _skip(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    match = pattern.match(data, pos)
    return match.end() if match is not None else pos


def _attribute(data: bytes, pos: int) -> tuple[bytes, bytes, int] | None:
    """HTML's "get an attribute" from ``pos``: (name, value, position), None at a '>'.

    Running out of bytes raises :class:`_OutOfBytes`: an unfinished attribute is not read.
    Names and values come out ASCII-lower-cased, as the standard appends them.
    """
    end = len(data)
    pos = _skip(_SKIP_BEFORE_NAME, data, pos)
    if pos >= end:
        raise _OutOfBytes
    if data[pos] == 0x3E:
        return None
    # The first byte is part of the name even when it is '='; then up to '=', space, '/', '>'.
    stop = _skip(_NAME_REST, data, pos + 1)
    name = data[pos:stop].lower()
    pos = stop
    if pos >= end:
        raise _OutOfBytes
    if data[pos] in b"/>":
        return name, b"", pos
    if data[pos] != 0x3D:  # spaces, then '=' or the end of the attribute
        pos = _skip(_SKIP_SPACE, data, pos)
        if pos >= end:
            raise _OutOfBytes
        if data[pos] != 0x3D:
            return name, b"", pos
    pos = _skip(_SKIP_SPACE, data, pos + 1)
    if pos >= end:
        raise _OutOfBytes
    quote = data[pos]
    if quote in b"\"'":
        close = data.find(bytes((quote,)), pos + 1)
        if close < 0:
            raise _OutOfBytes
        return name, data[pos + 1 : close].lower(), close + 1
    if quote == 0x3E:
        return name, b"", pos
    stop = _skip(_UNQUOTED, data, pos)
    if stop >= end:
        raise _OutOfBytes
    return name, data[pos:stop].lower(), stop


def _charset_from_content(value: str) -> str | None:
    """HTML's "extracting a character encoding from a meta element" (``content``): name or None."""
    lower = value.lower()
    pos = 0
    end = len(value)
    for _ in range(end + 1):  # each round moves past one "charset"
        found = lower.find("charset", pos)
        if found < 0:
            return None
        pos = found + 7
        while pos < end and value[pos] in _ASCII_WHITESPACE:
            pos += 1
        if pos >= end or value[pos] != "=":
            continue
        pos += 1
        while pos < end and value[pos] in _ASCII_WHITESPACE:
            pos += 1
        if pos >= end:
            return None
        if value[pos] in "\"'":
            close = value.find(value[pos], pos + 1)
            if close < 0:
                return None
            return get_encoding(value[pos + 1 : close])
        stop = pos
        while stop < end and value[stop] not in _ASCII_WHITESPACE and value[stop] != ";":
            stop += 1
        return get_encoding(value[pos:stop])
    return None


_FAILURE = "failure"
_META_START = re.compile(rb"<meta[\t\n\x0c\r /]", re.IGNORECASE)
_CHARSET = re.compile(rb"charset")
_QUOTES = frozenset(b"\"'")
_META_END = (b"\t", b"\n", b"\x0c", b"\r", b" ", b"/")


def _meta(data: bytes, pos: int) -> tuple[str | None, int]:
    """The prescan's ``<meta`` branch from the byte after ``<meta``: (encoding or None, end)."""
    names: set[bytes] = set()
    got_pragma = False
    need_pragma: bool | None = None
    charset: str | None = None
    for _ in range(len(data)):  # every attribute consumes at least one byte
        attribute = _attribute(data, pos)
        if attribute is None:
            break
        name, value, pos = attribute
        if name in names:
            continue
        names.add(name)
        if name == b"http-equiv":
            if value == b"content-type":
                got_pragma = True
        elif name == b"content":
            found = _charset_from_content(value.decode("latin-1"))
            if found is not None and charset is None:
                charset = found
                need_pragma = True
        elif name == b"charset":
            charset = get_encoding(value.decode("latin-1")) or _FAILURE
            need_pragma = False
    if need_pragma is None or (need_pragma and not got_pragma):
        return None, pos
    if charset is None or charset == _FAILURE:
        return None, pos
    if charset in _UTF16:
        return "UTF-8", pos
    if charset == "x-user-defined":
        return "windows-1252", pos
    return charset, pos


def _is_letter(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _scan(data: bytes) -> tuple[str | None, int]:
    """The prescan's loop over ``data``: (encoding or None, where it stopped reading).

    It stops at the end of ``data``, or at the start of the construct it could not finish (a
    comment, a tag or a ``<meta>`` running past the end). Only a ``<meta`` whose attributes say
    "charset" can declare, so bytes without both are answered at C speed; otherwise the loop
    runs from the start, since a comment or a quoted value before the meta may hide it.
    """
    if _META_START.search(data) is None or b"charset" not in data.lower():
        # Only a <meta> naming "charset" declares; one may still start in the last construct.
        last = data.rfind(b"<")
        return None, last if last >= 0 else len(data)
    where = [0]
    try:
        return _loop(data, where), where[0]
    except _OutOfBytes:
        return None, where[0]


def _loop(data: bytes, where: list[int]) -> str | None:
    end = len(data)
    pos = 0
    for _ in range(end + 1):  # each round moves past at least one byte
        pos = data.find(b"<", pos)
        if pos < 0:
            where[0] = end
            return None
        where[0] = pos
        if data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 2)
            if close < 0:
                return None
            pos = close + 3
            continue
        if data[pos + 1 : pos + 5].lower() == b"meta" and data[pos + 5 : pos + 6] in _META_END:
            found, pos = _meta(data, pos + 5)
            if found is not None:
                return found
            pos += 1
            continue
        after = data[pos + 1] if pos + 1 < end else -1
        if _is_letter(after) or (after == 0x2F and pos + 2 < end and _is_letter(data[pos + 2])):
            pos += 1
            while pos < end and data[pos] not in b"\t\n\x0c\r >":
                pos += 1
            for _ in range(end):  # every attribute consumes at least one byte
                attribute = _attribute(data, pos)
                if attribute is None:
                    break
                pos = attribute[2]
            pos += 1
            continue
        if after in (0x21, 0x2F, 0x3F):
            close = data.find(b">", pos + 1)
            if close < 0:
                return None
            pos = close + 1
            continue
        pos += 1
    where[0] = end
    return None


def xml_encoding(data: bytes) -> str | None:
    """HTML's "get an XML encoding": the ``encoding`` of an XML declaration at byte 0, or None.

    UTF-16 there means UTF-8: bytes that spell the declaration in ASCII are not UTF-16.
    """
    if not data.startswith(b"<?xml"):
        return None
    close = data.find(b">")
    if close < 0:
        return None
    declaration = data[:close]
    pos = declaration.lower().find(b"encoding")
    if pos < 0:
        return None
    pos += 8
    while pos < close and declaration[pos] <= 0x20:
        pos += 1
    if pos >= close or declaration[pos] != 0x3D:
        return None
    pos += 1
    while pos < close and declaration[pos] <= 0x20:
        pos += 1
    if pos >= close or declaration[pos] not in b"\"'":
        return None
    stop = declaration.find(declaration[pos : pos + 1], pos + 1)
    if stop < 0:
        return None
    label = declaration[pos + 1 : stop]
    if any(byte <= 0x20 for byte in label):
        return None
    found = get_encoding(label.decode("latin-1"))
    return "UTF-8" if found in _UTF16 else found


def prescan(data: bytes) -> str | None:
    """HTML's prescan over ``data`` (give it the first 1024 bytes): the encoding, or None."""
    if data.startswith(b"<\x00?\x00x\x00"):
        return "UTF-16LE"
    if data.startswith(b"\x00<\x00?\x00x"):
        return "UTF-16BE"
    return _scan(data)[0] or xml_encoding(data)


# --- when the browser has stopped looking (Blink's HTMLMetaCharsetParser) -------------------

# Blink keeps looking for a <meta> charset while "in the head": until a start or end tag other
# than these (start tags of html and head too), then for the rest of the first 1024 bytes.
# Text does not end it. It tokenizes as the HTML tokenizer does, with title (RCDATA), style
# (RAWTEXT) and script (script data) content read as text; noscript's depends on a scripting
# flag, so both readings are followed (HeadWatch).
_IN_HEAD = frozenset({b"script", b"noscript", b"style", b"link", b"meta", b"object", b"title",
                      b"base"})
_IN_HEAD_START = _IN_HEAD | {b"html", b"head"}
_TAG_NAME = re.compile(rb"[^\t\n\x0c\r />]*")
_CLOSE = {name: re.compile(b"</" + name + rb"[\t\n\x0c\r />]", re.IGNORECASE)
          for name in (b"title", b"style", b"script", b"noscript")}
_SCRIPT_START = re.compile(rb"<script[\t\n\x0c\r />]", re.IGNORECASE)


class _Unsure(Exception):
    """Markup the head walk does not follow exactly (it stops: the page is held as before)."""


def _end_of_tag(data: bytes, pos: int) -> int:
    """From after a tag's name: the position after its ``>`` (attributes read as the tokenizer
    reads them, quoted values holding '>'); :class:`_OutOfBytes` when it is not in ``data``."""
    end = len(data)
    for _ in range(end - pos + 1):  # every attribute consumes at least one byte
        pos = _skip(_SKIP_BEFORE_NAME, data, pos)
        if pos >= end:
            raise _OutOfBytes
        if data[pos] == 0x3E:
            return pos + 1
        attribute = _attribute(data, pos)
        if attribute is None:  # (cannot be: data[pos] is not '>')
            return pos + 1
        pos = attribute[2]
    raise _OutOfBytes


def _comment_end(data: bytes, lt: int) -> int:
    """The end of the comment opened by ``<!--`` at ``lt``: its first ``-->`` (``<!-->`` and
    ``<!--->`` included) or ``--!>`` (never the dashes of the opening)."""
    found = [at + 3 for at in (data.find(b"-->", lt + 2),) if at >= 0]
    found += [at + 4 for at in (data.find(b"--!>", lt + 4),) if at >= 0]
    if not found:
        raise _OutOfBytes
    return min(found)


def _head_walk(data: bytes, pos: int, where: list[int]) -> int | None:
    """Blink's meta charset scan over ``data`` from ``pos``, in the head: the position after
    the tag that ends the head, or None when ``data`` ends first with every construct closed.

    Raises :class:`_OutOfBytes` for a construct running past the end (``where[0]`` is then
    where it starts: the walk can resume there with more bytes) and :class:`_Unsure` for
    markup it does not follow.
    """
    end = len(data)
    for _ in range(end - pos + 1):  # each round moves past at least one byte
        lt = data.find(b"<", pos)
        if lt < 0:
            where[0] = end
            return None
        where[0] = lt
        if lt + 1 >= end:
            raise _OutOfBytes
        after = data[lt + 1]
        if data.startswith(b"<!--", lt):
            pos = _comment_end(data, lt)
            continue
        if after in (0x21, 0x3F) or (after == 0x2F and lt + 2 < end
                                      and not _is_letter(data[lt + 2])):
            if data.startswith(b"</>", lt):
                pos = lt + 3
                continue
            close = data.find(b">", lt + 1)  # a doctype or a bogus comment
            if close < 0:
                raise _OutOfBytes
            pos = close + 1
            continue
        closing = after == 0x2F
        start = lt + 2 if closing else lt + 1
        if start >= end:
            raise _OutOfBytes
        if not _is_letter(data[start]):
            pos = lt + 1  # '<' as text
            continue
        stop = _skip(_TAG_NAME, data, start)
        if stop >= end:
            raise _OutOfBytes
        name = data[start:stop].lower()
        pos = _end_of_tag(data, stop)
        if name not in (_IN_HEAD if closing else _IN_HEAD_START):
            return pos
        if not closing and name in _CLOSE:
            pos = _content_end(data, name, pos)
    where[0] = end
    return None


def _content_end(data: bytes, name: bytes, pos: int) -> int:
    """Where the text content of a title, style, script or noscript opened before ``pos`` ends
    (the start of its end tag), the same under every reading Blink may give it."""
    found = _CLOSE[name].search(data, pos)
    if found is None:
        raise _OutOfBytes
    close = found.start()
    if name == b"script" and b"<!--" in data[pos:close] and _SCRIPT_START.search(data, pos,
                                                                                 close):
        raise _Unsure  # '<!--<script': that first '</script>' may not end it
    if name == b"noscript":
        # Text to a browser running scripts, markup to one that does not: read as markup, it
        # must close every construct before that end tag (a tag ending the head inside it is
        # fine: in that reading the head is over even sooner).
        try:
            _head_walk(data[:close], pos, [pos])
        except _OutOfBytes:
            raise _Unsure from None
    return close


def meta_problem(attributes: Mapping[str, str]) -> str | None:
    """Why the encoding one ``<meta>`` element declares is not ASCII-compatible, or None.

    ``attributes``: the element's attributes as a tokenizer reads them (names lower case, the
    first of each name). Read as the prescan and Blink's meta charset parser read them: a
    ``charset`` attribute, else ``content`` with ``http-equiv=content-type``; UTF-16 there means
    UTF-8 and x-user-defined windows-1252. For a page whose encoding its bytes may still change
    after the hold (Blink obeys a ``<meta>`` anywhere in ``<head>``): the rewriter watches
    every ``<meta>`` of such a page as it streams.
    """
    label = attributes.get("charset")
    if label is not None:
        name = get_encoding(label)
    elif attributes.get("http-equiv", "").strip(_ASCII_WHITESPACE).lower() == "content-type":
        name = _charset_from_content(attributes.get("content", ""))
    else:
        return None
    reason = _NOT_ASCII_COMPATIBLE.get(name or "")
    if reason is None or name in _UTF16:
        return None
    return f"a <meta> past the hold gives {name}, which is not ASCII-compatible ({reason})"


def header_decides(mime: MimeType | None) -> bool:
    """Does the ``Content-Type`` settle the encoding (a known ``charset``, and every other
    charset Chromium may read there known too)? Only a byte order mark can override it, so the
    first three bytes of the page are all the browser still reads to choose."""
    if mime is None:
        return False
    return _header_decides(mime)


@lru_cache(maxsize=256)
def _header_decides(mime: MimeType) -> bool:
    # A function of the (immutable, memoised) MimeType alone, asked twice per page.
    label = mime.param("charset")
    return label is not None and get_encoding(label) is not None and all(
        get_encoding(other) is not None for other in mime.other_charsets)


class HeadWatch:
    """Follows a page's first bytes as they arrive and tells when they hold all that the
    browser reads to choose the encoding, so the rewriter need not hold more (issue 19).

    Blink honours a late ``<meta charset>`` while its meta scan is "in the head" (above), and
    for the first 1024 bytes in any case. So the prefix is enough once it shows the head over
    (a tag Blink does not allow there, the markup before it followed exactly; where the walk
    cannot follow it, the caller holds on as before) and every ``<meta`` that starts before
    that tag's end or before byte 1024 is complete in it. A charset from a byte order mark or
    the ``Content-Type`` needs no more than the first 1024 bytes, nor an XML page's (its XML
    declaration decides). An undeclared page is never enough: Chromium's encoding detector,
    which the ESC and NUL test of :func:`encoding_problem` stands in for, may read further.
    The walk resumes where it stopped, so a growing prefix costs its new bytes.
    """

    __slots__ = ("_over", "_resume")

    def __init__(self) -> None:
        self._resume: int | None = 0  # None: the walk gave up
        self._over: int | None = None

    def settled(self, mime: MimeType | None, prefix: bytes, kind: Kind) -> bool:
        """Does ``prefix`` (the page's first decoded bytes, all of them so far) hold all that
        the browser reads to choose the page's encoding?"""
        if len(prefix) < _PRESCAN:
            return False
        if prefix.startswith((b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")) or header_decides(mime):
            return True
        xml = kind is Kind.XML or (mime is not None and mime.essence == "application/xhtml+xml")
        if not xml and not self.head_over(prefix):
            return False
        return not _choices(mime, prefix, kind)[0][1].startswith("the default")

    def head_over(self, prefix: bytes) -> bool:
        """Has Blink's meta scan left the head within ``prefix``, with every ``<meta`` it may
        still read complete in it? (HTML; called again as the prefix grows.)"""
        if self._over is None:
            if self._resume is None:
                return False
            where = [self._resume]
            try:
                self._over = _head_walk(prefix, self._resume, where)
            except _OutOfBytes:
                self._resume = where[0]
                return False
            except _Unsure:
                self._resume = None
                return False
            self._resume = where[0]
            if self._over is None:
                return False
        limit = max(self._over, _PRESCAN)
        for found in _META_START.finditer(prefix, 0, limit):
            try:
                _meta(prefix, found.start() + 5)
            except _OutOfBytes:
                return False
        return True


# --- the decision ---------------------------------------------------------------------------

_Choice = tuple[str, str]  # (encoding name, where it came from)


def _from_document(prefix: bytes, xml: bool) -> tuple[_Choice | None, list[_Choice]]:
    """What the bytes themselves declare: (choice or None, further encodings a browser may use)."""
    if xml:
        if prefix.startswith(b"<\x00?\x00x\x00"):
            return ("UTF-16LE", "the bytes (UTF-16 XML declaration)"), []
        if prefix.startswith(b"\x00<\x00?\x00x"):
            return ("UTF-16BE", "the bytes (UTF-16 XML declaration)"), []
        found = xml_encoding(prefix)
        return ((found, "the XML declaration") if found else None), []
    head = prefix[:_PRESCAN]
    if head.startswith(b"<\x00?\x00x\x00"):
        return ("UTF-16LE", "the bytes (UTF-16 XML declaration)"), []
    if head.startswith(b"\x00<\x00?\x00x"):
        return ("UTF-16BE", "the bytes (UTF-16 XML declaration)"), []
    found, stopped = _scan(head)
    if found is not None:
        return (found, "a <meta> in the first 1024 bytes"), []
    late = [
        (name, "a <meta> past what the 1024-byte prescan reads")
        for name in _metas(prefix, stopped)
    ]
    found = xml_encoding(head)
    if found is not None:
        return (found, "an XML declaration (Blink reads it in HTML)"), late
    return None, late


def _metas(prefix: bytes, start: int) -> list[str]:
    """Every ``<meta>`` from ``start`` on that declares an encoding, each read on its own.

    The superset for Blink, which keeps looking past 1024 bytes while in ``<head>``: ``start``
    is where the 1024-byte prescan stopped reading (its end, or a construct it could not
    finish), so a meta it already judged is not judged again, and one it was cut off from is.
    Each ``<meta`` is read on its own (not through the prescan's loop) to keep this a pass of
    :data:`EXTENDED_PRESCAN` bytes at most, with one attribute reading a ``<meta`` that
    mentions "charset" before the next ``<meta``.
    """
    data = prefix[:EXTENDED_PRESCAN]
    lower = data.lower()
    mentions = [match.start() for match in _CHARSET.finditer(lower, start)]
    if not mentions:
        return []
    found: list[str] = []
    metas = [match.start() for match in _META_START.finditer(data, start)]
    for index, at in enumerate(metas):
        following = metas[index + 1] if index + 1 < len(metas) else len(data)
        nearest = bisect.bisect_left(mentions, at)
        if nearest == len(mentions):
            break  # no "charset" from here on: no later meta declares
        segment = data[at:following]
        if mentions[nearest] >= following and b">" in segment and not _QUOTES.intersection(
            segment
        ):
            continue  # ended before the next <meta without naming "charset"
        try:
            name, _ = _meta(data, at + 5)
        except _OutOfBytes:
            break
        if name is not None:
            found.append(name)
    return found


def _choices(mime: MimeType | None, prefix: bytes, kind: Kind) -> tuple[_Choice, list[_Choice]]:
    """The browser's encoding and the others a browser may pick instead (superset rules)."""
    if prefix.startswith(b"\xef\xbb\xbf"):
        return ("UTF-8", "the byte order mark"), []
    if prefix.startswith(b"\xfe\xff"):
        return ("UTF-16BE", "the byte order mark"), []
    if prefix.startswith(b"\xff\xfe"):
        return ("UTF-16LE", "the byte order mark"), []
    xml = kind is Kind.XML or (mime is not None and mime.essence == "application/xhtml+xml")
    others: list[_Choice] = []
    declared: _Choice | None = None
    header_label = mime.param("charset") if mime is not None else None
    if header_label is not None:
        name = get_encoding(header_label)
        if name is not None:
            declared = (name, f"charset {header_label!r} in the Content-Type")
    for label in mime.other_charsets if mime is not None else ():
        name = get_encoding(label)
        if name is not None:
            others.append((name, f"charset {label!r} as Chromium reads the Content-Type"))
    # The document's own declarations are read only when the browser may use them: a charset
    # in the header wins over them (the common case skips the prescan).
    if declared is None:
        declared, late = _from_document(prefix, xml)
        others.extend(late)
    elif mime is not None and any(get_encoding(label) is None for label in mime.other_charsets):
        # Chromium read a label it does not know and falls back to the document's own.
        document, late = _from_document(prefix, xml)
        if document is not None:
            others.append(document)
        others.extend(late)
    if declared is None:
        default = "UTF-8" if xml else "windows-1252"
        declared = (default, "the default (nothing declared)")
    return declared, others


def encoding(mime: MimeType | None, prefix: bytes, kind: Kind) -> tuple[str, str | None]:
    """(the encoding's WHATWG name, the problem or None): :func:`encoding_name` and
    :func:`encoding_problem` from one pass over ``prefix`` (the rewriter needs both)."""
    if header_decides(mime) and not prefix.startswith(_BOMS):
        assert mime is not None
        return _by_header(mime, kind)
    declared, others = _choices(mime, prefix, kind)
    return declared[0], _problem(mime, prefix, declared, others)


_BOMS = (b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")


@lru_cache(maxsize=256)
def _by_header(mime: MimeType, kind: Kind) -> tuple[str, str | None]:
    """:func:`encoding` of a page whose ``Content-Type`` decides and that has no byte order
    mark: the bytes are not read (no prescan, no default), so the answer is the header's, and
    remembered per header (the common case costs a dictionary look-up, issue 19)."""
    declared, others = _choices(mime, b"", kind)
    return declared[0], _problem(mime, b"", declared, others)


def encoding_name(mime: MimeType | None, prefix: bytes, kind: Kind) -> str:
    """The WHATWG name of the encoding the browser decodes the page in (undeclared HTML:
    windows-1252, though Chromium may detect another)."""
    return _choices(mime, prefix, kind)[0][0]


def encoding_problem(mime: MimeType | None, prefix: bytes, kind: Kind) -> str | None:
    """None when the page's markup bytes read the same as ASCII; else why they may not.

    ``prefix`` is the start of the decoded body (after content codings): the first 1024 bytes
    at least, unless the body is shorter. Never raises.
    """
    declared, others = _choices(mime, prefix, kind)
    return _problem(mime, prefix, declared, others)


def _problem(
    mime: MimeType | None, prefix: bytes, declared: _Choice, others: list[_Choice]
) -> str | None:
    if mime is not None and mime.essence == "multipart/x-mixed-replace":
        return (
            "multipart/x-mixed-replace: each part has its own type and charset, "
            "which the safety net does not read"
        )
    for name, source in (declared, *others):
        reason = _NOT_ASCII_COMPATIBLE.get(name)
        if reason is not None:
            return f"{source} gives {name}, which is not ASCII-compatible ({reason})"
    if declared[1].startswith("the default"):
        head = prefix[:EXTENDED_PRESCAN]
        if b"\x1b" in head:
            return (
                "undeclared page holding ESC bytes: Chromium's detector may decode it as "
                "ISO-2022-JP"
            )
        if b"\x00" in head:
            return "undeclared page holding NUL bytes: Chromium's detector may decode it as UTF-16"
    return None

"""HTML pages between bytes and text: content codings (gzip, br, zstd) and charsets.

Decoding is bounded: a body that decodes to more than the limit raises :class:`Unrewritable`
before the excess is produced, so a small compressed bomb cannot blow up memory. Text goes back
to bytes in the page's own charset, so a rewritten ISO-8859-1 page is still ISO-8859-1 and its
``<meta charset>`` still tells the truth.
"""

from __future__ import annotations

import codecs
import re
import zlib
from functools import lru_cache

import brotli
import zstandard

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# The WHATWG prescan, simplified: a charset in the first 1024 bytes' <meta> tags.
_META_CHARSET = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE
)
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_UTF16 = frozenset({"utf-16", "utf-16-le", "utf-16-be"})
# The labels a browser reads as UTF-16 (WHATWG Encoding); it does not know "utf16" or "u16".
_UTF16_LABELS = frozenset({"utf-16", "utf-16le", "utf-16be", "unicodefeff", "unicodefffe"})
# Printable ASCII (no lone backslash) plus the escapes of UTF-7, unicode_escape and HZ: a codec
# that reads these bytes as ASCII reads the page's tags and attributes as a browser does.
_ASCII_PROBE = (
    bytes(c for c in range(0x20, 0x7F) if c != 0x5C) + b"\t\n\r +ADw- \\x3c \\u003c ~{ ~}"
)


class Unrewritable(Exception):
    """The page cannot be rewritten (too large, undecodable, unknown coding or charset)."""


def decode_content(body: bytes, codings: list[str], limit: int) -> bytes:
    """Undo ``Content-Encoding`` (codings in the order applied), giving at most ``limit`` bytes."""
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            body = _inflate(body, coding, limit)
        elif coding == "br":
            body = _unbrotli(body, limit)
        elif coding == "zstd":
            body = _unzstd(body, limit)
        else:
            raise Unrewritable(f"unknown content coding {coding!r}")
    if len(body) > limit:
        raise Unrewritable(f"page larger than {limit} bytes")
    return body


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    # gzip with its header; "deflate" is zlib-wrapped by the RFC, raw in some servers' hands.
    attempts = (16 + zlib.MAX_WBITS,) if coding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for index, wbits in enumerate(attempts):
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(body, limit + 1)
            if len(out) > limit:
                raise Unrewritable(f"page larger than {limit} bytes once decompressed")
            if not inflater.eof:
                raise Unrewritable(f"truncated {coding} body")
            return out
        except zlib.error as exc:
            if index == len(attempts) - 1:
                raise Unrewritable(f"bad {coding} body: {exc}") from exc
    raise AssertionError("unreachable")


def _unbrotli(body: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    try:
        # The output limit stops a tiny bomb from inflating in one call; the loop drains the
        # rest while the decompressor holds undelivered output.
        out = bytearray(decompressor.process(body, output_buffer_limit=limit + 1))
        while len(out) <= limit and not decompressor.is_finished():
            if decompressor.can_accept_more_data():
                raise Unrewritable("truncated br body")
            out += decompressor.process(b"", output_buffer_limit=limit + 1 - len(out))
    except brotli.error as exc:
        raise Unrewritable(f"bad br body: {exc}") from exc
    if len(out) > limit:
        raise Unrewritable(f"page larger than {limit} bytes once decompressed")
    return bytes(out)


def _unzstd(body: bytes, limit: int) -> bytes:
    try:
        # A bounded read first (a bomb stops at the limit) ...
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        out = reader.read(limit + 1)
        if len(out) > limit:
            raise Unrewritable(f"page larger than {limit} bytes once decompressed")
        # ... then, known to be small, once more to learn whether the last frame was complete.
        whole = zstandard.ZstdDecompressor().decompressobj()
        whole.decompress(body)
    except zstandard.ZstdError as exc:
        raise Unrewritable(f"bad zstd body: {exc}") from exc
    if not whole.eof:
        raise Unrewritable("truncated zstd body")
    return bytes(out)


def content_codings(value: str | None) -> list[str]:
    """``Content-Encoding: gzip, br`` → ``["gzip", "br"]`` (lower case)."""
    if not value:
        return []
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def page_charset(content_type: str | None, body: bytes) -> tuple[str, bool]:
    """The codec to read ``body`` with, and whether the page declared it.

    Order as in browsers: a byte order mark, the ``Content-Type`` charset, a ``<meta>`` charset
    in the first 1024 bytes. Undeclared pages are read as UTF-8 when they are valid UTF-8, else
    as Latin-1, which maps every byte and so writes back the very same bytes.
    """
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return codec, True
    declared = None
    if content_type:
        match = _CHARSET_PARAM.search(content_type)
        declared = match.group(1) if match else None
    in_meta = False
    if declared is None:
        found = _META_CHARSET.search(body[:1024])
        declared = found.group(1).decode("ascii") if found else None
        in_meta = found is not None
    if declared is not None:
        return _browser_codec(declared, in_meta), True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1", False
    return "utf-8", False


@lru_cache(maxsize=64)
def _browser_codec(label: str, in_meta: bool) -> str:
    """The codec for a declared charset, read the way a browser reads it, else Unrewritable.

    Hardening (issue 9): Python knows codecs browsers do not (UTF-32, UTF-7, EBCDIC, punycode,
    unicode_escape) and bytes-to-bytes codecs (hex, rot13) that raise on decoding. Reading a
    page with one of them would hide a promotion the browser shows, or crash the rewriter.
    """
    try:
        name = codecs.lookup(label).name
    except LookupError as exc:
        raise Unrewritable(f"unknown charset {label!r}") from exc
    if name in _UTF16:
        # WHATWG: a <meta> saying UTF-16 was itself read as ASCII bytes, so the page is UTF-8.
        if in_meta:
            return "utf-8"
        if label.strip().lower() not in _UTF16_LABELS:
            raise Unrewritable(f"charset {label!r} is not read by browsers as Python reads it")
        return name
    try:
        readable = _ASCII_PROBE.decode(name, errors="replace") == _ASCII_PROBE.decode("ascii")
    except (LookupError, UnicodeError):
        readable = False
    if not readable:
        raise Unrewritable(f"charset {label!r} is not read by browsers as Python reads it")
    return name


def decode_text(body: bytes, codec: str) -> str:
    """The page's text. Invalid bytes in a declared charset become U+FFFD, as in a browser."""
    if codec == "utf-8" and body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace")
    return body.decode(codec, errors="replace")


def encode_text(text: str, codec: str, had_utf8_bom: bool) -> bytes:
    """Back to bytes in ``codec``; characters it cannot hold become character references."""
    out = text.encode(codec, errors="xmlcharrefreplace")
    return codecs.BOM_UTF8 + out if had_utf8_bom else out

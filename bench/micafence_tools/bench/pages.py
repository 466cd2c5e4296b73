"""Exchange pages of a given size, and an app serving them: the promotion rewriter's workload.

A page is a market table with one promotion block about every 5 KB, as a restricted visitor's
page would reach the safety net (``micafence bench`` and ``bench/bench_rewriter.py`` use it).
"""

from __future__ import annotations

import gzip
from collections.abc import MutableMapping, Sequence
from typing import Any

import brotli

SIZES = (("10 KB", 10_000), ("100 KB", 100_000), ("1 MB", 1_000_000))
#: How the page app hands its body to the server: 64 KB messages, as a streaming app would.
CHUNK = 65_536
#: Content codings the benchmark serves pages in; "identity" is the uncompressed page.
CODINGS = ("identity", "gzip", "br")
#: What marks a promotion in these pages (the default policy's selector).
PROMOTION = b"data-promo"
_ROW = ('<tr class="market"><td class="sym">BTC-{n}</td><td class="px">61250.{n:02d}</td>'
        '<td><a href="/trade/BTC-{n}">Trade</a></td></tr>\n')
_PROMO = ('<div class="promo" data-promo id="promo-{n}"><img src="/b/{n}.png" alt="">'
          "<p>Zero fees this week on pair {n}</p></div>\n")


def page(size: int) -> str:
    """A plausible exchange page of about ``size`` bytes, one promotion per ~5 KB."""
    head = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Markets</title>'
            '<link rel="stylesheet" href="/s.css"><script src="/app.js"></script></head><body>'
            "<header><nav><a href=/>Home</a></nav></header><main><table>\n")
    parts, length, n = [head], len(head), 0
    while length < size - 40:
        chunk = _PROMO.format(n=n) if n % 40 == 0 else _ROW.format(n=n % 100)
        parts.append(chunk)
        length += len(chunk)
        n += 1
    parts.append("</table></main></body></html>")
    return "".join(parts)


def numbered(body: bytes, number: int) -> bytes:
    """``body`` as answer ``number``: a comment of fixed width in front (as a CSRF token or a
    clock would make every answer differ), so no memory of pages already rewritten answers for
    the rewriter, and every numbered copy splits into chunks at the same offsets."""
    return b"<!-- %012d -->" % number + body


def encode(body: bytes, coding: str) -> bytes:
    """``body`` in a content coding of :data:`CODINGS` (gzip level 6, br quality 5: what a
    server compressing on the fly would pick, not the slow archival settings)."""
    if coding == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if coding == "br":
        return bytes(brotli.compress(body, quality=5))
    if coding == "identity":
        return body
    raise ValueError(f"no such coding in the benchmark: {coding}")


def decode(body: bytes, coding: str | None) -> bytes:
    """A response body back to the page, whatever coding the middleware answered in."""
    if coding in (None, "", "identity"):
        return body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    raise ValueError(f"the middleware answered in a coding the benchmark cannot read: {coding}")


def split(body: bytes, size: int = CHUNK) -> list[bytes]:
    """``body`` in pieces of ``size`` bytes (the last shorter)."""
    return [body[start:start + size] for start in range(0, len(body), size)] or [b""]


class ChunkedPageApp:
    """A pure-ASGI app answering every request with the page it was last given (``serve``), in
    64 KB body messages one after the other, with ``Content-Length`` as a ``Response`` would.

    It does no work of its own and never yields to the event loop between messages (the page
    is in memory), so its time is the least any app serving the page costs, and any pause the
    event loop sees while a page goes out is the middleware's.
    """

    def __init__(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: Sequence[bytes] = (b"",)

    def serve(self, chunks: Sequence[bytes], coding: str = "identity") -> None:
        """Answer the next requests with the page made of ``chunks`` (in ``coding``)."""
        headers = [(b"content-type", b"text/html; charset=utf-8"),
                   (b"content-length", str(sum(map(len, chunks))).encode("ascii"))]
        if coding != "identity":
            headers.append((b"content-encoding", coding.encode("ascii")))
        self._headers, self._chunks = headers, chunks

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        last = len(self._chunks) - 1
        for index, chunk in enumerate(self._chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < last})

"""Exchange pages of a given size, and an app serving them: the promotion rewriter's workload.

A page is a market table with one promotion block about every 5 KB, as a restricted visitor's
page would reach the safety net (``micafence bench`` and ``bench/bench_rewriter.py`` use it).
"""

from __future__ import annotations

import itertools

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

SIZES = (("10 KB", 10_000), ("100 KB", 100_000), ("1 MB", 1_000_000))
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


def page_app() -> Starlette:
    """``GET /pages/{bytes}``: the page of that size (sizes in :data:`SIZES` only).

    Every answer differs (a request number in a comment, as a CSRF token or a clock would), so
    the rewriter's memory of pages it has seen never answers for it: what is timed is a rewrite.
    """
    bodies = {size: page(size).encode("utf-8") for _, size in SIZES}
    served = itertools.count()

    async def serve(request: Request) -> HTMLResponse:
        body = bodies[int(request.path_params["size"])]
        return HTMLResponse(b"<!-- %d -->" % next(served) + body)

    return Starlette(routes=[Route("/pages/{size:int}", serve)])

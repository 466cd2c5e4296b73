"""Microbenchmark of the promotion rewriter: µs per page and per MB on 10 KB, 100 KB, 1 MB pages.

    python bench/bench_rewriter.py [--seconds 0.5]

Rows, for each page size:

- ``lol-html engine``: the page through the engine micafence uses (``engine.rewrite``: lol-html
  finds and cuts the promotions, every other byte passes), fed in 64 KB pieces;
- ``lol-html via ASGI``: the whole safety net as an EU request meets it (``RewritingSend``:
  type, charset, coding, headers, streaming), on a plain and on a gzip-compressed body;
- ``lexbor parse only``: building lexbor's tree, no selector (the engine before issue 19);
- ``html.parser scan``: Python's own tokenizer walking the page, doing nothing else: a floor for
  a pure-Python streaming rewriter, which would still need its own selector matching and tree
  rules on top.

Each cell runs for about ``--seconds`` (at least 3 runs) and reports the median.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time
from collections.abc import Callable
from html.parser import HTMLParser as StdlibParser
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from micafence.policy.loader import default_policy_path, load_policy
from micafence.policy.model import PromotionStance
from micafence.promotions.engine import PageRewriter
from micafence.promotions.filter import PromotionFilter
from micafence.promotions.guard import PromotionGuard
from micafence.promotions.rewriter import RewritingSend
from micafence_tools.bench.pages import SIZES, page


def stdlib_scan(text: str) -> None:
    """Tokenize ``text`` with the standard library's parser; its handlers do nothing."""
    scanner = StdlibParser()
    scanner.feed(text)
    scanner.close()


def asgi_rewrite(guard: PromotionGuard, body: bytes, encoding: bytes | None) -> Callable[[], None]:
    """One EU response through ``RewritingSend``, as a callable."""
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    if encoding:
        headers.append((b"content-encoding", encoding))
    page_filter = guard.page_filter(("eu",), PromotionStance.FORBIDDEN)
    loop = asyncio.new_event_loop()

    async def sink(message: Any) -> None:
        return None

    async def refuse(problem: str) -> None:
        raise RuntimeError(problem)

    async def once() -> None:
        send = RewritingSend(sink, page_filter=page_filter, limit=16 * 1024 * 1024, head=False,
                             cache=guard.cache, personal=False, zone_route=False,
                             refuse=refuse, extra_headers=[])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return lambda: loop.run_until_complete(once())


def in_pieces(page_filter: PromotionFilter, raw: bytes) -> bytes:
    """``raw`` through the engine in 64 KB pieces, as the safety net feeds it."""
    rewriter = PageRewriter(page_filter)
    out = [rewriter.write(raw[i:i + 65536]) for i in range(0, len(raw), 65536)]
    return b"".join(out) + rewriter.end()


def measure(work: Callable[[], object], seconds: float) -> float:
    """Median seconds per call, over about ``seconds`` of calls (at least 3)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per cell (default 0.5)")
    args = parser.parse_args()
    guard = PromotionGuard(load_policy(default_policy_path()))
    settings = guard.settings
    engine = PromotionFilter.build(settings.selectors, settings.incentives, ())
    print(f"{'page':>7}  {'engine':<22}{'µs/page':>12}{'µs/MB':>12}")
    for label, size in SIZES:
        text = page(size)
        raw = text.encode("utf-8")
        megabytes = len(raw) / 1_000_000
        cells: list[tuple[str, Callable[[], object]]] = [
            ("lol-html engine", lambda r=raw: in_pieces(engine, r)),
            ("lol-html via ASGI", asgi_rewrite(guard, raw, None)),
            ("lol-html via ASGI, gzip", asgi_rewrite(guard, gzip.compress(raw), b"gzip")),
            ("lexbor parse only", lambda t=text: LexborHTMLParser(t)),
            ("html.parser scan", lambda t=text: stdlib_scan(t)),
        ]
        for name, work in cells:
            per_page = measure(work, args.seconds) * 1e6
            print(f"{label:>7}  {name:<22}{per_page:>12,.0f}{per_page / megabytes:>12,.0f}")


if __name__ == "__main__":
    main()

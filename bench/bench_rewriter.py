"""The promotion safety net's HTML engines compared on the same pages: lexbor against lol-html.

    python bench/bench_rewriter.py [--seconds 0.5]

For each page size (10 KB, 100 KB, 1 MB, one promotion per ~5 KB, the pages ``micafence bench``
uses), the time per page of removing every ``[data-promo]`` element, output as bytes:

- ``lol-html``: Cloudflare's streaming rewriter (``python-lolhtml``), fed 64 KB chunks; every
  byte outside the removed elements passes through as it came;
- ``lexbor parse+serialise``: selectolax's lexbor builds the tree, the promotions are removed
  and the tree is serialised again (what the buffering safety net did);
- ``lexbor parse only``: building the tree, nothing else (where lexbor's time goes).

Each cell runs for about ``--seconds`` (at least 3 runs, each on a page numbered afresh) and
reports the median; ``vs lol-html`` is each row's time over lol-html's on the same size. The
lexbor rows need selectolax, which the core package may no longer install: without it they are
left out, and said to be.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from importlib.util import find_spec

from micafence_tools.bench.pages import SIZES, numbered, page, split
from micafence_tools.bench.rewrite_speed import SELECTOR, engine


def lexbor_rewrite(body: bytes) -> bytes:
    """Parse, remove the promotions, serialise: the tree round trip."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(body)
    for node in tree.css(SELECTOR):
        node.decompose()
    return (tree.html or "").encode("utf-8")


def lexbor_parse(body: bytes) -> None:
    from selectolax.lexbor import LexborHTMLParser

    LexborHTMLParser(body)


def measure(work: Callable[[bytes], object], body: bytes, seconds: float) -> float:
    """Median seconds per call, over about ``seconds`` of calls (at least 3), each on a copy of
    the page numbered afresh (nothing can be remembered from the call before)."""
    times: list[float] = []
    numbers = itertools.count()
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        copy = numbered(body, next(numbers))
        started = time.perf_counter()
        work(copy)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per cell (default 0.5)")
    args = parser.parse_args()
    cells: list[tuple[str, Callable[[bytes], object]]] = [
        ("lol-html", lambda body: engine(split(body))),
    ]
    if find_spec("selectolax") is not None:
        cells += [("lexbor parse+serialise", lexbor_rewrite), ("lexbor parse only", lexbor_parse)]
    else:
        print("selectolax is not installed: the lexbor rows are left out")
    print(f"{'page':>7}  {'engine':<24}{'µs/page':>12}{'vs lol-html':>12}")
    for label, size in SIZES:
        body = page(size).encode("utf-8")
        reference = 0.0
        for name, work in cells:
            seconds = measure(work, body, args.seconds)
            reference = reference or seconds
            print(f"{label:>7}  {name:<24}{seconds * 1e6:>12,.0f}{seconds / reference:>11.2f}x")


if __name__ == "__main__":
    main()

"""The promotion safety net against its own engine (issue 19, point 5), and a loop-lag probe.

For each page size and content coding, many numbered copies of the page (each answer differs,
so nothing remembered answers for the rewriter) go, one after the other, three ways on the same
bytes in the same 64 KB chunks, in an order rotating from page to page:

- **bare**: the page app alone (:class:`~micafence_tools.bench.pages.ChunkedPageApp`);
- **micafence**: the page app behind the middleware, a restricted (Swedish) visitor asking;
- **engine**: a bare lol-html ``HTMLRewriter`` removing ``[data-promo]``, fed the page's plain
  chunks, its output collected (for a compressed page too: the engine's time on the page itself).

The middleware's time for a page is micafence's time minus the bare app's on the same page,
timed back to back; each figure is a median over pages. The ratio middleware / engine says what
the safety net costs beyond the engine's own work; only uncompressed pages are judged.

The **loop-lag probe**: while one 1 MB page goes through the middleware, a task sleeping 1 ms in
a loop records how late it wakes, the largest lateness per page; the median over pages is
judged (the largest of all is printed beside it), and the same probe beside an idle wait of the
same length shows what the machine alone makes of a 1 ms sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, TypeVar

import lolhtml

from micafence.errors import MicafenceError
from micafence.policy.probe import build_scope
from micafence_tools.bench import pages

#: A restricted visitor: an address MaxMind's test database puts in Sweden.
SWEDISH = "89.160.20.112"
SELECTOR = "[data-promo]"
#: Pages timed per size (full run, --quick): enough for a median, a few seconds in all.
SAMPLES = {10_000: (400, 60), 100_000: (120, 20), 1_000_000: (30, 8)}
LAG_PAGES = (15, 5)
_PROBE_SLEEP = 0.001
_PROBE_WAKES = 100_000  # bound on one probe's loop: far more than a page can take
_WARM = 3  # pages each way before timing: imports, first-call caches
_WAYS = ("bare", "micafence", "engine")
_T = TypeVar("_T")


class _Remove:
    """The engine's element handler: remove the element matched."""

    def element(self, element: lolhtml.Element) -> None:
        element.remove()


def engine(chunks: Sequence[bytes]) -> list[bytes | bytearray | Iterable[SupportsIndex]]:
    """lol-html on its own: remove every ``[data-promo]`` element from the page in ``chunks``,
    fed as the middleware is fed, the output collected as a server would take it."""
    out: list[bytes | bytearray | Iterable[SupportsIndex]] = []
    rewriter = lolhtml.HTMLRewriter(out.append)
    rewriter.on(SELECTOR, _Remove())
    for chunk in chunks:
        rewriter.write(chunk)
    rewriter.end()
    return out


@dataclass(slots=True)
class _Answer:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)


async def _call(app: Any, scope: dict[str, Any]) -> _Answer:
    """One GET through ``app``, every body message kept (as a server would take it)."""
    answer = _Answer()
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.sleep(3600)  # no disconnect comes in a benchmark
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = list(message.get("headers") or ())
        elif message["type"] == "http.response.body":
            answer.body.append(message.get("body", b""))

    await app(dict(scope, state={}), receive, send)
    return answer


def _scope(coding: str) -> dict[str, Any]:
    headers = [("host", "exchange.test"), ("user-agent", "micafence-bench"),
               ("accept", "text/html"), ("accept-encoding", "gzip, br")]
    return build_scope(SWEDISH, "GET", f"/pages/{coding}", headers)


def _refuse_unless_rewritten(answer: _Answer, what: str) -> None:
    """The middleware answered the page with its promotions removed: else the benchmark would
    time another path (a pass-through, a refusal) and call it the safety net's."""
    if answer.status != 200:
        raise MicafenceError(f"benchmark {what}: micafence answered {answer.status}, not 200")
    coding = next((v.decode("latin-1").strip() for n, v in answer.headers
                   if n.lower() == b"content-encoding"), None)
    page = pages.decode(b"".join(answer.body), coding)
    if pages.PROMOTION in page or b"</table></main></body></html>" not in page:
        raise MicafenceError(f"benchmark {what}: micafence did not answer the page with its "
                             "promotions removed (is the visitor restricted by the policy?)")


@dataclass(frozen=True, slots=True)
class PageTiming:
    """One page size in one coding: medians over pages, in µs."""

    label: str  # "10KB"
    coding: str
    pages: int
    bare_us: float
    micafence_us: float
    middleware_us: float  # median over pages of (micafence - bare) on the same page
    engine_us: float

    @property
    def ratio(self) -> float:
        """The middleware's time as a multiple of the engine's own on the same bytes."""
        return self.middleware_us / self.engine_us

    @property
    def key(self) -> str:
        return f"pages.{'plain' if self.coding == 'identity' else self.coding}_{self.label}"


@dataclass(frozen=True, slots=True)
class LoopLag:
    """Largest lateness of a 1 ms sleep per 1 MB page through the middleware, and idle."""

    pages: int
    median_ms: float
    max_ms: float
    idle_median_ms: float
    idle_max_ms: float


@dataclass(frozen=True, slots=True)
class PageSpeed:
    timings: list[PageTiming]
    lag: LoopLag

    def metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for t in self.timings:
            metrics[f"{t.key}.bare_us"] = round(t.bare_us, 1)
            metrics[f"{t.key}.micafence_us"] = round(t.micafence_us, 1)
            metrics[f"{t.key}.middleware_us"] = round(t.middleware_us, 1)
            metrics[f"{t.key}.engine_us"] = round(t.engine_us, 1)
            metrics[f"{t.key}.times_engine"] = round(t.ratio, 3)
        metrics["pages.loop_lag_ms"] = round(self.lag.median_ms, 3)
        metrics["pages.loop_lag_max_ms"] = round(self.lag.max_ms, 3)
        metrics["pages.loop_lag_idle_ms"] = round(self.lag.idle_median_ms, 3)
        metrics["pages.loop_lag_idle_max_ms"] = round(self.lag.idle_max_ms, 3)
        return metrics


async def _time_size(app: pages.ChunkedPageApp, guarded: Any, label: str, size: int,
                     coding: str, count: int, numbers: Iterator[int]) -> PageTiming:
    body = pages.page(size).encode("utf-8")
    scope = _scope(coding)
    clock = time.perf_counter_ns
    bare_ns: list[int] = []
    mica_ns: list[int] = []
    engine_ns: list[int] = []
    for number in range(_WARM + count):
        plain = pages.numbered(body, next(numbers))
        plain_chunks = pages.split(plain)
        served = pages.split(pages.encode(plain, coding)) if coding != "identity" else plain_chunks
        app.serve(served, coding)
        samples = {"bare": bare_ns, "micafence": mica_ns, "engine": engine_ns}
        turn = number % len(_WAYS)
        for way in _WAYS[turn:] + _WAYS[:turn]:
            start = clock()
            if way == "engine":
                engine(plain_chunks)
                elapsed = clock() - start
            else:
                answer = await _call(app if way == "bare" else guarded, scope)
                elapsed = clock() - start
                if way == "micafence":  # every page, outside the timing
                    _refuse_unless_rewritten(answer, f"page {label} ({coding})")
            if number >= _WARM:
                samples[way].append(elapsed)
    paired = [m - b for m, b in zip(mica_ns, bare_ns, strict=True)]
    return PageTiming(label, coding, count, statistics.median(bare_ns) / 1000,
                      statistics.median(mica_ns) / 1000, statistics.median(paired) / 1000,
                      statistics.median(engine_ns) / 1000)


async def _worst_lateness(done: asyncio.Event) -> float:
    """Sleep 1 ms again and again until ``done``; the largest lateness seen, in seconds."""
    worst = 0.0
    for _ in range(_PROBE_WAKES):
        if done.is_set():
            break
        start = time.perf_counter()
        await asyncio.sleep(_PROBE_SLEEP)
        worst = max(worst, time.perf_counter() - start - _PROBE_SLEEP)
    return worst


async def _probe_while(work: Awaitable[_T]) -> tuple[float, _T]:
    """Await ``work`` with the probe running beside it: its largest lateness, and the result."""
    done = asyncio.Event()
    probe = asyncio.create_task(_worst_lateness(done))
    await asyncio.sleep(0)  # the probe is asleep before the work starts
    try:
        result = await work
    finally:
        done.set()
    return await probe, result


async def _loop_lag(app: pages.ChunkedPageApp, guarded: Any, count: int,
                    numbers: Iterator[int]) -> LoopLag:
    body = pages.page(1_000_000).encode("utf-8")
    scope = _scope("identity")
    busy: list[float] = []
    idle: list[float] = []
    for _ in range(count):
        app.serve(pages.split(pages.numbered(body, next(numbers))))
        started = time.perf_counter()
        lateness, answer = await _probe_while(_call(guarded, scope))
        took = time.perf_counter() - started
        _refuse_unless_rewritten(answer, "loop lag, page 1MB")
        busy.append(lateness)
        idle.append((await _probe_while(asyncio.sleep(took)))[0])
    return LoopLag(count, statistics.median(busy) * 1000, max(busy) * 1000,
                   statistics.median(idle) * 1000, max(idle) * 1000)


def run(guard: Callable[[Any], Any], quick: bool) -> PageSpeed:
    """Time every page size and coding, and probe the loop, with ``guard(app)`` as micafence."""
    app = pages.ChunkedPageApp()
    guarded = guard(app)
    which = 1 if quick else 0
    numbers = itertools.count()  # one numbering for the run: no page is ever served twice

    async def run_all() -> PageSpeed:
        timings = [await _time_size(app, guarded, label.replace(" ", ""), size, coding,
                                    SAMPLES[size][which], numbers)
                   for coding in pages.CODINGS for label, size in pages.SIZES]
        return PageSpeed(timings, await _loop_lag(app, guarded, LAG_PAGES[which], numbers))

    return asyncio.run(run_all())


def loop_lag(guard: Callable[[Any], Any], count: int) -> LoopLag:
    """The loop-lag probe alone, over ``count`` 1 MB pages through ``guard(app)``."""
    app = pages.ChunkedPageApp()
    return asyncio.run(_loop_lag(app, guard(app), count, itertools.count()))


def render(speed: PageSpeed) -> list[str]:
    """The report's page section (the budget lines come with the rest of the budget)."""
    lines = ["Restricted visitor's HTML page through the promotion safety net vs its engine "
             "alone, same pages, same 64 KB chunks",
             "µs per page (medians over pages); middleware = micafence - bare on the same page; "
             "engine = lol-html HTMLRewriter removing [data-promo], output collected",
             f"{'page':<12}{'coding':<10}{'pages':>6}{'bare µs':>10}{'mica µs':>11}"
             f"{'middleware':>12}{'engine µs':>11}{'ratio':>8}"]
    for t in speed.timings:
        lines.append(f"{t.label:<12}{t.coding:<10}{t.pages:>6}{t.bare_us:>10.0f}"
                     f"{t.micafence_us:>11.0f}{t.middleware_us:>12.0f}{t.engine_us:>11.0f}"
                     f"{t.ratio:>7.2f}x")
    lines.append("Compressed pages: the engine's time is on the uncompressed page (no codec); "
                 "outside the budget.")
    lag = speed.lag
    lines.append(f"Loop lag, a 1 ms sleep's largest lateness per 1 MB page through micafence: "
                 f"median {lag.median_ms:.2f} ms, max {lag.max_ms:.2f} ms over {lag.pages} pages "
                 f"(idle loop, same wait: median {lag.idle_median_ms:.2f} ms, max "
                 f"{lag.idle_max_ms:.2f} ms)")
    return lines

"""The hot path alone: the in-process classes of ``micafence bench``, timed (paired rounds
against the bare trivial route in the same run) or profiled (cProfile), without the pages and
HTTP parts. A tool for working on the request path, not a figure of record::

    python -m micafence_tools.bench.hotpath                      # every class, 20,000 requests
    python -m micafence_tools.bench.hotpath --classes neutral_restricted --count 40000
    python -m micafence_tools.bench.hotpath --profile in_scope_grant

The figures are what ``micafence bench`` prints for the same classes (the same requests, the
same rounds of :func:`~micafence_tools.bench.inprocess.measure`); only the report is shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Any

from micafence.decide import Enforcer
from micafence.location.geo import GeoIPDatabase
from micafence.policy.loader import load_policy
from micafence.policy.probe import build_scope
from micafence_tools.bench import apps, grants
from micafence_tools.bench.inprocess import ClassResult, Request, _call, _scope, measure
from micafence_tools.bench.runner import inprocess_classes


def _line(result: ClassResult) -> str:
    bare, floor, mica = (result.timings[app].p50_us for app in ("bare", "floor", "micafence"))
    return (f"{result.name:22} {bare:8.2f} {floor:8.2f} {mica:8.2f} {mica - bare:+7.2f} "
            f"{(mica - bare) / bare:+8.3f} {result.micafence.p99_us:9.2f}")


async def _profile(app: Any, requests: Sequence[Request], top: int) -> None:
    for request in dict.fromkeys(requests):  # warm, as measure() does
        await _call(app, request)
    prepared = [(request, _scope(request)) for request in requests]
    profiler = cProfile.Profile()
    profiler.enable()
    for request, template in prepared:
        await _call(app, request, template)
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def metrics_count_ns(enforcer: Enforcer, calls: int = 200_000) -> float:
    """ns per :meth:`~micafence.metrics.Metrics.count` (run on every request when metrics are
    on): the best of five timed loops over one decision (moved here from a timed unit test)."""
    from micafence.metrics import Metrics  # prometheus_client: only for this figure

    metrics = Metrics()
    decision = enforcer.decide(build_scope("127.0.0.1", "GET", "/"))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            metrics.count(decision)
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m micafence_tools.bench.hotpath",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20000, help="requests per class")
    parser.add_argument("--classes", default="", help="comma-separated classes (default: all)")
    parser.add_argument("--profile", metavar="CLASS", help="profile micafence on one class")
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    args = parser.parse_args(argv)
    logging.getLogger("micafence").setLevel(logging.ERROR)  # start-up warnings: not ours here
    enforcer = Enforcer(load_policy(apps.policy_path()), GeoIPDatabase(apps.database_path()))
    made = inprocess_classes(enforcer, args.count)
    wanted = [name for name in args.classes.split(",") if name] or [*made.plain, *made.granted]
    if args.profile:
        wanted = [args.profile]
    trivial = apps.trivial_app()
    behind = {"bare": trivial, "floor": apps.floor(trivial),
              "micafence": apps.guarded(trivial, watch=False)}

    async def run() -> None:
        gc.collect()
        gc.freeze()
        print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; µs, medians "
              "of paired rounds; overhead = (micafence - bare) / bare")
        print(f"{'class':22} {'bare':>8} {'floor':>8} {'mica':>8} {'+µs':>7} {'overhead':>8} "
              f"{'mica p99':>9}")
        for name in wanted:
            if name in made.plain:
                if args.profile:
                    await _profile(behind["micafence"], made.plain[name], args.top)
                else:
                    print(_line(await measure(name, made.plain[name], behind)), flush=True)
                continue
            async with grants.granted_app(made.clients, trivial) as on_redis:
                if args.profile:
                    await _profile(on_redis, made.granted[name], args.top)
                else:
                    granting = {**behind, "micafence": on_redis}
                    print(_line(await measure(name, made.granted[name], granting)), flush=True)

    asyncio.run(run())
    if not args.profile:
        print(f"Metrics.count, per request with metrics on: {metrics_count_ns(enforcer):.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())

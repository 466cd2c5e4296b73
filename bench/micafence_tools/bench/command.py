"""``micafence bench``, added to the ``micafence`` command through the ``micafence.subcommands``
entry-point group. Registering imports only argparse; the benchmark is imported when the command
runs, after checking that micafence-tools' ``bench`` extra is installed."""

from __future__ import annotations

import argparse
import shutil
from importlib.util import find_spec

from micafence.errors import MicafenceError

# What the benchmark needs beyond micafence-tools itself (its bench extra): the naive peer's
# geoip2, the grant checks' redis client (micafence's redis extra) and lol-html on its own (the
# pages' yardstick); locust for --locust.
_BENCH_EXTRA = ("geoip2", "redis", "lolhtml")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``micafence bench`` to the CLI."""
    bench = commands.add_parser(
        "bench", help="measure what micafence costs (in-process and over HTTP)",
        description="Benchmark micafence against a trivial route, bare and behind a send-only "
        "floor and the naive alternative (BaseHTTPMiddleware + geoip2), in the same run; print "
        "µs, overheads as fractions of the bare route, requests/s, and the budget's PASS/FAIL "
        "lines.",
    )
    bench.add_argument("--quick", action="store_true",
                       help="in-process only, small samples (a smoke test, seconds)")
    bench.add_argument("--json", metavar="PATH", help="write the results as JSON")
    bench.add_argument("--check", metavar="BASELINE",
                       help="exit 1 if a budget line fails or a figure regresses beyond the "
                       "baseline's tolerance")
    bench.add_argument("--budget", metavar="METRIC=LIMIT", action="append",
                       help="replace one budget line's limit (repeatable; the output names "
                       "the release budget beside it)")
    bench.add_argument("--policy", help="policy file (default: the packaged default policy)")
    bench.add_argument("--geoip-db", help="MaxMind database (default: the bundled test database)")
    bench.add_argument("--locust", action="store_true",
                       help="also run the locust mix for its latency distribution")
    bench.add_argument("--locustfile", default="bench/locustfile.py", help="locustfile path")
    bench.add_argument("--results-dir", default="bench/results",
                       help="where locust's CSV and HTML reports go")
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    needed = (*_BENCH_EXTRA, "locust") if args.locust else _BENCH_EXTRA
    missing = [name for name in needed if find_spec(name) is None]
    if missing:
        raise MicafenceError(
            f"micafence bench needs {', '.join(missing)}, from micafence-tools' bench extra: "
            "pip install -e './bench[bench]' (from the repository root)"
        )
    # Told before measuring, not minutes in: the grant checks' server, the HTTP load generator.
    tools = ("redis-server",) if args.quick else ("redis-server", "wrk")
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:
        raise MicafenceError(f"micafence bench needs {' and '.join(absent)} on the PATH "
                             f"(Debian: apt-get install {' '.join(absent)})")
    from micafence_tools.bench.runner import main

    return main(args)

"""``micafence bench``: run the benchmarks, print the table, check against a baseline."""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from micafence.decide import Enforcer
from micafence.errors import MicafenceError
from micafence.location.geo import GeoIPDatabase
from micafence.policy.loader import load_policy
from micafence.policy.model import Outcome
from micafence_tools.bench import apps, grants, rewrite_speed
from micafence_tools.bench.http import (
    Row,
    paired_throughput,
    rotating_v6_script,
    rows_script,
    servers,
)
from micafence_tools.bench.inprocess import ClassResult, Request, measure
from micafence_tools.bench.pages import CODINGS, SIZES
from micafence_tools.bench.progress import Progress, ProgressReport, quiet
from micafence_tools.bench.report_html import render_html
from micafence_tools.bench.traffic import MIX, answering, skewed_visits, visitor_pools


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the budget: a metric of this run, a comparison and its limit."""

    metric: str
    op: str  # "<=" or ">="
    limit: float
    what: str
    unit: str

    def met_by(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit


#: The release budget (issue 20). In-process overheads are fractions of the bare trivial route's
#: own time in the same run; HTTP figures are taken within the same wrk rounds.
BUDGET = (
    Line("inprocess.neutral_unrestricted.overhead", "<=", 0.19,
         "in-process overhead, non-restricted visitor, neutral route", "of the bare route"),
    Line("inprocess.neutral_restricted.overhead", "<=", 0.25,
         "in-process overhead, restricted visitor, neutral route", "of the bare route"),
    Line("inprocess.in_scope_grant.overhead", "<=", 0.60,
         "in-process overhead, in-scope grant check, Redis store, cache warm (order route)",
         "of the bare route"),
    Line("inprocess.identified_extra", "<=", 0.03,
         "in-process, identified non-restricted client vs anonymous visitor through the same "
         "proxy, neutral route (the registry look-up: a local cache hit)", "of the bare route"),
    Line("http.neutral.gap_to_floor", "<=", 0.03,
         "HTTP neutral traffic, below the send-only floor in the same rounds", "of bare"),
    Line("http.mix.throughput_ratio", ">=", 0.90, "HTTP throughput, the release mix", "of bare"),
    Line("http.rotating_v6.throughput_ratio", ">=", 0.70,
         "HTTP throughput, every lookup a cache miss (rotating IPv6)", "of bare"),
    Line("http.neutral.times_naive", ">=", 4.0, "HTTP throughput vs the naive peer, neutral",
         "times the naive peer's"),
    # Issue 19: the promotion safety net on a restricted visitor's uncompressed page, against
    # its engine (lol-html) alone on the same bytes in the same run; and the event loop kept free.
    *(Line(f"pages.plain_{size}.times_engine", "<=", 1.30,
           f"promotion safety net, {size} page, middleware vs its engine alone on the same bytes",
           "times the engine's") for size in ("10KB", "100KB", "1MB")),
    Line("pages.loop_lag_ms", "<=", 5.0,
         "event loop lag while a 1 MB page is rewritten (largest lateness of a 1 ms sleep, "
         "median over pages)", "ms"),
)
# Compared with the baseline, and which way is worse: an overhead or a gap grows, a ratio falls.
_LOWER_IS_BETTER = (".overhead", ".gap_to_floor")
_HIGHER_IS_BETTER = (".throughput_ratio",)


def budget_with(overrides: dict[str, float]) -> tuple[Line, ...]:
    """The budget with some limits replaced (``--budget METRIC=LIMIT``)."""
    known = {line.metric for line in BUDGET}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MicafenceError(f"--budget names no budget line: {', '.join(unknown)} "
                             f"(the lines: {', '.join(sorted(known))})")
    return tuple(replace(line, limit=overrides.get(line.metric, line.limit)) for line in BUDGET)


def _requests(visits: list[str], method: str, path: str, body: str = "") -> list[Request]:
    return [Request(ip, method, path, body.encode()) for ip in visits]


@dataclass(frozen=True, slots=True)
class InprocessClasses:
    """The in-process traffic classes: those any app answers, and the grant checks (which
    need micafence on a Redis store holding the clients' grants)."""

    plain: dict[str, list[Request]]
    granted: dict[str, list[Request]]
    clients: list[str]


def inprocess_classes(enforcer: Enforcer, count: int) -> InprocessClasses:
    """``count`` requests per class, visitors drawn from the database with a Zipf-like skew."""
    pools = visitor_pools(enforcer)
    unrestricted = skewed_visits(pools.unrestricted, count)
    restricted = skewed_visits(pools.restricted, count)
    # Each class times one path: only the restricted visitors whose request takes it.
    signing_up = skewed_visits(
        answering(enforcer, pools.restricted, "POST", "/api/accounts", Outcome.BLOCK), count)
    ordering = skewed_visits(
        answering(enforcer, pools.restricted, "POST", "/api/orders", Outcome.REQUIRE_GRANT), count)
    proxied = [(("x-forwarded-for", ip),) for ip in unrestricted]  # through the trusted proxy
    clients = grants.client_ids(200)
    identities = skewed_visits(clients, count, seed=3)
    classes = {
        "neutral_unrestricted": _requests(unrestricted, "GET", "/healthz"),
        # The same visitors through the proxy, anonymous and then signed in (no standing).
        "neutral_proxied": [Request(grants.PROXY, "GET", "/healthz", b"", headers)
                                      for headers in proxied],
        "neutral_identified": [
            Request(grants.PROXY, "GET", "/healthz", b"", (*headers, ("x-client-id", client)))
            for headers, client in zip(proxied, identities, strict=True)],
        "neutral_restricted": _requests(restricted, "GET", "/healthz"),
        "signup_block": _requests(signing_up, "POST", "/api/accounts", '{"email": "a@b.eu"}'),
        "out_of_scope_block": _requests(  # no client id, so no grant: blocked
            ordering, "POST", "/api/orders", '{"pair": "BTC-EUR", "side": "buy", "amount": "1"}'
        ),
    }
    granted = skewed_visits(clients, count, seed=5)
    grant_classes = {
        "in_scope_grant": grants.orders(ordering, granted, grants.IN_SCOPE),
        "out_of_scope_grant": grants.orders(ordering, granted, grants.OUT_OF_SCOPE),
    }
    return InprocessClasses(classes, grant_classes, clients)


def run_inprocess(enforcer: Enforcer, count: int,
                  progress: ProgressReport = quiet) -> list[ClassResult]:
    progress("in-process", f"drawing {count:,} requests per class from {enforcer.geoip.path}")
    made = inprocess_classes(enforcer, count)
    classes, grant_classes, clients = made.plain, made.granted, made.clients
    steps = enumerate((*classes, *grant_classes), 1)
    total = len(classes) + len(grant_classes)

    def step(apps: dict[str, Any]) -> None:
        number, name = next(steps)
        progress("in-process", f"{name} ({number}/{total}): {', '.join(apps)}")
    trivial = apps.trivial_app()  # one app, bare and behind each middleware: the same routes
    behind = {"bare": trivial, "floor": apps.floor(trivial),
              "micafence": apps.guarded(trivial, watch=False), "naive": apps.naive(trivial)}

    async def run_all() -> list[ClassResult]:
        # The set-up's objects (visitor pools, databases) out of the collector's way: otherwise
        # the first class timed pays for full collections over them.
        gc.collect()
        gc.freeze()
        results = []
        for name, requests in classes.items():
            step(behind)
            results.append(await measure(name, requests, behind))
        progress("in-process", "grant checks: starting a private redis-server")
        async with grants.granted_app(clients, trivial) as on_redis:
            granting = {"bare": trivial, "floor": behind["floor"], "micafence": on_redis}
            for name, requests in grant_classes.items():
                step(granting)
                results.append(await measure(name, requests, granting))
        return results

    results = asyncio.run(run_all())
    for result in results:
        _check_status(result)
    return results


# What micafence must answer in each class: otherwise the benchmark timed the wrong path.
_EXPECTED_STATUS = {"signup_block": 451, "out_of_scope_block": 451, "out_of_scope_grant": 451}


def _check_status(result: ClassResult) -> None:
    """Every request of a class answered as the class says: else it timed a mix of paths."""
    expected = _EXPECTED_STATUS.get(result.name)
    wanted = frozenset([expected]) if expected is not None else result.statuses["bare"]
    answered = result.statuses["micafence"]
    if answered != wanted or len(answered) != 1:
        raise MicafenceError(
            f"benchmark class {result.name}: micafence answered {sorted(answered)}, not "
            f"{sorted(wanted)}; the policy or database does not give this class one path"
        )
    if result.statuses["floor"] != result.statuses["bare"]:
        raise MicafenceError(f"benchmark class {result.name}: the floor middleware answered "
                             f"{sorted(result.statuses['floor'])}, the bare app "
                             f"{sorted(result.statuses['bare'])}")


def run_http(enforcer: Enforcer, rounds: int, seconds: int,
             progress: ProgressReport = quiet) -> list[Any]:
    pools = visitor_pools(enforcer)
    rng = random.Random(3)
    neutral = [Row("GET", "/healthz", "", ip) for ip in skewed_visits(pools.unrestricted, 4000)]
    mix: list[Row] = []
    for scenario in MIX:
        visits = skewed_visits(scenario.visitors(enforcer, pools), scenario.weight * 40,
                               seed=rng.randrange(1 << 30))
        mix.extend(Row(scenario.method, scenario.path, scenario.body, ip) for ip in visits)
    rng.shuffle(mix)
    results = []
    progress("HTTP", "starting uvicorn servers: bare, micafence, naive, floor")
    with servers(["bare", "micafence", "naive", "floor"], _server_env()) as urls:
        results.append(paired_throughput("neutral", urls, rows_script(neutral), rounds, seconds,
                                         progress=progress))
        pair = {k: urls[k] for k in ("bare", "micafence")}  # the peers: neutral traffic only
        results.append(paired_throughput("mix", pair, rows_script(mix), rounds, seconds,
                                         progress=progress))
        results.append(paired_throughput("rotating_v6", pair, rotating_v6_script(), rounds,
                                         seconds, progress=progress))
    return results


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MICAFENCE_BENCH_")}


_LOCUST_USERS = 16
# Locust's columns kept in the report: counts, rate, and the latency distribution (ms).
_LOCUST_FIGURES = ("Request Count", "Failure Count", "Requests/s", "50%", "90%", "95%", "99%",
                   "99.9%", "100%")


def run_locust(locustfile: Path, seconds: int, results_dir: Path,
               progress: ProgressReport = quiet) -> dict[str, Any]:
    """The mix's latency distribution under locust (FastHttpUser), against micafence: the
    whole mix's and each scenario's figures, and every failure (a request answered otherwise
    than micafence decides for its visitor: bench/locustfile.py)."""
    if not locustfile.is_file():
        raise MicafenceError(f"no locustfile at {locustfile} (run from the repository root)")
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    results_dir.mkdir(parents=True, exist_ok=True)
    progress("locust", "starting a uvicorn server: micafence")
    with servers(["micafence"], _server_env()) as urls:
        progress("locust", f"the mix, {_LOCUST_USERS} users for {seconds} s")
        subprocess.run(
            [locust, "-f", str(locustfile), "--headless", "--users", str(_LOCUST_USERS),
             "--spawn-rate", str(_LOCUST_USERS), "--run-time", f"{seconds}s",
             "--host", urls["micafence"], "--only-summary",
             "--policy", apps.policy_path(), "--geoip-db", apps.database_path(),
             "--csv", str(results_dir / "locust"), "--html", str(results_dir / "locust.html"),
             "--exit-code-on-error", "0"],
            check=True, capture_output=True, timeout=seconds + 60,
        )
    with (results_dir / "locust_stats.csv").open(newline="") as handle:
        rows = {row["Name"]: {key: _number(row[key]) for key in _LOCUST_FIGURES}
                for row in csv.DictReader(handle)}
    with (results_dir / "locust_failures.csv").open(newline="") as handle:
        failures = [{"scenario": row["Name"], "message": _failure_message(row["Error"]),
                     "occurrences": int(row["Occurrences"])} for row in csv.DictReader(handle)]
    total = rows.pop("Aggregated")
    return {**total, "users": _LOCUST_USERS, "seconds": seconds, "scenarios": rows,
            "failures": failures}


def _number(cell: str) -> float | None:
    try:
        return int(cell) if cell.isdigit() else float(cell)
    except ValueError:
        return None  # "N/A": no request of that name


def _failure_message(error: str) -> str:
    """The locustfile's own message, out of locust's ``CatchResponseError('...')``."""
    prefix, suffix = "CatchResponseError(", ")"
    if error.startswith(prefix) and error.endswith(suffix):
        return str(error[len(prefix):-len(suffix)].strip("'\""))
    return error


def render_locust(locust: dict[str, Any]) -> list[str]:
    """The report's locust part: the mix's latency distribution, then any failure."""
    lines = [f"Locust, the mix against micafence ({locust['users']} users, {locust['seconds']} "
             "s): latency in ms",
             f"{'scenario':<20}{'requests':>10}{'failures':>10}{'p50':>7}{'p90':>7}{'p99':>7}"
             f"{'p99.9':>7}{'max':>7}"]
    for name, row in [*locust["scenarios"].items(), ("all", locust)]:
        cells = "".join(f"{_cell(row[key]):>7}" for key in ("50%", "90%", "99%", "99.9%", "100%"))
        lines.append(f"{name:<20}{_cell(row['Request Count']):>10}"
                     f"{_cell(row['Failure Count']):>10}{cells}")
    return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def metrics_of(inprocess: list[ClassResult], http: list[Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for result in inprocess:
        prefix = f"inprocess.{result.name}"
        for app, timing in result.timings.items():
            metrics[f"{prefix}.{app}_us"] = round(timing.p50_us, 3)
            if app != "bare":
                metrics[f"{prefix}.{app}_overhead_us"] = round(result.overhead_us(app), 3)
                metrics[f"{prefix}.{app}_overhead"] = round(result.overhead(app), 4)
        metrics[f"{prefix}.micafence_p99_us"] = round(result.micafence.p99_us, 3)
        metrics[f"{prefix}.overhead"] = metrics[f"{prefix}.micafence_overhead"]
        if result.naive is not None:
            metrics[f"{prefix}.times_faster_than_naive"] = round(
                result.naive.p50_us / result.micafence.p50_us, 3)
    by_name = {result.name: result for result in inprocess}
    identified, anonymous = by_name.get("neutral_identified"), by_name.get(
        "neutral_proxied")
    if identified is not None and anonymous is not None:  # what knowing the client costs
        metrics["inprocess.identified_extra"] = round(
            (identified.micafence.p50_us - anonymous.micafence.p50_us) / anonymous.bare.p50_us, 4)
    for run in http:
        metrics[f"http.{run.scenario}.throughput_ratio"] = round(run.ratio_to_bare, 4)
        for name, rps in run.rps.items():
            metrics[f"http.{run.scenario}.{name}_rps"] = round(rps, 1)
        if run.ratio_to_naive is not None:
            metrics[f"http.{run.scenario}.times_naive"] = round(run.ratio_to_naive, 3)
        if run.floor_ratio is not None:
            metrics[f"http.{run.scenario}.floor_ratio"] = round(run.floor_ratio, 4)
        if run.gap_to_floor is not None:
            metrics[f"http.{run.scenario}.gap_to_floor"] = round(run.gap_to_floor, 4)
    return metrics


def check_budget(
    metrics: dict[str, float], budget: tuple[Line, ...] = BUDGET
) -> list[tuple[Line, float | None, bool | None]]:
    """Each budget line with this run's value and whether it is met (None: not measured)."""
    rows: list[tuple[Line, float | None, bool | None]] = []
    for line in budget:
        value = metrics.get(line.metric)
        rows.append((line, value, None if value is None else line.met_by(value)))
    return rows


def check_baseline(metrics: dict[str, float], baseline_path: Path) -> list[str]:
    """Regressions against the baseline beyond its tolerance.

    Every figure compared is a fraction of the bare app in the same run (an overhead, a gap to
    the floor, a throughput ratio), so a tolerance is an absolute number in that unit: one
    ``tolerance``, and ``tolerances`` for the figures that wander more (the grant checks)."""
    try:
        baseline = json.loads(baseline_path.read_text())
        default = float(baseline["tolerance"])
        tolerances = {k: float(v) for k, v in baseline.get("tolerances", {}).items()}
        reference_metrics = {k: float(v) for k, v in baseline["metrics"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MicafenceError(f"cannot read the baseline {baseline_path}: {error}") from error
    failures = []
    for metric, reference in reference_metrics.items():
        tolerance = tolerances.get(metric, default)
        value = metrics.get(metric)
        if value is None:
            continue  # not measured in this run (e.g. --quick skips HTTP)
        if metric.endswith(_LOWER_IS_BETTER):
            worse = value > reference + tolerance
        elif metric.endswith(_HIGHER_IS_BETTER):
            worse = value < reference - tolerance
        else:
            raise MicafenceError(f"baseline {baseline_path}: {metric} is no overhead, gap or "
                                 "throughput ratio; the check cannot tell which way is worse")
        if worse:
            failures.append(f"{metric}: {value} vs baseline {reference} (tolerance "
                            f"{tolerance} of bare)")
    return failures


def _fraction(value: float) -> str:
    return f"{value:+.3f}"


def render(inprocess: list[ClassResult], http: list[Any], metrics: dict[str, float],
           budget: tuple[Line, ...] = BUDGET,
           speed: rewrite_speed.PageSpeed | None = None) -> str:
    lines = ["In-process, a trivial Starlette route (PlainTextResponse(\"ok\")) bare and behind "
             "each middleware, same run",
             "µs per request (medians over paired rounds); overhead = (app - bare) / bare, "
             "a fraction of the bare route's own time",
             f"{'class':<22}{'bare µs':>9}{'floor µs':>10}{'overhead':>9}{'mica µs':>9}"
             f"{'mica p99':>10}{'+µs':>8}{'overhead':>9}{'naive µs':>10}{'overhead':>9}"
             f"{'vs naive':>9}"]
    for r in inprocess:
        naive = (f"{r.naive.p50_us:>10.2f}{_fraction(r.overhead('naive')):>9}"
                 f"{r.naive.p50_us / r.micafence.p50_us:>8.1f}x" if r.naive else "")
        lines.append(f"{r.name:<22}{r.bare.p50_us:>9.2f}{r.timings['floor'].p50_us:>10.2f}"
                     f"{_fraction(r.overhead('floor')):>9}{r.micafence.p50_us:>9.2f}"
                     f"{r.micafence.p99_us:>10.2f}{r.overhead_us():>+8.2f}"
                     f"{_fraction(r.overhead()):>9}{naive}")
    lines.append("A negative overhead: micafence answered 451 without running the route.")
    if speed is not None:
        lines += ["", *rewrite_speed.render(speed)]
    if http:
        lines += ["", "HTTP under uvicorn (the demo exchange), wrk paired rounds "
                  "(requests/s, medians; ratios within a round)",
                  f"{'scenario':<14}{'bare':>9}{'floor':>9}{'micafence':>11}{'naive':>9}"
                  f"{'floor/bare':>12}{'mica/bare':>11}{'gap':>8}{'vs naive':>10}"]
        for run in http:
            rps = run.rps
            floor_rps = f"{rps['floor']:>9.0f}" if "floor" in rps else f"{'-':>9}"
            naive_rps = f"{rps['naive']:>9.0f}" if "naive" in rps else f"{'-':>9}"
            floor = f"{run.floor_ratio:>12.3f}" if run.floor_ratio is not None else f"{'-':>12}"
            gap = f"{run.gap_to_floor:>+8.3f}" if run.gap_to_floor is not None else f"{'-':>8}"
            vs = f"{run.ratio_to_naive:>9.1f}x" if run.ratio_to_naive else f"{'-':>10}"
            lines.append(f"{run.scenario:<14}{rps['bare']:>9.0f}{floor_rps}"
                         f"{rps['micafence']:>11.0f}{naive_rps}{floor}{run.ratio_to_bare:>11.3f}"
                         f"{gap}{vs}")
        lines.append("floor: a pure-ASGI middleware that only passes send on; gap = (floor - "
                     "micafence) / bare, median over rounds")
    lines += ["", "Budget (this run's own figures; PASS or FAIL, nothing scaled)"]
    released = {line.metric: line.limit for line in BUDGET}
    for line, value, ok in check_budget(metrics, budget):
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        shown = "not measured in this run" if value is None else f"{value} {line.unit}"
        changed = ("" if line.limit == released[line.metric]
                   else f", set by --budget; the release budget is {line.op} "
                        f"{released[line.metric]}")
        lines.append(f"  {verdict} {line.what}: {shown} (budget {line.op} {line.limit}{changed})")
    return "\n".join(lines)


def _overrides(pairs: list[str] | None) -> dict[str, float]:
    overrides: dict[str, float] = {}
    for pair in pairs or ():
        metric, sep, limit = pair.partition("=")
        try:
            if not sep:
                raise ValueError(pair)
            overrides[metric.strip()] = float(limit)
        except ValueError:
            raise MicafenceError(f"--budget {pair!r}: expected METRIC=LIMIT, e.g. "
                                 "inprocess.neutral_unrestricted.overhead=0.19") from None
    return overrides


def main(args: Any) -> int:
    budget = budget_with(_overrides(args.budget))
    if args.policy:
        os.environ[apps.POLICY_ENV] = str(args.policy)
    if args.geoip_db:
        os.environ[apps.DATABASE_ENV] = str(args.geoip_db)
    load_at_start = list(os.getloadavg())  # other work on the machine skews every figure
    progress = Progress()
    progress("start", f"policy {apps.policy_path()}, database {apps.database_path()}"
             + (", --quick: in-process only, small samples" if args.quick else ""))
    enforcer = Enforcer(load_policy(apps.policy_path()), GeoIPDatabase(apps.database_path()))
    started = time.monotonic()
    count = 3000 if args.quick else 20000
    inprocess = run_inprocess(enforcer, count, progress)
    progress("pages", f"{', '.join(label for label, _ in SIZES)} pages ({', '.join(CODINGS)}): "
             "bare, behind micafence and through the engine alone; then the loop lag")
    speed = rewrite_speed.run(lambda app: apps.guarded(app, watch=False), args.quick)
    http = [] if args.quick else run_http(enforcer, rounds=5, seconds=2, progress=progress)
    metrics = metrics_of(inprocess, http) | speed.metrics()
    verdicts = check_budget(metrics, budget)
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "load_average": load_at_start},
        "metrics": metrics,
        "budget": {line.metric: {"op": line.op, "limit": line.limit, "value": value, "met": ok,
                                 "what": line.what, "unit": line.unit}
                   for line, value, ok in verdicts},
        "distributions": {"inprocess": {
            result.name: {app: timing.distribution_us for app, timing in result.timings.items()}
            for result in inprocess}},
    }
    if args.locust and not args.quick:
        report["locust"] = run_locust(Path(args.locustfile), 15, Path(args.results_dir),
                                      progress)
    report["seconds"] = round(time.monotonic() - started, 1)
    progress("done", f"measured in {report['seconds']} s")
    print(render(inprocess, http, metrics, budget, speed))
    if "locust" in report:
        print("\n" + "\n".join(render_locust(report["locust"])))
    print("\nLimits: in-process figures are the wall-clock time of calls in one Python process "
          "(other work on the same cores inflates them); HTTP throughput is bounded by the "
          f"single uvicorn worker sharing {os.cpu_count()} cores with wrk. "
          "Load average at the start: " + " ".join(f"{x:.2f}" for x in report["machine"]
                                                  ["load_average"]) + ".")
    if args.json:
        written = Path(args.json)
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(json.dumps(report, indent=2) + "\n")
        page = written.with_suffix(".html")  # read back: the page shows what the JSON holds
        page.write_text(render_html(json.loads(written.read_text())), encoding="utf-8")
        progress("report", f"{written} and its charts, {page}")
    failed = False
    locust_failures = report.get("locust", {}).get("failures", [])
    if locust_failures:  # a request answered otherwise than micafence decides: the fence broke
        print("\nLOCUST FAILURES (answered otherwise than micafence decides for the visitor):\n  "
              + "\n  ".join(f"{f['occurrences']:>6}  {f['message']}" for f in locust_failures))
        failed = True
    if args.check:
        missed = [line for line, _, ok in verdicts if ok is False]
        failures = check_baseline(metrics, Path(args.check))
        if missed:
            print("\nBUDGET MISSED:\n  " + "\n  ".join(
                f"{line.metric} (budget {line.op} {line.limit})" for line in missed))
        if failures:
            print("\nREGRESSION against " + args.check + ":\n  " + "\n  ".join(failures))
        else:
            print(f"\nNo regression against {args.check}.")
        failed = failed or bool(missed or failures)
    return 1 if failed else 0

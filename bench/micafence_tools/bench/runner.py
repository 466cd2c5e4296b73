"""``micafence bench``: run the benchmarks, print the table, check against a baseline."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micafence.decide import Enforcer
from micafence.errors import MicafenceError
from micafence.location.geo import GeoIPDatabase
from micafence.middleware import MicafenceMiddleware
from micafence.policy.loader import load_policy
from micafence.policy.model import Outcome
from micafence_tools.bench import apps, grants, pages
from micafence_tools.bench.http import (
    Row,
    paired_throughput,
    rotating_v6_script,
    rows_script,
    servers,
)
from micafence_tools.bench.inprocess import ClassResult, Request, measure
from micafence_tools.bench.traffic import MIX, answering, skewed_visits, visitor_pools


@dataclass(frozen=True, slots=True)
class Target:
    metric: str
    op: str  # "<=" or ">="
    limit: float
    what: str

    def met_by(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit


TARGETS = (
    Target("inprocess.neutral_unrestricted.overhead_us", "<=", 1.5,
           "in-process overhead, non-restricted visitor, neutral route (p50)"),
    Target("inprocess.neutral_restricted.overhead_us", "<=", 1.5,
           "in-process overhead, restricted visitor, neutral route (p50)"),
    Target("inprocess.in_scope_grant.overhead_us", "<=", 5.0,
           "in-process overhead, in-scope grant check on the Redis store, cache warm (p50)"),
    Target("inprocess.neutral_unrestricted.times_faster_than_naive", ">=", 4.0,
           "micafence vs the naive BaseHTTPMiddleware + geoip2 peer (in-process)"),
    Target("http.neutral.throughput_ratio", ">=", 0.95, "HTTP throughput, neutral traffic"),
    Target("http.mix.throughput_ratio", ">=", 0.90, "HTTP throughput, the release mix"),
    Target("http.rotating_v6.throughput_ratio", ">=", 0.70,
           "HTTP throughput, every lookup a cache miss (rotating IPv6)"),
    Target("http.neutral.times_naive", ">=", 4.0, "HTTP throughput vs the naive peer"),
)
# The µs targets were set on a machine where a bare Starlette route cost this much in-process.
REFERENCE_BARE_ROUTE_US = 6.4
_SPEED_OF = "inprocess.neutral_unrestricted.bare_p50_us"  # this machine's bare route
# Ratios compared with the baseline, and which way is better.
_LOWER_IS_BETTER = ("cost_ratio",)


def _requests(visits: list[str], method: str, path: str, body: str = "") -> list[Request]:
    return [Request(ip, method, path, body.encode()) for ip in visits]


def run_inprocess(enforcer: Enforcer, count: int) -> list[ClassResult]:
    pools = visitor_pools(enforcer)
    unrestricted = skewed_visits(pools.unrestricted, count)
    restricted = skewed_visits(pools.restricted, count)
    # Each class times one path: only the restricted visitors whose request takes it.
    signing_up = skewed_visits(
        answering(enforcer, pools.restricted, "POST", "/api/accounts", Outcome.BLOCK), count)
    ordering = skewed_visits(
        answering(enforcer, pools.restricted, "POST", "/api/orders", Outcome.REQUIRE_GRANT), count)
    classes = {
        "neutral_unrestricted": _requests(unrestricted, "GET", "/healthz"),
        "neutral_restricted": _requests(restricted, "GET", "/healthz"),
        "signup_block": _requests(signing_up, "POST", "/api/accounts", '{"email": "a@b.eu"}'),
        "out_of_scope_block": _requests(  # no client id, so no grant: blocked
            ordering, "POST", "/api/orders", '{"pair": "BTC-EUR", "side": "buy", "amount": "1"}'
        ),
    }
    clients = grants.client_ids(200)
    granted = skewed_visits(clients, count, seed=5)
    grant_classes = {
        "in_scope_grant": grants.orders(ordering, granted, grants.IN_SCOPE),
        "out_of_scope_grant": grants.orders(ordering, granted, grants.OUT_OF_SCOPE),
    }
    page_classes = {  # fewer samples for larger pages: a 1 MB page takes milliseconds
        f"page_{label.replace(' ', '')}": _requests(restricted[:max(5, count * 10 // size)],
                                                   "GET", f"/pages/{size}")
        for label, size in pages.SIZES
    }
    bare, guarded, naive = apps.bare_app(), apps.micafence_app(), apps.naive_app()
    page_bare = pages.page_app()
    page_guarded = MicafenceMiddleware(pages.page_app(), policy=apps.policy_path(),
                                       geoip_db=apps.database_path(), watch=False)

    async def run_all() -> list[ClassResult]:
        # The set-up's objects (visitor pools, databases) out of the collector's way: otherwise
        # the first class timed pays for full collections over them.
        gc.collect()
        gc.freeze()
        results = [await measure(name, requests, bare, guarded, naive)
                   for name, requests in classes.items()]
        async with grants.granted_app(clients) as on_redis:
            results += [await measure(name, requests, bare, on_redis, None)
                        for name, requests in grant_classes.items()]
        results += [await measure(name, requests, page_bare, page_guarded, None)
                    for name, requests in page_classes.items()]
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


def run_http(enforcer: Enforcer, rounds: int, seconds: int) -> list[Any]:
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
    with servers(["bare", "micafence", "naive", "passthrough"], _server_env()) as urls:
        results.append(paired_throughput("neutral", urls, rows_script(neutral), rounds, seconds))
        pair = {k: urls[k] for k in ("bare", "micafence")}  # the peers: neutral traffic only
        results.append(paired_throughput("mix", pair, rows_script(mix), rounds, seconds))
        results.append(paired_throughput("rotating_v6", pair, rotating_v6_script(), rounds,
                                         seconds))
    return results


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MICAFENCE_BENCH_")}


def run_locust(locustfile: Path, seconds: int, results_dir: Path) -> dict[str, Any]:
    """The mix's latency distribution under locust (FastHttpUser), against micafence."""
    if not locustfile.is_file():
        raise MicafenceError(f"no locustfile at {locustfile} (run from the repository root)")
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    results_dir.mkdir(parents=True, exist_ok=True)
    with servers(["micafence"], _server_env()) as urls:
        subprocess.run(
            [locust, "-f", str(locustfile), "--headless", "--users", "16", "--spawn-rate", "16",
             "--run-time", f"{seconds}s", "--host", urls["micafence"], "--only-summary",
             "--csv", str(results_dir / "locust"), "--html", str(results_dir / "locust.html"),
             "--exit-code-on-error", "0"],
            check=True, capture_output=True, timeout=seconds + 60,
        )
    stats = (results_dir / "locust_stats.csv").read_text().splitlines()
    header = stats[0].split(",")
    total = dict(zip(header, stats[-1].split(","), strict=False))
    return {key: total.get(key) for key in ("Request Count", "Failure Count", "50%", "95%",
                                            "99%", "Requests/s")}


def metrics_of(inprocess: list[ClassResult], http: list[Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for result in inprocess:
        prefix = f"inprocess.{result.name}"
        metrics[f"{prefix}.p50_us"] = round(result.micafence.p50_us, 3)
        metrics[f"{prefix}.p99_us"] = round(result.micafence.p99_us, 3)
        metrics[f"{prefix}.bare_p50_us"] = round(result.bare.p50_us, 3)
        metrics[f"{prefix}.overhead_us"] = round(result.overhead_us, 3)
        metrics[f"{prefix}.cost_ratio"] = round(result.ratio_to_bare, 4)
        if result.naive is not None:
            metrics[f"{prefix}.naive_p50_us"] = round(result.naive.p50_us, 3)
            metrics[f"{prefix}.times_faster_than_naive"] = round(
                result.naive.p50_us / result.micafence.p50_us, 3)
    for run in http:
        metrics[f"http.{run.scenario}.throughput_ratio"] = round(run.ratio_to_bare, 4)
        for name, rps in run.rps.items():
            metrics[f"http.{run.scenario}.{name}_rps"] = round(rps, 1)
        if run.ratio_to_naive is not None:
            metrics[f"http.{run.scenario}.times_naive"] = round(run.ratio_to_naive, 3)
        if run.passthrough_ratio is not None:
            metrics[f"http.{run.scenario}.passthrough_ratio"] = round(run.passthrough_ratio, 4)
    return metrics


def check_targets(metrics: dict[str, float]) -> list[tuple[Target, float | None, bool | None]]:
    rows: list[tuple[Target, float | None, bool | None]] = []
    for target in TARGETS:
        value = metrics.get(target.metric)
        rows.append((target, value, None if value is None else target.met_by(value)))
    return rows


def check_baseline(metrics: dict[str, float], baseline_path: Path) -> list[str]:
    """Regressions against the baseline's ratios, beyond its stored tolerance."""
    baseline = json.loads(baseline_path.read_text())
    tolerance = float(baseline["tolerance"])
    failures = []
    for metric, reference in baseline["metrics"].items():
        value = metrics.get(metric)
        if value is None:
            continue  # not measured in this run (e.g. --quick skips HTTP)
        lower_better = metric.endswith(_LOWER_IS_BETTER)
        worse = value > reference * (1 + tolerance) if lower_better else (
            value < reference * (1 - tolerance))
        if worse:
            failures.append(f"{metric}: {value} vs baseline {reference} (tolerance "
                            f"{tolerance:.0%})")
    return failures


def render(inprocess: list[ClassResult], http: list[Any], metrics: dict[str, float]) -> str:
    lines = ["In-process (µs per request; ratio = micafence / bare)",
             f"{'class':<22}{'bare p50':>10}{'mica p50':>10}{'mica p99':>10}{'overhead':>10}"
             f"{'ratio':>8}{'naive p50':>11}{'vs naive':>10}"]
    page_rows = [r for r in inprocess if r.name.startswith("page_")]
    for r in inprocess:
        if r in page_rows:
            continue
        naive = f"{r.naive.p50_us:>11.2f}{r.naive.p50_us / r.micafence.p50_us:>9.1f}x" \
            if r.naive else ""
        lines.append(f"{r.name:<22}{r.bare.p50_us:>10.2f}{r.micafence.p50_us:>10.2f}"
                     f"{r.micafence.p99_us:>10.2f}{r.overhead_us:>10.2f}{r.ratio_to_bare:>8.3f}"
                     f"{naive}")
    if page_rows:
        lines += ["", "Restricted visitor's HTML page through the promotion rewriter (µs per page; "
                  "outside the mix target)",
                  f"{'page':<22}{'bare p50':>10}{'mica p50':>10}{'mica p99':>10}{'overhead':>10}"
                  f"{'ratio':>8}"]
        lines += [f"{r.name:<22}{r.bare.p50_us:>10.0f}{r.micafence.p50_us:>10.0f}"
                  f"{r.micafence.p99_us:>10.0f}{r.overhead_us:>10.0f}{r.ratio_to_bare:>8.2f}"
                  for r in page_rows]
    if http:
        lines += ["", "HTTP under uvicorn, wrk paired runs (requests/s, medians)",
                  f"{'scenario':<14}{'bare':>10}{'micafence':>11}{'naive':>10}{'ratio':>8}"
                  f"{'vs naive':>10}{'floor':>8}"]
        for run in http:
            naive_rps = f"{run.rps['naive']:>10.0f}" if "naive" in run.rps else f"{'-':>10}"
            vs = f"{run.ratio_to_naive:>9.1f}x" if run.ratio_to_naive else f"{'-':>10}"
            floor = f"{run.passthrough_ratio:>8.3f}" if run.passthrough_ratio else f"{'-':>8}"
            lines.append(f"{run.scenario:<14}{run.rps['bare']:>10.0f}{run.rps['micafence']:>11.0f}"
                         f"{naive_rps}{run.ratio_to_bare:>8.3f}{vs}{floor}")
        lines.append("floor: a pure-ASGI middleware that only wraps send, in the same rounds "
                     "(what any response-touching middleware scores here)")
    lines += ["", "Targets"]
    bare_route = metrics.get(_SPEED_OF)
    for target, value, ok in check_targets(metrics):
        verdict = "n/a " if ok is None else ("PASS" if ok else "MISS")
        shown = "not measured" if value is None else f"{value}"
        lines.append(f"  {verdict} {target.what}: {shown} (target {target.op} {target.limit})")
        if value is not None and bare_route and target.metric.endswith("_us"):
            # Informative only: the verdict above is this machine's own figure.
            scaled = value * REFERENCE_BARE_ROUTE_US / bare_route
            lines.append(f"       at the reference machine's speed (bare route "
                         f"{REFERENCE_BARE_ROUTE_US} µs there, {bare_route:.1f} µs here): "
                         f"{scaled:.2f} µs, {'within' if target.met_by(scaled) else 'over'}")
    return "\n".join(lines)


def main(args: Any) -> int:
    if args.policy:
        os.environ[apps.POLICY_ENV] = str(args.policy)
    if args.geoip_db:
        os.environ[apps.DATABASE_ENV] = str(args.geoip_db)
    enforcer = Enforcer(load_policy(apps.policy_path()), GeoIPDatabase(apps.database_path()))
    started = time.monotonic()
    count = 3000 if args.quick else 20000
    inprocess = run_inprocess(enforcer, count)
    http = [] if args.quick else run_http(enforcer, rounds=5, seconds=2)
    metrics = metrics_of(inprocess, http)
    report: dict[str, Any] = {
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "metrics": metrics,
        "targets": {t.metric: ok for t, _, ok in check_targets(metrics)},
    }
    if args.locust and not args.quick:
        report["locust"] = run_locust(Path(args.locustfile), 15, Path(args.results_dir))
    report["seconds"] = round(time.monotonic() - started, 1)
    print(render(inprocess, http, metrics))
    if "locust" in report:
        print(f"\nLocust mix latency (ms, micafence): {report['locust']}")
    print("\nLimits: in-process figures are CPU time of one Python process; HTTP throughput is "
          "bounded by the single uvicorn worker sharing 2 cores with wrk.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.check:
        failures = check_baseline(metrics, Path(args.check))
        if failures:
            print("\nREGRESSION against " + args.check + ":\n  " + "\n  ".join(failures))
            return 1
        print(f"\nNo regression against {args.check}.")
    return 0

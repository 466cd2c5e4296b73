"""How micafence's in-process overhead grows with the policy and the visitors (issue 20, item 4).

Each row is a generated policy (the packaged default policy with its ``routes`` or ``zones``
replaced) or a visitor population, measured as ``micafence bench`` measures: the trivial
Starlette route bare and behind micafence, taking turns in blocks of 250 requests over the
same requests, medians of the blocks' medians, overhead as a fraction of the bare route in the
same run. Written to a table in ``bench/results/``::

    python -m micafence_tools.bench.scaling --out bench/results/scaling-DATE.txt

- **Routes** (10, 100, 1,000 entries): the default policy's own entries that the benchmark's
  requests need, then generated ones (neutral, service, account-creation and promotion
  entries over ``/gen/N/...`` paths, literal and with parameters and ``**``) up to the count.
- **Zones** (1, 10, 100): the restricted countries (EU, EEA, GB) spread over that many zones,
  every rule naming every zone: with 100 zones a country is in several, as overlapping
  regimes put it.
- **Visitors** (10 k, 1 M distinct addresses): neutral GETs whose addresses are drawn with the
  benchmark's Zipf-like skew (s = 1.1) from a population of that many distinct addresses. The
  1 M population is **sampled**: a stream of 200,000 requests drawn from it warms the
  decision cache (65,536 visitors, emptied when full) by deciding them, as a worker's traffic
  would, then the next 20,000 of the same stream are timed; the share of those requests whose
  visitor was already held is printed (a simulation of the cache's entry ceiling over the
  stream; the byte ceiling may empty it a little earlier).

Besides the warm overhead, each policy row gives the **cold decision**: the median µs of
``Enforcer.decide`` for a restricted visitor it has never seen (a GeoIP look-up, the zones, the
route matched against the entries), what a cache miss costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
from ruamel.yaml import YAML

from micafence.decide import VISITOR_CACHE_ENTRIES, Enforcer
from micafence.location.geo import GeoIPDatabase
from micafence.middleware import MicafenceMiddleware
from micafence.policy.loader import default_policy_path, load_policy
from micafence.policy.probe import build_scope
from micafence_tools.bench import apps
from micafence_tools.bench.inprocess import ASGIApp, Request, _scope, _time_block, _timing
from micafence_tools.bench.traffic import skewed_visits, visitor_pools

_BLOCK = 250


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many requests each row takes."""

    count: int = 10_000  # timed requests per class and policy row
    stream_warm: int = 200_000  # a visitor row's stream: requests decided before timing
    stream_timed: int = 20_000  # and then timed


FULL = Sizes()
QUICK = Sizes(count=1000, stream_warm=20_000, stream_timed=2000)  # a smoke test: seconds
#: The default policy's entries the measured requests need (sign-up, orders, the promo feed).
_KEPT_ROUTES = ("accounts.api", "service.orders", "promotions.feed", "neutral.static",
                "wind-down.cancel-orders")
_RESTRICTED_COUNTRIES = (
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "NO", "IS", "LI",
    "GB",
)
_GENERATED = (  # class, methods, path pattern (N: the entry's number)
    ("neutral", ["GET", "HEAD"], "/gen/{n}/items/**"),
    ("service", ["POST", "PUT"], "/gen/{n}/orders"),
    ("neutral", None, "/gen/{n}/{{item}}/detail"),
    ("account_creation", ["POST"], "/gen/{n}/signup/**"),
    ("promotion", None, "/gen/{n}/promo"),
    ("service", ["POST"], "/gen/{n}/*/trade"),
)


def _default() -> dict[str, Any]:
    yaml = YAML(typ="safe")
    loaded: dict[str, Any] = yaml.load(Path(default_policy_path()).read_text())
    return loaded


def routes_policy(count: int) -> dict[str, Any]:
    """The default policy with ``count`` route entries."""
    policy = _default()
    kept = [route for route in policy["routes"] if route["id"] in _KEPT_ROUTES]
    generated = []
    for number in range(count - len(kept)):
        route_class, methods, pattern = _GENERATED[number % len(_GENERATED)]
        entry: dict[str, Any] = {"id": f"gen.{number}", "class": route_class,
                                 "path": pattern.format(n=number)}
        if methods:
            entry["methods"] = methods
        generated.append(entry)
    policy["routes"] = kept + generated
    policy["promotions"]["routes"] = {
        key: value for key, value in policy["promotions"]["routes"].items() if key in _KEPT_ROUTES}
    return policy


def zones_policy(count: int) -> dict[str, Any]:
    """The default policy with the restricted countries over ``count`` zones (and the unknown
    country's zone), every rule naming all of them."""
    policy = _default()
    countries = _RESTRICTED_COUNTRIES
    zones: dict[str, Any] = {}
    for index in range(count):
        if count <= len(countries):
            members = list(countries[index::count])
        else:  # more zones than countries: each country in several zones
            members = [countries[index % len(countries)],
                       countries[(index * 7 + 3) % len(countries)]]
        zones[f"z{index}"] = {"countries": sorted(set(members)), "promotions": "forbidden"}
    zones["unknown_country"] = policy["zones"]["unknown_country"]
    policy["zones"] = zones
    for rule in policy["rules"]:
        rule["zones"] = list(zones)
    policy["promotions"].pop("approved", None)  # the uk zone is gone
    return policy


def _write(policy: dict[str, Any], folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with path.open("w") as out:
        yaml.dump(policy, out)
    return path


def population(size: int, seed: int = 13) -> list[str]:
    """``size`` distinct addresses from the database's own networks (random addresses in
    each, the networks taken in turn)."""
    rng = random.Random(seed)
    with maxminddb.open_database(apps.database_path()) as reader:
        networks = [network for network, _ in reader
                    if network.version == 4 or network.prefixlen >= 32]
    found: dict[str, None] = {}
    for network in itertools.cycle(networks):
        if len(found) >= size:
            break
        found[str(network.network_address + rng.randrange(network.num_addresses))] = None
    return list(found)


async def _paired(bare: ASGIApp, guarded: ASGIApp, requests: Sequence[Request],
                  warm: bool = True) -> tuple[float, float]:
    """Bare and micafence µs per request (medians of paired blocks), as ``micafence bench``."""
    prepared = [(request, _scope(request)) for request in requests]
    if warm:
        seen: set[Request] = set()
        for request, template in prepared:
            if request not in seen:
                seen.add(request)
                await _time_block(bare, [(request, template)], [])
                await _time_block(guarded, [(request, template)], [])
    rounds: dict[str, list[list[int]]] = {"bare": [], "micafence": []}
    for number, start in enumerate(range(0, len(prepared), _BLOCK)):
        block = prepared[start:start + _BLOCK]
        order = (("bare", bare), ("micafence", guarded))
        for label, app in (order if number % 2 == 0 else order[::-1]):
            samples: list[int] = []
            await _time_block(app, block, samples)
            rounds[label].append(samples)
    return _timing(rounds["bare"]).p50_us, _timing(rounds["micafence"]).p50_us


def _cold_decide_us(enforcer: Enforcer, addresses: Sequence[str]) -> float:
    """Median µs of a decision on a visitor the enforcer has not seen (each decided once)."""
    samples = []
    for address in addresses:
        scope = build_scope(address, "GET", "/gen/0/items/x")
        start = time.perf_counter_ns()
        enforcer.decide(scope)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _hit_share(stream: Sequence[str], warm: int, limit: int) -> float:
    """The share of the timed part of ``stream`` whose visitor a cache of ``limit`` entries,
    emptied when full, holds already (the decision cache's entry ceiling)."""
    held: set[str] = set()
    hits = 0
    for index, visitor in enumerate(stream):
        if visitor in held:
            hits += index >= warm
            continue
        if len(held) >= limit:
            held.clear()
        held.add(visitor)
    return hits / max(1, len(stream) - warm)


def _row(label: str, bare: float, mica: float, extra: str = "") -> str:
    added = mica - bare
    return f"{label:36} {bare:8.2f} {mica:8.2f} {added:+7.2f} {added / bare:+8.3f} {extra}"


async def _policy_rows(label: str, path: Path, database: GeoIPDatabase, sizes: Sizes
                       ) -> list[str]:
    enforcer = Enforcer(load_policy(path), database)
    pools = visitor_pools(enforcer, per_network=8)
    trivial = apps.trivial_app()
    guarded = MicafenceMiddleware(trivial, policy=str(path), geoip_db=database, watch=False)
    cold = _cold_decide_us(Enforcer(load_policy(path), database), pools.restricted[:2000])
    rows = []
    for kind, pool in (("non-restricted", pools.unrestricted), ("restricted", pools.restricted)):
        if not pool:
            rows.append(f"{label + ', ' + kind:36} (no such visitor in the database)")
            continue
        visits = skewed_visits(pool, sizes.count)
        requests = [Request(ip, "GET", "/healthz") for ip in visits]
        bare, mica = await _paired(trivial, guarded, requests)
        rows.append(_row(f"{label}, {kind}", bare, mica,
                         f"{cold:8.2f}" if kind == "restricted" else ""))
    return rows


async def _visitor_row(size: int, database: GeoIPDatabase, sizes: Sizes) -> str:
    people = population(size)
    warm = sizes.stream_warm
    stream = skewed_visits(people, warm + sizes.stream_timed, seed=17)
    trivial = apps.trivial_app()
    guarded = MicafenceMiddleware(trivial, policy=apps.policy_path(), geoip_db=database,
                                  watch=False)
    for address in stream[:warm]:  # a worker's traffic so far: the caches' state
        guarded.enforcer.decide(build_scope(address, "GET", "/healthz"))
    requests = [Request(ip, "GET", "/healthz") for ip in stream[warm:]]
    bare, mica = await _paired(trivial, guarded, requests, warm=False)
    share = _hit_share(stream, warm, VISITOR_CACHE_ENTRIES)
    distinct = len(set(stream[warm:]))
    return _row(f"{size:,} visitors (mixed)", bare, mica,
                f"{'':8} held {share:.0%}, {distinct:,} distinct of {len(requests):,}")


def run(sizes: Sizes = FULL) -> str:
    logging.getLogger("micafence").setLevel(logging.ERROR)  # start-up warnings: not ours here
    started = time.monotonic()
    load = os.getloadavg()
    database = GeoIPDatabase(apps.database_path())
    lines = [
        "# python -m micafence_tools.bench.scaling" + (" --quick" if sizes == QUICK else ""),
        f"# load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} "
        "cores; µs per request, medians of paired blocks of 250 (bare and micafence "
        "alternating); overhead = (micafence - bare) / bare, the bare trivial route in the "
        "same row; cold = Enforcer.decide on an unseen restricted visitor (a cache miss)",
        f"{'row':36} {'bare µs':>8} {'mica µs':>8} {'+µs':>7} {'overhead':>8} {'cold µs':>8}",
    ]

    async def rows() -> list[str]:
        out: list[str] = []
        with tempfile.TemporaryDirectory(prefix="micafence-scaling-") as folder:
            for count in (10, 100, 1000):
                path = _write(routes_policy(count), Path(folder), f"routes-{count}")
                out += await _policy_rows(f"{count:,} route entries", path, database, sizes)
            for count in (1, 10, 100):
                path = _write(zones_policy(count), Path(folder), f"zones-{count}")
                out += await _policy_rows(f"{count} zone{'s' if count > 1 else ''}", path,
                                          database, sizes)
        gc.collect()
        for size in (10_000, 1_000_000):
            out.append(await _visitor_row(size, database, sizes))
        return out

    lines += asyncio.run(rows())
    lines.append(f"# {time.monotonic() - started:.0f} s; load average at end "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m micafence_tools.bench.scaling",
                                     description="the overhead as the policy and visitors grow")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the requests per row (a smoke test, not a figure)")
    args = parser.parse_args(argv)
    table = run(QUICK if args.quick else FULL)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

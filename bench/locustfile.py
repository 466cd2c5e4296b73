"""Locust load test: the release traffic mix against a running micafence server.

Run by ``micafence bench --locust`` (headless, bounded in users and time), or by hand:

    locust -f bench/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:8000 \
        [--policy POLICY] [--geoip-db DB]

Give it the policy and database the server runs with (default: the benchmark's, from
``$MICAFENCE_BENCH_POLICY`` and ``$MICAFENCE_BENCH_DB``, else the packaged policy and the
bundled test database). At start, every visitor's request of the mix is decided in-process by
micafence on them (:mod:`micafence_tools.bench.expectations`, what ``micafence explain`` does),
and each request must get exactly that status: a 451 where micafence blocks, the demo exchange's
own answer where it lets the request through. Any other status is a failure naming the visitor,
the route, what was expected and what came: a refused non-EU order (over-block) or an accepted
EU sign-up (bypass) shows in locust's failures, not among its successes.

The mix and its weights are ``micafence_tools.bench.traffic.MIX`` (documented in
docs/benchmark.md), so the wrk throughput runs and this latency run load the same traffic. On a
2-core machine a single locust process competes with the server for CPU: use this for the
latency distribution of the mix, and ``wrk`` (in ``micafence bench``) for throughput.
"""

from __future__ import annotations

import logging
import random
from typing import Any, ClassVar

from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from micafence.decide import Enforcer
from micafence.location.geo import GeoIPDatabase
from micafence.policy.loader import load_policy
from micafence_tools.bench.apps import database_path, policy_path
from micafence_tools.bench.expectations import Expected, expectations, request_headers
from micafence_tools.bench.traffic import MIX, Scenario, skewed_visits, visitor_pools

_VISITS_PER_SCENARIO = 5000


class _Mix:
    """The scenarios this run loads, their visits and what each visitor must be answered:
    filled once at start (``init``), from the policy and database given."""

    scenarios: ClassVar[list[Scenario]] = []
    weights: ClassVar[list[int]] = []
    visits: ClassVar[dict[str, list[str]]] = {}
    expected: ClassVar[dict[str, dict[str, Expected]]] = {}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--policy", default=None,
                        help="the micafence policy the server runs with (default: "
                        "$MICAFENCE_BENCH_POLICY, else the packaged policy)")
    parser.add_argument("--geoip-db", default=None,
                        help="the MaxMind database the server runs with (default: "
                        "$MICAFENCE_BENCH_DB, else the bundled test database)")


@events.init.add_listener
def _decide_the_mix(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    policy = (options and options.policy) or policy_path()
    database = (options and options.geoip_db) or database_path()
    enforcer = Enforcer(load_policy(policy), GeoIPDatabase(database))
    pools = visitor_pools(enforcer)
    visitors = {scenario: scenario.visitors(enforcer, pools) for scenario in MIX}
    for scenario, addresses in visitors.items():
        if not addresses:  # this policy and database give the scenario no visitor
            logging.warning("micafence mix: no visitor for %s under %s and %s: not loaded",
                            scenario.name, policy, database)
    loaded = {scenario: addresses for scenario, addresses in visitors.items() if addresses}
    if not loaded:
        raise SystemExit(f"micafence mix: no scenario has a visitor under {policy} and "
                         f"{database}")
    _Mix.scenarios = list(loaded)
    _Mix.weights = [scenario.weight for scenario in loaded]
    _Mix.visits = {scenario.name: skewed_visits(addresses, _VISITS_PER_SCENARIO)
                   for scenario, addresses in loaded.items()}
    _Mix.expected = expectations(enforcer, loaded)
    logging.info("micafence mix: expectations decided with %s and %s", policy, database)


class ExchangeVisitor(FastHttpUser):
    """One visitor of the demo exchange; each task is one request drawn from the mix."""

    @task
    def visit(self) -> None:
        scenario = random.choices(_Mix.scenarios, weights=_Mix.weights)[0]
        address = random.choice(_Mix.visits[scenario.name])
        expected = _Mix.expected[scenario.name][address]
        with self.client.request(scenario.method, scenario.path, data=scenario.body or None,
                                 headers=request_headers(scenario, address), name=scenario.name,
                                 catch_response=True) as response:
            got = response.status_code
            if got == expected.status:
                response.success()
            else:
                # One failure line per visitor kind and answer, not per address: locust groups
                # failures by their message.
                response.failure(
                    f"{scenario.name} visitor {expected.visitor}: {scenario.method} "
                    f"{scenario.path} expected {expected.describe()}, got {got}"
                    + (f" ({response.error})" if got == 0 and response.error else ""))

"""Locust load test: the release traffic mix against a running micafence server.

Run by ``micafence bench --locust`` (headless, bounded in users and time), or by hand:

    locust -f bench/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:8000

The mix and its weights are ``micafence_tools.bench.traffic.MIX`` (documented in the README), so the
wrk throughput runs and this latency run load the same traffic. On a 2-core machine a single
locust process competes with the server for CPU: use this for the latency distribution of the
mix, and ``wrk`` (in ``micafence bench``) for throughput.
"""

from __future__ import annotations

import random

from locust import task
from locust.contrib.fasthttp import FastHttpUser

from micafence.decide import Enforcer
from micafence.location.geo import GeoIPDatabase
from micafence.policy.loader import load_policy
from micafence_tools.bench.apps import database_path, policy_path
from micafence_tools.bench.traffic import MIX, skewed_visits, visitor_pools

_ENFORCER = Enforcer(load_policy(policy_path()), GeoIPDatabase(database_path()))
_POOLS = visitor_pools(_ENFORCER)
_VISITS = {scenario.name: skewed_visits(scenario.visitors(_ENFORCER, _POOLS), 5000)
           for scenario in MIX}
_SCENARIOS = list(MIX)
_WEIGHTS = [scenario.weight for scenario in MIX]


class ExchangeVisitor(FastHttpUser):
    """One visitor of the demo exchange; each task is one request drawn from the mix."""

    @task
    def visit(self) -> None:
        scenario = random.choices(_SCENARIOS, weights=_WEIGHTS)[0]
        headers = {"X-Forwarded-For": random.choice(_VISITS[scenario.name])}
        if scenario.body:
            headers["Content-Type"] = "application/json"
        with self.client.request(scenario.method, scenario.path, data=scenario.body or None,
                                 headers=headers, name=scenario.name,
                                 catch_response=True) as response:
            # 451 is the fence working, not a failure.
            if response.status_code in (200, 201, 204, 451):
                response.success()

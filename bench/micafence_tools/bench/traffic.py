"""Visitors for the benchmarks: thousands of distinct addresses, a real-world-like skew.

Addresses are drawn from the networks of the GeoIP database itself (so they resolve like real
visitors), split into restricted and non-restricted visitors by the policy, and visited with a
Zipf-like skew: a few addresses send much of the traffic, most are seen a handful of times.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import maxminddb

from micafence.decide import Enforcer
from micafence.policy.model import Outcome
from micafence.policy.probe import build_scope

_MAX_NETWORKS = 200_000  # a production database has millions: a sample is enough


@dataclass(frozen=True, slots=True)
class VisitorPools:
    restricted: tuple[str, ...]  # some rule applies (EU, EEA, unknown country, …)
    unrestricted: tuple[str, ...]


def visitor_pools(enforcer: Enforcer, per_network: int = 24, seed: int = 7) -> VisitorPools:
    """Distinct addresses from the database's networks, split by whether rules apply."""
    rng = random.Random(seed)
    restricted: list[str] = []
    unrestricted: list[str] = []
    with maxminddb.open_database(enforcer.geoip.path) as reader:
        for network, _record in itertools.islice(reader, _MAX_NETWORKS):
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen < 32:
                continue  # IPv4 aliases (::/96, ::ffff:0:0/96, 2002::/16) and huge blocks
            size = network.num_addresses
            for _ in range(min(per_network, size)):
                address = str(network.network_address + rng.randrange(size))
                decision = enforcer.decide(build_scope(address, "GET", "/"))
                (restricted if decision.restricted else unrestricted).append(address)
    return VisitorPools(tuple(dict.fromkeys(restricted)), tuple(dict.fromkeys(unrestricted)))


def answering(
    enforcer: Enforcer, addresses: Sequence[str], method: str, path: str, outcome: Outcome
) -> tuple[str, ...]:
    """The ``addresses`` whose ``method path`` request meets ``outcome``.

    A restricted pool mixes zones (an EU visitor's order needs a grant, a UK visitor's passes):
    a class timing one path takes only the visitors that reach it.
    """
    return tuple(address for address in addresses
                 if enforcer.decide(build_scope(address, method, path)).outcome is outcome)


def skewed_visits(addresses: Sequence[str], count: int, seed: int = 11) -> list[str]:
    """``count`` visits over ``addresses`` with a Zipf-like (s = 1.1) popularity skew."""
    if not addresses:
        raise ValueError("no addresses to visit: the database holds no such visitors")
    rng = random.Random(seed)
    ranked = list(addresses)
    rng.shuffle(ranked)
    weights = [1.0 / (rank**1.1) for rank in range(1, len(ranked) + 1)]
    return rng.choices(ranked, weights=weights, k=count)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of request in the traffic mix."""

    name: str
    weight: int  # out of 100
    method: str
    path: str
    body: str
    restricted: bool  # drawn from restricted visitors (EU, EEA, …) or not
    outcome: Outcome | None = None  # only the visitors whose request meets this outcome

    def visitors(self, enforcer: Enforcer, pools: VisitorPools) -> tuple[str, ...]:
        pool = pools.restricted if self.restricted else pools.unrestricted
        if self.outcome is None:
            return pool
        return answering(enforcer, pool, self.method, self.path, self.outcome)


#: The release mix (weights out of 100), shared by the HTTP benchmark and the locustfile.
#: Mostly neutral browsing by non-restricted visitors, as on a real exchange; the restricted
#: share is what a firm relying on reverse solicitation should see: small.
MIX: tuple[Scenario, ...] = (
    Scenario("neutral", 60, "GET", "/healthz", "", False),
    Scenario("home", 10, "GET", "/", "", False),
    Scenario("order", 10, "POST", "/api/orders",
             '{"pair": "BTC-USD", "side": "buy", "amount": "0.1"}', False),
    Scenario("restricted_neutral", 10, "GET", "/healthz", "", True),
    Scenario("restricted_home", 4, "GET", "/", "", True),
    Scenario("restricted_signup", 3, "POST", "/api/accounts", '{"email": "a@b.eu"}', True,
             Outcome.BLOCK),
    Scenario("restricted_order", 3, "POST", "/api/orders",  # no grant held: blocked
             '{"pair": "BTC-EUR", "side": "buy", "amount": "0.1"}', True, Outcome.REQUIRE_GRANT),
)

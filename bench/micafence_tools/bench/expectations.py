"""What the demo exchange behind micafence must answer each visitor of the traffic mix.

Asked of micafence itself: each visitor's request goes, in-process, through the decision and the
side-effect-free pipeline ``micafence explain`` uses, on the policy and database the load test
runs with. Where micafence answers, that status is expected; where it lets the request through,
the demo exchange's own answer for the route is (:data:`DEMO_ANSWERS`). So a load test counts a
refused US order (over-block) and an accepted EU sign-up (bypass) as failures, whichever policy
and database it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from micafence.decide import Enforcer
from micafence.pipeline import dry_pipeline, trial
from micafence.policy.probe import build_scope
from micafence.store.opener import open_store
from micafence_tools.bench.traffic import Scenario

#: The load generator's own address as the server sees it; the visitor is in X-Forwarded-For,
#: which the packaged policy trusts from loopback (a policy that does not is decided as such).
PROXY = "127.0.0.1"

#: What the demo exchange answers a request of the mix that micafence lets through. These are
#: the app's own statuses (micafence knows the policy, not the app), so they are written here
#: rather than asked: ``micafence_tools.demo.app`` answers its health check and home page 200,
#: and a created order or account 201.
DEMO_ANSWERS: Mapping[tuple[str, str], int] = {
    ("GET", "/healthz"): 200,
    ("GET", "/"): 200,
    ("POST", "/api/orders"): 201,
    ("POST", "/api/accounts"): 201,
}


@dataclass(frozen=True, slots=True)
class Expected:
    """The status one visitor's request must get, and how a failure names the visitor."""

    status: int
    reason: str | None  # micafence's reason code when it answers, else None
    visitor: str  # "from SE (zones eu by country:SE)"

    def describe(self) -> str:
        return f"{self.status} {self.reason}" if self.reason else str(self.status)


def request_headers(scenario: Scenario, address: str) -> dict[str, str]:
    """The headers the load test sends for ``address``'s request of ``scenario``."""
    headers = {"X-Forwarded-For": address}
    if scenario.body:
        headers["Content-Type"] = "application/json"
    return headers


def expectations(
    enforcer: Enforcer, visitors: Mapping[Scenario, Sequence[str]]
) -> dict[str, dict[str, Expected]]:
    """``{scenario name: {address: Expected}}`` for every address of every scenario."""

    async def ask() -> dict[str, dict[str, Expected]]:
        store = open_store("memory://")
        pipeline = dry_pipeline(store)
        try:
            table: dict[str, dict[str, Expected]] = {}
            for scenario, addresses in visitors.items():
                answers = table.setdefault(scenario.name, {})
                for address in dict.fromkeys(addresses):
                    # Without the body: the mix's bodies declare no residence and no client,
                    # so the decision reads nothing from them.
                    scope = build_scope(PROXY, scenario.method, scenario.path,
                                        request_headers(scenario, address).items())
                    tried = await trial(enforcer, pipeline, scope)
                    decision = tried.decision
                    answered = tried.status  # None: micafence let it through to the app
                    placed = (f"zones {', '.join(decision.zones)} by "
                              f"{', '.join(decision.signals)}" if decision.zones else "no zone")
                    visitor = f"from {decision.country or 'no known country'} ({placed})"
                    answers[address] = Expected(
                        DEMO_ANSWERS[(scenario.method, scenario.path)] if answered is None
                        else answered,
                        None if answered is None else decision.reason, visitor)
            return table
        finally:
            await store.close()

    return asyncio.run(ask())

"""``micafence test``: ops-written expected decisions, checked against a policy (like ``opa test``).

A cases file::

    cases:
      - name: Swedish visitor cannot open an account
        request: {ip: 89.160.20.112, method: POST, path: /api/accounts}
        expect: {blocked: true, reason: eu.account_creation, rule: no-new-accounts}

``request`` takes ``ip`` (the direct peer; omit for no address), ``method`` (GET),
``path`` (may carry a query) and ``headers`` (a mapping). ``expect`` may check ``blocked``,
``outcome``, ``reason``, ``rule``, ``route``, ``route_class``, ``zones``, ``country`` and
``promotions``; a case must check at least one. Each request runs through the whole pipeline
(:func:`micafence.pipeline.trial`): decided, then settled against the store's grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from micafence.decide import Enforcer
from micafence.pipeline import Pipeline, trial
from micafence.policy.probe import build_scope
from micafence.policy.yamlfile import Node, read_yaml

_EXPECT_KEYS = (
    "blocked", "outcome", "reason", "rule", "route", "route_class", "zones", "country",
    "promotions",
)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    line: int | None
    scope: dict[str, Any]
    expect: dict[str, object]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    failures: tuple[str, ...]  # empty: passed

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(path: str) -> list[Case]:
    """Read and validate a cases file; errors name the file, key path and line."""
    root, _ = read_yaml(path)
    cases: list[Case] = []
    for item in root.mapping(("cases",), required=("cases",))["cases"].items():
        fields = item.mapping(("name", "request", "expect"), required=("name", "request", "expect"))
        request = fields["request"].mapping(("ip", "method", "path", "headers"))
        headers: list[tuple[str, str]] = []
        if "headers" in request:
            for name, value in request["headers"].dict_items():
                headers.append((name, value.text()))
        scope = build_scope(
            request["ip"].text() if "ip" in request else None,
            request["method"].text() if "method" in request else "GET",
            request["path"].text() if "path" in request else "/",
            headers,
        )
        expect_node = fields["expect"]
        expect = {
            key: _expected(key, node) for key, node in expect_node.mapping(_EXPECT_KEYS).items()
        }
        if not expect:
            expect_node.fail("a case must expect something")
        cases.append(Case(fields["name"].text(), item.line, scope, expect))
    return cases


def _expected(key: str, node: Node) -> object:
    if key == "blocked":
        return node.flag()
    if key == "zones":
        return sorted(item.text() for item in node.items())
    if node.value is None:
        return None
    return node.text()


async def run_cases(
    enforcer: Enforcer, pipeline: Pipeline, cases: list[Case]
) -> list[CaseResult]:
    """Run every case's request through ``pipeline`` and compare with what it expects."""
    results: list[CaseResult] = []
    for case in cases:
        decision = (await trial(enforcer, pipeline, case.scope)).decision
        actual = decision.as_dict()
        seen = {
            "blocked": decision.blocked,
            "outcome": decision.outcome.value,
            "reason": decision.reason,
            "rule": decision.rule_id,
            "route": decision.route_id,
            "route_class": decision.route_class,
            "zones": sorted(decision.zones),
            "country": actual["country"],
            "promotions": decision.promotion_stance.value,
        }
        failures = tuple(
            f"{key}: expected {want!r}, got {seen[key]!r}"
            for key, want in case.expect.items()
            if seen[key] != want
        )
        results.append(CaseResult(case, failures))
    return results

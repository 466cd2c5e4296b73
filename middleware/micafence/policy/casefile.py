"""``micafence test``: ops-written expected decisions, checked against a policy (like ``opa test``).

A cases file::

    geoip_db: ../../tests/data/maxmind/GeoIP2-Country-Test.mmdb
    cases:
      - name: Swedish visitor cannot open an account
        request: {ip: 89.160.20.112, method: POST, path: /api/accounts}
        expect: {blocked: true, reason: eu.account_creation, rule: no-new-accounts}

``request`` takes ``ip`` (the direct peer; omit for no address), ``method`` (GET),
``path`` (may carry a query) and ``headers`` (a mapping). ``expect`` may check ``blocked``,
``outcome``, ``reason``, ``rule``, ``route``, ``route_class``, ``zones``, ``country`` and
``promotions``; a case must check at least one. Each request runs through the whole pipeline
(:func:`micafence.pipeline.trial`): decided, then settled against the store's grants.

``geoip_db`` (optional) names the MaxMind database the cases are written for, relative to the
cases file: addresses mean a country only in the database they were picked from. A
``--geoip-db`` given to ``micafence test`` overrides it. A failing case whose public address
the database used does not hold says so, naming that database.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from micafence.decide import Enforcer
from micafence.errors import PolicyError
from micafence.location.geo import GeoIPDatabase
from micafence.pipeline import Pipeline, trial
from micafence.policy.probe import build_scope
from micafence.policy.problems import Problems
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
class CaseFile:
    path: str
    cases: list[Case]
    geoip_db: Path | None  # the database it names, resolved against the file's directory
    geoip_db_line: int | None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    failures: tuple[str, ...]  # empty: passed
    actual: dict[str, object]  # what the decision had for each key the case expects
    decision: dict[str, object]  # the whole decision (Decision.as_dict())
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(path: str) -> list[Case]:
    """Read and validate a cases file; the first error raises :class:`PolicyError` naming the
    file, key path and line."""
    root, _ = read_yaml(path)
    parsed = _parse(root, path, Problems())
    assert parsed is not None  # a strict load raises its first error
    return parsed.cases


def check_cases(path: str) -> tuple[CaseFile | None, list[PolicyError]]:
    """The cases file, or every error in it (each case checked on its own), in file order."""
    try:
        root, _ = read_yaml(path)
    except PolicyError as exc:
        return None, [exc]
    problems = Problems(collect=True)
    parsed = _parse(root, path, problems)
    return (None, problems.ordered()) if problems.found else (parsed, [])


def _parse(root: Node, path: str, problems: Problems) -> CaseFile | None:
    top = problems.attempt(partial(root.mapping, ("cases", "geoip_db"), ("cases",), problems),
                           None)
    if top is None:
        return None
    geoip_db: Path | None = None
    if "geoip_db" in top:
        named = problems.attempt(top["geoip_db"].text, None)
        if named is not None:
            geoip_db = Path(os.path.normpath(Path(path).parent / named))
    cases: list[Case] = []
    if "cases" in top:
        no_items: list[Node] = []
        for item in problems.attempt(top["cases"].items, no_items):
            case = problems.attempt(partial(_case, item), None)
            if case is not None:
                cases.append(case)
    if problems.found:
        return None
    line = top["geoip_db"].line if "geoip_db" in top else None
    return CaseFile(path, cases, geoip_db, line)


def _case(item: Node) -> Case:
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
    return Case(fields["name"].text(), item.line, scope, expect)


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
        started = time.perf_counter()
        decision = (await trial(enforcer, pipeline, case.scope)).decision
        seconds = time.perf_counter() - started
        whole = decision.as_dict()
        seen = {
            "blocked": decision.blocked,
            "outcome": decision.outcome.value,
            "reason": decision.reason,
            "rule": decision.rule_id,
            "route": decision.route_id,
            "route_class": decision.route_class,
            "zones": sorted(decision.zones),
            "country": whole["country"],
            "promotions": decision.promotion_stance.value,
        }
        failures = tuple(
            f"{key}: expected {want!r}, got {seen[key]!r}"
            for key, want in case.expect.items()
            if seen[key] != want
        )
        if failures:
            failures += _not_in_database(decision.client_ip, enforcer.geoip)
        actual = {key: seen[key] for key in case.expect}
        results.append(CaseResult(case, failures, actual, whole, seconds))
    return results


def _not_in_database(ip: str | None, database: GeoIPDatabase) -> tuple[str, ...]:
    """Why a case may fail that has nothing to do with the policy: its public address is not in
    the database used, as when cases written for one database run against another."""
    if ip is None:
        return ()
    try:
        if not ipaddress.ip_address(ip).is_global or database.reader.get(ip) is not None:
            return ()
    except ValueError:  # not an address: nothing to say about the database
        return ()
    return (f"{ip} is not in the database used, {database.path}: give the one these cases are "
            "written for with --geoip-db, or name it in the cases file (geoip_db:)",)

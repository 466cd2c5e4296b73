"""Which route entry decides (policy format versions 1 and 2), the ``unlisted`` default, and what
``micafence check`` says about a policy's precedence."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micafence import Enforcer, GeoIPDatabase, load_policy_text
from micafence.cli import main
from micafence.decision import Decision
from micafence.errors import PolicyError
from micafence.pipeline import dry_pipeline, trial
from micafence.policy.coverage import witness_paths
from micafence.policy.model import Route
from micafence.policy.probe import build_scope
from micafence.policy.routes import RouteTable, compile_pattern, normalize_path, pattern_segments
from micafence.store.memory import MemoryStore
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

SE, CH, PROXY = "89.160.20.112", "2a02:d000::1", "127.0.0.1"

HEAD = """policy: {version}
client_identity: {{source: header, trusted_sources: [127.0.0.0/8]}}
client_ip: {{trusted_proxies: [127.0.0.0/8]}}
zones:
  eu: {{countries: [SE, DE]}}
rules:
  - {{id: no-accounts, zones: [eu], class: account_creation, outcome: block}}
  - {{id: no-promotions, zones: [eu], class: promotion, outcome: block}}
  - {{id: services-need-grant, zones: [eu], class: service, outcome: require_grant}}
  - {{id: wind-down, zones: [eu], class: wind_down, outcome: allow_identified}}
"""

# The repair: a catch-all service entry with the exchange's wind-down routes under it.
CATCH_ALL = """routes:
  - {id: api.all, class: service, path: /api/**}
  - {id: withdrawals, class: wind_down, methods: [POST], path: /api/withdrawals}
  - {id: orders.read, class: neutral, methods: [GET], path: /api/orders}
"""


def enforcer(text: str) -> Enforcer:
    return Enforcer(load_policy_text(text, "test-policy.yaml"), GeoIPDatabase(COUNTRY_DB))


def decide(fence: Enforcer, method: str, path: str, headers: dict[str, str] | None = None,
           ip: str = SE, websocket: bool = False) -> Decision:
    """What the whole pipeline decides for a request from ``ip`` (through the local proxy)."""
    sent = [("X-Forwarded-For", ip), *(headers or {}).items()]
    scope = build_scope(PROXY, method, path, sent)
    if websocket:
        scope = {**scope, "type": "websocket"}
    return asyncio.run(trial(fence, dry_pipeline(MemoryStore()), scope)).decision


def summary(decision: Decision) -> tuple[bool, str, str | None, str]:
    return decision.blocked, decision.reason, decision.route_id, decision.route_class


# -- the most specific entry decides (version 2) ----------------------------------------------


def test_version_2_lets_a_wind_down_route_live_under_a_catch_all_service() -> None:
    fence = enforcer(HEAD.format(version=2) + CATCH_ALL)
    client = {"X-Client-Id": "client-7"}
    assert summary(decide(fence, "POST", "/api/withdrawals", client)) == (
        False, "eu.wind_down", "withdrawals", "wind_down")
    assert summary(decide(fence, "POST", "/api/withdrawals")) == (
        True, "eu.wind_down.unidentified", "withdrawals", "wind_down")
    # Everything else under /api is a service: the endpoints of the issue, none listed.
    for method, path in [("POST", "/api/v2/orders"), ("POST", "/api/orders/batch"),
                         ("POST", "/api/futures/orders"), ("POST", "/api/deposits"),
                         ("POST", "/api/convert"), ("POST", "/api/signup"),
                         ("GET", "/api/withdrawals"), ("POST", "/API//Withdrawals/x")]:
        assert summary(decide(fence, method, path, client)) == (
            True, "eu.no_grant", "api.all", "service"), (method, path)
    assert summary(decide(fence, "GET", "/api/orders")) == (False, "pass", "orders.read",
                                                            "neutral")


def test_version_1_keeps_the_most_severe_match() -> None:
    fence = enforcer(HEAD.format(version=1) + CATCH_ALL)
    assert summary(decide(fence, "POST", "/api/withdrawals", {"X-Client-Id": "client-7"})) == (
        True, "eu.no_grant", "api.all", "service")
    assert summary(decide(fence, "GET", "/api/orders")) == (
        True, "eu.no_grant", "api.all", "service")


def table(*entries: tuple[str, str, list[str] | None]) -> RouteTable:
    routes = [Route(f"r{i}", "neutral", path, frozenset(methods) if methods else None)
              for i, (path, _, methods) in enumerate(entries)]
    return RouteTable(routes, version=2)


SPECIFIC = [
    # (entries as (pattern, label, methods), method, path, the label that decides)
    pytest.param([("/api/orders/{id}", "param", None), ("/api/orders/batch", "literal", None)],
                 "POST", "/api/orders/batch", "literal", id="literal-beats-parameter"),
    pytest.param([("/api/orders/**", "rest", None), ("/api/orders/{id}", "param", None)],
                 "POST", "/api/orders/7", "param", id="parameter-beats-rest"),
    pytest.param([("/api/orders/**", "rest", None), ("/api/orders/*", "star", None)],
                 "POST", "/api/orders/7", "star", id="star-is-a-parameter"),
    pytest.param([("/api/futures/**", "product", None),
                  ("/api/*/positions/{id}/close", "close", None)],
                 "POST", "/api/futures/positions/p1/close", "close",
                 id="more-literals-beat-an-earlier-literal"),
    pytest.param([("/earn/**", "rest", None), ("/earn", "exact", None)],
                 "GET", "/earn", "exact", id="ending-beats-rest-matching-nothing"),
    pytest.param([("/earn/{a}/**", "param-rest", None), ("/earn/{a}", "param", None)],
                 "GET", "/earn/eth", "param", id="ending-beats-rest-after-a-parameter"),
    pytest.param([("/x", "any", None), ("/x", "post", ["POST"])],
                 "POST", "/x", "post", id="methods-beat-none-on-the-same-pattern"),
    pytest.param([("/x", "any", None), ("/x", "post", ["POST"])],
                 "GET", "/x", "any", id="a-method-the-entry-does-not-name"),
    pytest.param([("/a/*/c", "first", None), ("/a/b/*", "second", None)],
                 "GET", "/a/b/c", "first", id="tie-goes-to-the-first-listed"),
    pytest.param([("/a/b/*", "first", None), ("/a/*/c", "second", None)],
                 "GET", "/a/b/c", "first", id="tie-goes-to-the-first-listed-reversed"),
    pytest.param([("/**", "all", None), ("/", "root", None)],
                 "GET", "/", "root", id="root"),
]


@pytest.mark.parametrize(("entries", "method", "path", "winner"), SPECIFIC)
def test_the_most_specific_entry_decides(
    entries: list[tuple[str, str, list[str] | None]], method: str, path: str, winner: str
) -> None:
    routes = table(*entries)
    (decided,) = routes.candidates(frozenset({method}), path)
    assert entries[int(decided.id[1:])][1] == winner
    if winner not in ("first", "second"):  # the order of the file matters only for ties
        flipped = table(*reversed(entries))
        (again,) = flipped.candidates(frozenset({method}), path)
        assert entries[len(entries) - 1 - int(again.id[1:])][1] == winner


def test_a_method_override_never_picks_a_laxer_entry() -> None:
    fence = enforcer(HEAD.format(version=2) + """routes:
  - {id: orders.read, class: neutral, methods: [GET], path: /api/orders}
  - {id: orders.place, class: service, methods: [POST], path: /api/orders}
""")
    assert decide(fence, "GET", "/api/orders").route_id == "orders.read"
    for headers, path in [({"X-HTTP-Method-Override": "POST"}, "/api/orders"),
                          ({"X-Method-Override": "post"}, "/api/orders"),
                          ({}, "/api/orders?_method=POST"), ({}, "/api/orders?%5Fmethod=POST")]:
        assert summary(decide(fence, "GET", path, headers)) == (
            True, "eu.no_grant", "orders.place", "service"), (headers, path)
    # ... nor does an override to a method no entry names (the unlisted default, neutral here).
    assert decide(fence, "POST", "/api/orders", {"X-HTTP-Method-Override": "GET"}).route_id \
        == "orders.place"


# -- the unlisted default ------------------------------------------------------------------------

UNLISTED = """unlisted: {safe: neutral, unsafe: service}
routes:
  - {id: signup, class: account_creation, methods: [POST], path: /api/accounts}
  - {id: market, class: neutral, path: /ws/market}
"""


@pytest.mark.parametrize("version", [1, 2])
def test_unlisted_unsafe_methods_fail_closed(version: int) -> None:
    fence = enforcer(HEAD.format(version=version) + UNLISTED)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert summary(decide(fence, method, "/api/v2/orders")) == (
            True, "eu.no_grant", "unlisted", "service"), method
    for method in ("GET", "HEAD", "OPTIONS"):
        assert summary(decide(fence, method, "/api/v2/orders")) == (
            False, "pass", "unlisted", "neutral"), method
    # An override to an unsafe method, or to one no entry names, is unsafe too.
    for override in ("DELETE", "FOO"):
        assert decide(fence, "GET", "/x", {"X-HTTP-Method-Override": override}).route_class \
            == "service", override
    # What an entry names keeps its class; a visitor no rule applies to is not matched.
    assert summary(decide(fence, "POST", "/api/accounts")) == (
        True, "eu.account_creation", "signup", "account_creation")
    swiss = decide(fence, "POST", "/api/v2/orders", ip=CH)
    assert (swiss.blocked, swiss.route_id) == (False, None)


@pytest.mark.parametrize("version", [1, 2])
def test_an_unlisted_websocket_takes_the_stricter_default(version: int) -> None:
    fence = enforcer(HEAD.format(version=version) + UNLISTED)
    assert summary(decide(fence, "GET", "/ws/orders", websocket=True)) == (
        True, "eu.no_grant", "unlisted", "service")
    assert summary(decide(fence, "GET", "/ws/market", websocket=True)) == (
        False, "pass", "market", "neutral")
    # A path some entry names is that entry's, whatever its methods.
    assert decide(fence, "GET", "/api/accounts", websocket=True).route_id == "signup"


def test_without_unlisted_everything_unlisted_is_neutral() -> None:
    fence = enforcer(HEAD.format(version=2) + CATCH_ALL)
    assert summary(decide(fence, "DELETE", "/elsewhere")) == (False, "pass", "unlisted",
                                                              "neutral")


def test_version_1_unlisted_only_when_no_entry_matches() -> None:
    # GET /api/accounts?_method=DELETE: no entry for either method, so the unsafe default;
    # with the POST override the entry matches and the unlisted GET does not count (today's rule).
    fence = enforcer(HEAD.format(version=1) + UNLISTED)
    assert decide(fence, "GET", "/api/accounts?_method=DELETE").route_id == "unlisted"
    assert decide(fence, "GET", "/api/accounts?_method=DELETE").route_class == "service"
    assert decide(fence, "GET", "/api/accounts?_method=POST").route_id == "signup"


NO_ROUTES = "routes: []\n"
BAD = [
    pytest.param("unlisted: {unsafe: services}\n" + NO_ROUTES, "unlisted.unsafe",
                 "'services'", id="unknown-class"),
    pytest.param("unlisted: {post: service}\n" + NO_ROUTES, "unlisted.post", "'post'",
                 id="unknown-key"),
    pytest.param("unlisted: service\n" + NO_ROUTES, "unlisted", "mapping", id="not-a-mapping"),
    pytest.param("routes:\n  - {id: unlisted, class: neutral, path: /x}\n", "routes[0].id",
                 "'unlisted' names what no route lists", id="reserved-route-id"),
    pytest.param(NO_ROUTES, "policy", "unsupported schema version 3 (this reads 1 and 2)",
                 id="version-3"),
]


@pytest.mark.parametrize(("extra", "key_path", "problem"), BAD)
def test_bad_unlisted_names_file_key_and_line(extra: str, key_path: str, problem: str) -> None:
    text = HEAD.format(version=3 if "version" in problem else 2) + extra
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "bad.yaml")
    assert caught.value.file == "bad.yaml"
    assert caught.value.key_path == key_path
    lines = text.splitlines()
    wanted = next(i for i, line in enumerate(lines, 1) if line.startswith(key_path[:6]))
    assert caught.value.line == wanted + (1 if key_path.startswith("routes[") else 0)
    assert problem in caught.value.problem


# -- micafence check ----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def test_check_lists_what_version_2_would_change_in_a_version_1_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    v1 = write(tmp_path, "v1.yaml", HEAD.format(version=1) + CATCH_ALL)
    code, out = check(capsys, str(v1))
    assert code == 0
    line = HEAD.count("\n") + 2  # api.all's line
    notes = [n for n in out.splitlines() if ": notice: " in n]
    assert notes == [
        f"{v1}:{line}: routes[0]: notice: 'api.all' (service) decides GET /api/orders for "
        "visitors in eu (the most severe match, the first among equals); under policy: 2 the "
        "most specific, "
        "'orders.read' (routes[2], neutral), would",
        f"{v1}:{line}: routes[0]: notice: 'api.all' (service) decides POST /api/withdrawals "
        "for visitors in eu (the most severe match, the first among equals); under policy: 2 "
        "the most specific, "
        "'withdrawals' (routes[1], wind_down), would",
    ]
    assert out.splitlines()[-1] == "no errors (2 notes; 1 file checked)"
    # Once the file says version 2 there is nothing to say: each entry decides its own.
    v2 = write(tmp_path, "v2.yaml", HEAD.format(version=2) + CATCH_ALL)
    assert check(capsys, str(v2))[1].splitlines()[-1] == "no errors (1 file checked)"


def test_check_lists_a_version_1_change_for_the_zones_it_concerns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Two matching entries of the same class: version 1 takes the first listed, 2 the specific.
    text = HEAD.format(version=1) + """routes:
  - {id: broad, class: service, path: /api/**}
  - {id: narrow, class: service, methods: [POST], path: /api/orders}
"""
    code, out = check(capsys, str(write(tmp_path, "same.yaml", text)))
    assert code == 0
    assert "'broad' (service) decides POST /api/orders for visitors in eu" in out
    assert "'narrow' (routes[1], service), would" in out


SHADOWED = HEAD.format(version=2) + """routes:
  - {id: withdrawals, class: wind_down, methods: [POST], path: /api/withdrawals}
  - {id: api.all, class: service, path: /api/**}
  - {id: old-withdrawals, class: service, methods: [POST], path: /api/withdrawals}
  - {id: order, class: service, methods: [GET, POST], path: "/api/orders/{id}"}
  - {id: cancel, class: wind_down, methods: [POST, DELETE], path: "/api/orders/*"}
  - {id: first, class: neutral, path: "/a/*/c"}
  - {id: second, class: promotion, path: "/a/b/*"}
"""


def test_check_reports_shadowed_entries_and_ties(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "v2.yaml", SHADOWED)
    code, out = check(capsys, str(path))
    assert code == 0
    first = HEAD.format(version=2).count("\n") + 2
    warnings = [n for n in out.splitlines() if ": warning: " in n]
    assert warnings == [
        f"{path}:{first + 2}: routes[2]: warning: 'old-withdrawals' is shadowed: no request "
        "reaches it; every request it matches (POST /api/withdrawals, ...) is decided by "
        "'withdrawals' (routes[0], wind_down), more specific or equally specific and listed "
        "first",
        f"{path}:{first + 4}: routes[4]: warning: 'cancel' ties with 'order' (routes[3], "
        "service) on POST /api/orders/{x}: equally specific, so 'order', listed first, decides",
        f"{path}:{first + 6}: routes[6]: warning: 'second' ties with 'first' (routes[5], "
        "neutral) on GET /a/b/c (and 8 more): equally specific, so 'first', listed first, "
        "decides",
    ]
    assert out.splitlines()[-1] == "no errors (3 notes; 1 file checked)"
    code, out = check(capsys, "--format", "github", str(path))
    assert code == 0
    assert out.splitlines()[0] == (  # the annotations, then the OK lines
        f"::warning file={path},line={first + 2},title=micafence%3A routes[2]::"
        "'old-withdrawals' is shadowed: no request reaches it; every request it matches "
        "(POST /api/withdrawals, ...) is decided by 'withdrawals' (routes[0], wind_down), more "
        "specific or equally specific and listed first")
    code, out = check(capsys, "--format", "json", str(path))
    report = json.loads(out)
    assert (code, report["ok"], report["note_count"]) == (0, True, 3)
    (entry,) = report["files"]
    assert entry["policy"]["version"] == 2
    assert [(n["key_path"], n["level"], n["line"]) for n in entry["notes"]] == [
        ("routes[2]", "warning", first + 2), ("routes[4]", "warning", first + 4),
        ("routes[6]", "warning", first + 6)]


def test_the_default_policy_has_nothing_to_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, str(DEFAULT_POLICY))
    assert code == 0
    assert out.splitlines()[-1] == "no errors (1 file checked)"
    assert "format version 2, unlisted safe: neutral, unsafe: service" in out


# -- witness paths stand for every path ----------------------------------------------------------

SEGMENTS = ["api", "orders", "v1", "x", "{p}", "*"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=4))
    names = iter(f"{{p{i}}}" for i in range(10))
    segments = [next(names) if s == "{p}" else s for s in segments]
    if draw(st.booleans()):
        segments.append("**")
    return "/" + "/".join(segments)


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns(), min_size=1, max_size=6),
       st.lists(st.sampled_from(["api", "orders", "v1", "x", "other"]), max_size=6))
def test_some_witness_matches_exactly_what_any_path_matches(
    listed: list[str], segments: list[str]
) -> None:
    compiled = [compile_pattern(pattern) for pattern in listed]

    def matching(path: str) -> frozenset[int]:
        canonical = normalize_path(path)
        return frozenset(i for i, regex in enumerate(compiled) if regex.fullmatch(canonical))

    witnesses = witness_paths([pattern_segments(p) for p in listed])
    kinds = {matching(path) for path in witnesses}
    assert matching("/" + "/".join(segments)) in kinds
    assert all(re.fullmatch(r"/[^A-Z]*", path) for path in witnesses)


def test_candidates_are_memoised() -> None:
    routes = table(("/api/**", "rest", None), ("/api/orders", "exact", ["POST"]))
    first = routes.candidates(frozenset({"POST", "GET"}), "/api/orders")
    assert routes.candidates(frozenset({"GET", "POST"}), "/api/orders") is first
    assert [route.id for route in first] == ["r0", "r1"]  # GET's winner, POST's, file order


def test_patterns_crossing_at_every_segment_are_not_analysed_forever(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Entry i has its one literal at segment i: every subset of them can match together.
    paths = ["/" + "/".join("x" if j == i else "*" for j in range(18)) for i in range(18)]
    entries = "".join(f"  - {{id: r{i}, class: neutral, path: {p}}}\n"
                      for i, p in enumerate(paths))
    path = write(tmp_path, "crossed.yaml", HEAD.format(version=2) + "routes:\n" + entries)
    code, out = check(capsys, str(path))
    assert code == 0
    assert f"{path}: routes: warning: precedence not analysed: the route patterns tell more " \
        "than 100000 kinds of path apart" in out

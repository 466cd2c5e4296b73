"""Route matching that cannot be dodged by how a path or a method is spelled."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micafence.policy.model import Route
from micafence.policy.routes import (
    RouteTable,
    compile_pattern,
    normalize_path,
    request_methods,
    spellings,
)

ACCOUNTS = Route("accounts.api", "account_creation", "/api/accounts", frozenset({"POST"}))
POST = frozenset({"POST"})
GET = frozenset({"GET"})
SMALL_PERCENT = "\ufe6a"  # NFKC: "%"


def fullwidth(text: str) -> str:
    """The fullwidth forms of printable ASCII (NFKC folds them back): "a" -> U+FF41."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


def accounts_table() -> RouteTable:
    return RouteTable([ACCOUNTS])


# -- path tricks ------------------------------------------------------------------------------

MATCHING_PATHS = [
    pytest.param("/api/accounts", id="plain"),
    pytest.param("/api/accounts/", id="trailing-slash"),
    pytest.param("//api//accounts", id="double-slashes"),
    pytest.param("/api/accounts//", id="trailing-double-slash"),
    pytest.param("/API/Accounts", id="upper-case"),
    pytest.param("/api/./accounts", id="dot-segment"),
    pytest.param("/api/accounts/.", id="trailing-dot-segment"),
    pytest.param("/api/x/../accounts", id="dot-dot-segment"),
    pytest.param("/api/accounts/x/..", id="trailing-dot-dot"),
    pytest.param("/../api/accounts", id="dot-dot-above-root"),
    pytest.param("/../../../api/accounts", id="many-dot-dots-above-root"),
    pytest.param("/api/%61ccounts", id="percent-encoded"),
    pytest.param("/api/%41CCOUNTS", id="percent-encoded-upper"),
    pytest.param("/api/%2561ccounts", id="double-encoded"),
    pytest.param("/api/%252561ccounts", id="triple-encoded"),
    pytest.param("/api%2faccounts", id="encoded-slash"),
    pytest.param("/api/%2e/accounts", id="encoded-dot"),
    pytest.param("/api/x/%2e%2e/accounts", id="encoded-dot-dot"),
    pytest.param("/api/x/%252e%252e/accounts", id="double-encoded-dot-dot"),
    pytest.param("/api/accounts;jsessionid=1", id="matrix-parameter"),
    pytest.param("/api;v=2/accounts;x=1/", id="matrix-parameters-everywhere"),
    pytest.param("/api/x/..;/accounts", id="dot-dot-with-matrix-parameter"),
    pytest.param("/api/accounts%3bjsessionid=1", id="encoded-semicolon"),
    pytest.param("/api\\accounts", id="backslash"),
    pytest.param("\\api\\accounts\\", id="backslashes-only"),
    pytest.param("/api%5caccounts", id="encoded-backslash"),
    pytest.param("/api/" + fullwidth("accounts"), id="fullwidth-nfkc"),
    pytest.param("/" + fullwidth("API/accounts"), id="fullwidth-slash-nfkc"),
    pytest.param("/api" + fullwidth("\\") + "accounts", id="fullwidth-backslash-nfkc"),
    pytest.param("/api/%EF%BD%81ccounts", id="encoded-fullwidth"),
    pytest.param("/api/accounts%20", id="encoded-trailing-space"),
    pytest.param("/api/accounts%09", id="encoded-trailing-tab"),
    pytest.param("api/accounts", id="no-leading-slash"),
]


@pytest.mark.parametrize("path", MATCHING_PATHS)
def test_path_tricks_still_match(path: str) -> None:
    assert accounts_table().match(POST, path) == (ACCOUNTS,)
    assert normalize_path(path) == "/api/accounts"


NON_MATCHING_PATHS = [
    pytest.param("/api/accounts/extra", id="extra-segment"),
    pytest.param("/api/accountsx", id="longer-segment"),
    pytest.param("/apix/accounts", id="longer-prefix"),
    pytest.param("/api/account", id="shorter-segment"),
    pytest.param("/api", id="prefix-only"),
    pytest.param("/accounts", id="suffix-only"),
    pytest.param("/api/v2/accounts", id="inserted-segment"),
    pytest.param("/api/accounts/..", id="dot-dot-leaves-route"),
    pytest.param("/api/accounts/%2e%2e", id="encoded-dot-dot-leaves-route"),
    pytest.param("/x/api/accounts", id="prefixed"),
    pytest.param("/", id="root"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("path", NON_MATCHING_PATHS)
def test_other_paths_do_not_match(path: str) -> None:
    assert accounts_table().match(POST, path) == ()


NORMALIZE_CASES = [
    pytest.param("", "/", id="empty"),
    pytest.param("/", "/", id="root"),
    pytest.param("///", "/", id="slashes"),
    pytest.param("/..", "/", id="dot-dot-at-root"),
    pytest.param("/a/b/../../..", "/", id="dot-dots-past-root"),
    pytest.param("/a/./b/.", "/a/b", id="dots"),
    pytest.param("a/b", "/a/b", id="relative"),
    pytest.param("/A/B/", "/a/b", id="case-and-trailing-slash"),
    pytest.param("/a%2Fb", "/a/b", id="encoded-slash"),
    pytest.param("/a;x=1;y=2/b", "/a/b", id="matrix-parameters"),
    pytest.param("/;x=1/b", "/b", id="matrix-only-segment"),
    pytest.param("/a/ b /c", "/a/b/c", id="segment-whitespace"),
    pytest.param("/a/%20/c", "/a/c", id="blank-segment"),
    pytest.param("/ﬁle", "/file", id="ligature-nfkc"),
    pytest.param("/Ⅻ", "/xii", id="roman-numeral-nfkc"),
    pytest.param("/%", "/%", id="lone-percent"),
    pytest.param("/%zz", "/%zz", id="bad-escape-kept"),
    pytest.param("/%ff", "/\ufffd", id="invalid-utf8-replaced"),
    pytest.param("/{code}/**", "/{code}/**", id="pattern-syntax-kept"),
]


@pytest.mark.parametrize(("path", "expected"), NORMALIZE_CASES)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


# Inputs that are still "encoded" after one pass: four levels of percent-encoding (the loop
# stops after three), or NFKC turning a fullwidth/small percent sign into "%" after decoding.
IDEMPOTENCY_EXAMPLES = [
    pytest.param("/api/accounts", id="plain"),
    pytest.param("/api/%252561ccounts", id="triple-encoded"),
    pytest.param("/api/%25252561ccounts", id="quadruple-encoded"),
    pytest.param("/api/" + fullwidth("%") + "61ccounts", id="fullwidth-percent"),
    pytest.param("/api/" + SMALL_PERCENT + "61ccounts", id="small-percent"),
    pytest.param("/api/" + fullwidth("%2e%2e") + "/x", id="fullwidth-percent-dot-dot"),
]


@pytest.mark.parametrize("path", IDEMPOTENCY_EXAMPLES)
def test_normalize_path_idempotent_examples(path: str) -> None:
    once = normalize_path(path)
    assert normalize_path(once) == once


path_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from([*"/\\.;%25aAfF6109 ", *fullwidth("%./\\a"), SMALL_PERCENT])),
    st.lists(
        st.sampled_from(
            ["", ".", "..", "%2e", "%2E%2e", "%25", "%2f", "%5c", ";x=1", "A", fullwidth("b")]
        ),
        max_size=8,
    ).map("/".join),
)


@settings(max_examples=500, database=None, deadline=None)
@given(path=path_text)
def test_property_normalize_path_is_idempotent(path: str) -> None:
    once = normalize_path(path)
    assert once.startswith("/")
    assert normalize_path(once) == once


# -- methods ----------------------------------------------------------------------------------

OVERRIDE = b"x-http-method-override"

METHOD_CASES = [
    pytest.param("POST", [], b"", {"POST"}, id="post"),
    pytest.param("post", [], b"", {"POST"}, id="lower-case-method"),
    pytest.param("GET", [], b"", {"GET"}, id="get"),
    pytest.param("HEAD", [], b"", {"HEAD", "GET"}, id="head-is-also-get"),
    pytest.param("GET", [(OVERRIDE, b"post")], b"", {"GET", "POST"}, id="x-http-method-override"),
    pytest.param("GET", [(b"x-http-method", b"POST")], b"", {"GET", "POST"}, id="x-http-method"),
    pytest.param(
        "GET", [(b"x-method-override", b" Post ")], b"", {"GET", "POST"}, id="x-method-override"
    ),
    pytest.param(
        "POST",
        [(OVERRIDE, b"PUT"), (b"x-http-method", b"DELETE"), (b"x-method-override", b"PATCH")],
        b"",
        {"POST", "PUT", "DELETE", "PATCH"},
        id="all-override-headers",
    ),
    pytest.param("GET", [(b"x-override", b"POST")], b"", {"GET"}, id="unrelated-header"),
    pytest.param("GET", [(b"x-http-method-overrides", b"POST")], b"", {"GET"}, id="near-miss"),
    pytest.param("GET", [], b"_method=POST", {"GET", "POST"}, id="query-method"),
    pytest.param("GET", [], b"_METHOD=post", {"GET", "POST"}, id="query-method-upper-key"),
    pytest.param("GET", [], b"a=1&_method=post&b=2", {"GET", "POST"}, id="query-method-middle"),
    pytest.param("GET", [], b"_method=%50OST", {"GET", "POST"}, id="query-encoded-value"),
    pytest.param("GET", [], b"_method=%70%6f%73%74", {"GET", "POST"}, id="query-all-encoded"),
    pytest.param("GET", [], b"_method=%20POST%20", {"GET", "POST"}, id="query-padded-value"),
    pytest.param("GET", [], b"%5Fmethod=POST", {"GET", "POST"}, id="query-encoded-underscore"),
    pytest.param("GET", [], b"_%6Dethod=POST", {"GET", "POST"}, id="query-encoded-key-letter"),
    pytest.param("GET", [], b"%5f%6d%65%74%68%6f%64=POST", {"GET", "POST"}, id="query-key-all-enc"),
    pytest.param(
        "GET", [], b"_method=PUT&_method=DELETE", {"GET", "PUT", "DELETE"}, id="query-repeated"
    ),
    pytest.param("GET", [], b"method=POST", {"GET"}, id="query-other-key"),
    pytest.param("GET", [], b"__method=POST", {"GET"}, id="query-longer-key"),
    pytest.param("GET", [], b"_methods=POST", {"GET"}, id="query-key-suffix"),
    pytest.param("GET", [], b"q=_method%3DPOST", {"GET"}, id="query-inside-a-value"),
    # An override to HEAD is handled by the app's GET handler, like a real HEAD.
    pytest.param("POST", [(OVERRIDE, b"HEAD")], b"", {"POST", "HEAD", "GET"}, id="override-head"),
    pytest.param("POST", [], b"_method=HEAD", {"POST", "HEAD", "GET"}, id="query-method-head"),
]


@pytest.mark.parametrize(("method", "headers", "query", "expected"), METHOD_CASES)
def test_request_methods(
    method: str, headers: list[tuple[bytes, bytes]], query: bytes, expected: set[str]
) -> None:
    assert request_methods(method, headers, query) == frozenset(expected)


METHOD_MATCH_CASES = [
    pytest.param("POST", [], b"", True, id="post"),
    pytest.param("GET", [], b"", False, id="get-without-override"),
    pytest.param("HEAD", [], b"", False, id="head-is-not-post"),
    pytest.param("PUT", [], b"", False, id="put"),
    pytest.param("GET", [(OVERRIDE, b"post")], b"", True, id="x-http-method-override"),
    pytest.param("GET", [(b"x-http-method", b"post")], b"", True, id="x-http-method"),
    pytest.param("GET", [(b"x-method-override", b"POST")], b"", True, id="x-method-override"),
    pytest.param("GET", [(OVERRIDE, b"PUT")], b"", False, id="override-to-another-method"),
    pytest.param("GET", [], b"_method=POST", True, id="query-method"),
    pytest.param("GET", [], b"_METHOD=post", True, id="query-method-upper-key"),
    pytest.param("GET", [], b"_method=%50%4f%53%54", True, id="query-method-encoded-value"),
    pytest.param("GET", [], b"%5Fmethod=POST", True, id="query-method-encoded-key"),
    pytest.param("GET", [], b"x=1&_method=post", True, id="query-method-second-pair"),
]


@pytest.mark.parametrize(("method", "headers", "query", "matches"), METHOD_MATCH_CASES)
def test_method_tricks_against_a_post_only_route(
    method: str, headers: list[tuple[bytes, bytes]], query: bytes, matches: bool
) -> None:
    found = accounts_table().match(request_methods(method, headers, query), "/api/accounts")
    assert found == ((ACCOUNTS,) if matches else ())


def test_head_matches_a_get_only_route() -> None:
    page = Route("promo.page", "promotion", "/promo", frozenset({"GET"}))
    table = RouteTable([page])
    assert table.match(request_methods("HEAD", [], b""), "/promo") == (page,)
    assert table.match(request_methods("GET", [], b""), "/promo") == (page,)
    assert table.match(request_methods("POST", [], b""), "/promo") == ()


def test_override_to_head_matches_a_get_only_route() -> None:
    # POST + X-HTTP-Method-Override: HEAD is served as HEAD, i.e. by the GET handler.
    page = Route("promo.page", "promotion", "/promo", frozenset({"GET"}))
    methods = request_methods("POST", [(OVERRIDE, b"HEAD")], b"")
    assert RouteTable([page]).match(methods, "/promo") == (page,)


def test_route_without_methods_matches_any_method() -> None:
    anything = Route("any", "neutral", "/x", None)
    table = RouteTable([anything])
    for method in ("GET", "POST", "DELETE", "OPTIONS", "BREW"):
        assert table.match(request_methods(method, [], b""), "/x") == (anything,)


# -- patterns ---------------------------------------------------------------------------------

PATTERN_CASES = [
    pytest.param("/r/{code}", "/r/abc", True, id="param"),
    pytest.param("/r/{code}", "/R/ABC/", True, id="param-normalized-path"),
    pytest.param("/r/{code}", "/r/%61", True, id="param-encoded"),
    pytest.param("/r/{code}", "/r/", False, id="param-empty"),
    pytest.param("/r/{code}", "/r", False, id="param-missing"),
    pytest.param("/r/{code}", "/r/a/b", False, id="param-two-segments"),
    # A '%2f' the server left encoded is one segment to the app's router: /r/{code} serves it.
    pytest.param("/r/{code}", "/r/a%2fb", True, id="param-encoded-slash"),
    pytest.param("/r/{code}/x", "/r/abc/x", True, id="param-middle"),
    pytest.param("/r/{code}/x", "/r/x", False, id="param-middle-missing"),
    pytest.param("/r/*", "/r/abc", True, id="star"),
    pytest.param("/r/*", "/r/", False, id="star-empty"),
    pytest.param("/r/*", "/r/a/b", False, id="star-two-segments"),
    pytest.param("/r/*/x", "/r/a/x", True, id="star-middle"),
    pytest.param("/r/*/x", "/r/x", False, id="star-middle-missing"),
    pytest.param("/r/*/x", "/r/a/b/x", False, id="star-middle-two-segments"),
    pytest.param("/promo/**", "/promo", True, id="globstar-base"),
    pytest.param("/promo/**", "/promo/", True, id="globstar-base-slash"),
    pytest.param("/promo/**", "/promo/a", True, id="globstar-one"),
    pytest.param("/promo/**", "/promo/a/b/c", True, id="globstar-deep"),
    pytest.param("/promo/**", "/PROMO/./a/../b", True, id="globstar-normalized"),
    pytest.param("/promo/**", "/promox", False, id="globstar-longer-segment"),
    pytest.param("/promo/**", "/promo-x/a", False, id="globstar-similar-prefix"),
    pytest.param("/promo/**", "/", False, id="globstar-root"),
    pytest.param("/promo/**", "/x/promo", False, id="globstar-prefixed"),
    # '..' leaves /promo once resolved, but a router that resolves nothing serves it below.
    pytest.param("/promo/**", "/promo/..", True, id="globstar-dot-dot-out"),
    pytest.param("/promo/**", "/promo/../x", True, id="globstar-dot-dot-router"),
    pytest.param("/x/**", "/promo/../x", True, id="dot-dot-resolved"),
    pytest.param("/**", "/", True, id="everything-root"),
    pytest.param("/**", "", True, id="everything-empty"),
    pytest.param("/**", "/a", True, id="everything-one"),
    pytest.param("/**", "/a/b/c", True, id="everything-deep"),
    pytest.param("/a/*/**", "/a/b", True, id="star-then-globstar"),
    pytest.param("/a/*/**", "/a", False, id="star-then-globstar-missing"),
    pytest.param("/", "/", True, id="root"),
    pytest.param("/", "/a", False, id="root-only"),
    pytest.param("/API/Accounts/", "/api/accounts", True, id="pattern-normalized"),
    pytest.param("/api/%61ccounts", "/api/accounts", True, id="pattern-encoded"),
    pytest.param("/a.b", "/a.b", True, id="dot-literal"),
    pytest.param("/a.b", "/axb", False, id="dot-is-not-regex"),
    pytest.param("/a+b", "/aab", False, id="plus-is-not-regex"),
    pytest.param("/a(b)", "/a(b)", True, id="parens-literal"),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), PATTERN_CASES)
def test_patterns(pattern: str, path: str, matches: bool) -> None:
    route = Route("r", "promotion", pattern, None)
    assert RouteTable([route]).match(GET, path) == ((route,) if matches else ())
    regex = compile_pattern(pattern)
    assert any(regex.fullmatch(form) is not None for form in spellings(path)) is matches


def test_param_captures_the_segment() -> None:
    found = compile_pattern("/r/{code}/{Other_1}").fullmatch(normalize_path("/r/ABC/x"))
    assert found is not None
    assert found.group("code") == "abc"
    assert found.group("other_1") == "x"


INVALID_PATTERNS = [
    pytest.param("api/accounts", id="no-leading-slash"),
    pytest.param("", id="empty"),
    pytest.param("*", id="bare-star"),
    pytest.param("/a/**/b", id="globstar-not-last"),
    pytest.param("/**/a", id="globstar-first"),
    pytest.param("/a/a*b", id="partial-wildcard"),
    pytest.param("/a/*b", id="star-prefix"),
    pytest.param("/a/b*", id="star-suffix"),
    pytest.param("/a/***", id="triple-star"),
    pytest.param("/a/**b", id="globstar-partial"),
    pytest.param("/{bad-name}", id="param-dash"),
    pytest.param("/{1abc}", id="param-digit-first"),
    pytest.param("/{}", id="param-empty"),
    pytest.param("/{a", id="param-unclosed"),
    pytest.param("/a}", id="param-unopened"),
    pytest.param("/x{a}", id="param-partial-segment"),
    pytest.param("/{a}x", id="param-suffix"),
    pytest.param("/{a b}", id="param-space"),
]


@pytest.mark.parametrize("pattern", INVALID_PATTERNS)
def test_invalid_patterns_raise_value_error(pattern: str) -> None:
    with pytest.raises(ValueError):
        compile_pattern(pattern)
    with pytest.raises(ValueError):
        RouteTable([Route("bad", "neutral", pattern, None)])


# -- RouteTable -------------------------------------------------------------------------------

API_ANY = Route("api.any", "service", "/api/**", None)
ACCOUNTS_WRITE = Route("accounts.write", "account_creation", "/api/accounts", frozenset({"POST"}))
EVERYTHING_GET = Route("all.get", "neutral", "/**", frozenset({"GET"}))
ACCOUNT_ITEM = Route("accounts.item", "service", "/api/accounts/{id}", None)
OTHER = Route("other", "promotion", "/other", None)
POLICY_ROUTES = (API_ANY, ACCOUNTS_WRITE, EVERYTHING_GET, ACCOUNT_ITEM, OTHER)

TABLE_CASES = [
    pytest.param(POST, "/api/accounts", (API_ANY, ACCOUNTS_WRITE), id="post-accounts"),
    pytest.param(GET, "/api/accounts", (API_ANY, EVERYTHING_GET), id="get-accounts"),
    pytest.param(
        frozenset({"GET", "POST"}),
        "/API//Accounts/",
        (API_ANY, ACCOUNTS_WRITE, EVERYTHING_GET),
        id="override-post-on-get",
    ),
    pytest.param(POST, "/api/accounts/7", (API_ANY, ACCOUNT_ITEM), id="post-item"),
    pytest.param(GET, "/other", (EVERYTHING_GET, OTHER), id="get-other"),
    pytest.param(frozenset({"DELETE"}), "/other", (OTHER,), id="delete-other"),
    pytest.param(frozenset({"DELETE"}), "/nothing", (), id="no-match"),
]


@pytest.mark.parametrize(("methods", "path", "expected"), TABLE_CASES)
def test_route_table_returns_all_matches_in_policy_order(
    methods: frozenset[str], path: str, expected: tuple[Route, ...]
) -> None:
    assert RouteTable(POLICY_ROUTES).match(methods, path) == expected
    reversed_table = RouteTable(reversed(POLICY_ROUTES))
    assert reversed_table.match(methods, path) == tuple(reversed(expected))


def test_route_table_caches_results() -> None:
    table = RouteTable(POLICY_ROUTES)
    first = table.match(POST, "/api/./accounts")
    second = table.match(POST, "/api/./accounts")
    assert first == (API_ANY, ACCOUNTS_WRITE)
    assert second == first
    assert second is first
    assert table.match(GET, "/api/./accounts") == (API_ANY, EVERYTHING_GET)
    assert table.match(POST, "/api/./accounts") == (API_ANY, ACCOUNTS_WRITE)


def test_route_table_cache_overflow_keeps_answers_right() -> None:
    table = RouteTable(POLICY_ROUTES)
    for i in range(5000):
        assert table.match(POST, f"/api/accounts/{i}") == (API_ANY, ACCOUNT_ITEM)
        assert table.match(POST, f"/x/{i}") == ()
    assert table.match(POST, "/api/accounts") == (API_ANY, ACCOUNTS_WRITE)


def test_empty_route_table_matches_nothing() -> None:
    assert RouteTable([]).match(GET, "/") == ()
    assert RouteTable(()).match(POST, "/api/accounts") == ()

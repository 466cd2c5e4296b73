"""Promotion routes, UK rules, solicitation evidence, the template hook, the policy section."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from jinja2 import Environment
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from micafence import MicafenceMiddleware, PolicyError, load_policy_text
from micafence.policy.promotions import EvidenceLimits
from micafence.promotions.evidence_budget import EvidenceBudget
from micafence.promotions.templating import install_jinja2, promotion_allowed, promotions_allowed
from micafence.records import SolicitationEvidence
from micafence.store.memory import MemoryStore
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, MAXMIND

SE = "89.160.20.112"  # eu
UK = "216.160.83.56"  # US on a GB-registered block: uk zone only
GB_FR = "2.125.160.216"  # GB on an FR-registered block: eu and uk
CH = "2a02:d000::1"
PROXY = "127.0.0.1"
FEED = [{"id": "p1", "title": "zero fees"}]
PROMO_PAGE = (
    '<html><body><h1>Campaign</h1><div id="plain" data-promo>unapproved</div>'
    '<div id="uk-ok" data-promo data-promo-approved="uk">approved</div></body></html>'
)


def exchange() -> Starlette:
    async def feed(request: Request) -> Response:
        return JSONResponse(FEED)

    async def page(request: Request) -> Response:
        return HTMLResponse(PROMO_PAGE)

    return Starlette(routes=[
        Route("/api/promotions", feed, methods=["GET"]),
        Route("/{path:path}", page, methods=["GET", "POST"]),
    ])


def policy_with(*edits: tuple[str, str]) -> str:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


ROUTES = "  routes:   " + " " * 28 + "# unlisted promotion routes: block, evidence recorded\n"


def with_routes(lines: str) -> str:
    """The default policy with these promotion route settings instead of its own."""
    text = policy_with()
    start = text.index(ROUTES)
    end = text.index("\n\n", start)
    return text[:start] + "  routes:\n" + lines + text[end:]


def guarded(policy: str | None = None, store: Any = None) -> MicafenceMiddleware:
    loaded = load_policy_text(policy, "test.yaml") if policy else DEFAULT_POLICY
    return MicafenceMiddleware(exchange(), policy=loaded, geoip_db=COUNTRY_DB,
                               store=store or MemoryStore())


async def fetch(app: Any, peer: str, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> httpx.Response:
    via_proxy = {"X-Forwarded-For": peer} if peer != PROXY else {}
    transport = httpx.ASGITransport(app=app, client=(PROXY, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as client:
        return await client.request(method, path, headers={**via_proxy, **(headers or {})})


async def evidence(app: MicafenceMiddleware) -> list[SolicitationEvidence]:
    store = app.store
    assert isinstance(store, MemoryStore)
    return [item for items in store._solicitations.values() for item in items]


# -- promotion routes -------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "status", "content_type", "body"), [
    pytest.param("{outcome: empty, format: json}", 200, "application/json", b"[]", id="json"),
    pytest.param("""{outcome: empty, format: json, body: '{"items": []}'}""", 200,
                 "application/json", b'{"items": []}', id="json-own-body"),
    pytest.param("{outcome: empty, format: html}", 200, "text/html; charset=utf-8",
                 b"<!doctype html>", id="html"),
    pytest.param("{outcome: empty, format: text}", 200, "text/plain; charset=utf-8", b"",
                 id="text"),
    pytest.param("{outcome: no_content}", 204, None, b"", id="no-content"),
    pytest.param("{outcome: block}", 451, "application/problem+json", b"{", id="block"),
])
async def test_feed_answers_restricted_visitors_in_its_format(
    settings: str, status: int, content_type: str | None, body: bytes
) -> None:
    app = guarded(with_routes(f"    promotions.feed: {settings}\n"))
    response = await fetch(app, SE, "/api/promotions", headers={"Accept": "application/json"})
    assert response.status_code == status
    assert response.headers.get("content-type") == content_type
    assert response.content.startswith(body)
    assert b"zero fees" not in response.content
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["micafence-reason"] == "eu.promotion"


async def test_default_feed_is_empty_json_and_head_has_no_body() -> None:
    app = guarded()
    get = await fetch(app, SE, "/api/promotions")
    head = await fetch(app, SE, "/api/promotions", method="HEAD")
    assert (get.status_code, get.json()) == (200, [])
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "2"


@pytest.mark.parametrize("path", ["/api/promotions", "/r/FRIEND10", "/campaigns/spring",
                                  "/aff/partner-1", "/promo/x"])
async def test_visitors_elsewhere_get_the_promotion(path: str) -> None:
    response = await fetch(guarded(), CH, path)
    assert response.status_code == 200
    assert b"zero fees" in response.content or b"unapproved" in response.content


@pytest.mark.parametrize(("peer", "path", "status"), [
    pytest.param(SE, "/r/FRIEND10", 451, id="eu-referral"),
    pytest.param(SE, "/campaigns/spring", 451, id="eu-campaign"),
    pytest.param(PROXY, "/aff/partner-1", 451, id="unknown-country-affiliate"),
    pytest.param(PROXY, "/api/promotions", 200, id="unknown-country-feed-empty"),
])
async def test_restricted_visitors_never_get_the_promotion(peer: str, path: str,
                                                           status: int) -> None:
    response = await fetch(guarded(), peer, path)
    assert response.status_code == status
    assert b"zero fees" not in response.content and b"unapproved" not in response.content


# -- the UK zone --------------------------------------------------------------------------------

APPROVED_CAMPAIGNS = with_routes(
    "    promotions.feed: {outcome: empty, format: json, evidence: false}\n"
    "    promotions.referral: {outcome: block, incentive: true}\n"
    "    promotions.campaigns: {approved_for: [uk]}\n"
)


@pytest.mark.parametrize(("peer", "path", "status", "reason"), [
    pytest.param(UK, "/campaigns/gbp", 200, "uk.promotion.approved", id="uk-approved-route"),
    pytest.param(UK, "/promo/x", 451, "uk.promotion", id="uk-unapproved-route"),
    pytest.param(UK, "/r/FRIEND10", 451, "uk.promotion", id="uk-incentive-route"),
    pytest.param(GB_FR, "/campaigns/gbp", 451, "eu.promotion", id="eu-and-uk-visitor"),
    pytest.param(SE, "/campaigns/gbp", 451, "eu.promotion", id="eu-visitor"),
])
async def test_uk_visitors_get_only_routes_ops_approved(
    peer: str, path: str, status: int, reason: str
) -> None:
    response = await fetch(guarded(APPROVED_CAMPAIGNS), peer, path,
                           headers={"Accept": "application/json"})
    assert response.status_code == status
    if status == 451:
        assert response.json()["reason"] == reason


async def test_approved_route_page_is_still_rewritten_for_uk_visitors() -> None:
    response = await fetch(guarded(APPROVED_CAMPAIGNS), UK, "/campaigns/gbp")
    assert 'id="uk-ok"' in response.text
    assert 'id="plain"' not in response.text


async def test_approved_route_decision_is_what_explain_shows() -> None:
    app = guarded(APPROVED_CAMPAIGNS)
    scope = {"type": "http", "method": "GET", "path": "/campaigns/gbp", "headers": [],
             "client": (UK, 1), "query_string": b""}
    decision = app.enforcer.decide(scope)
    assert (decision.blocked, decision.reason) == (False, "uk.promotion.approved")


# -- solicitation evidence ------------------------------------------------------------------------

async def test_anonymous_eu_arrival_by_referral_is_recorded_with_a_cookie() -> None:
    app = guarded()
    first = await fetch(app, SE, "/r/FRIEND10")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("micafence_visitor=")
    assert {"HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=34128000"} <= set(cookie.split("; "))
    assert "Secure" not in cookie  # plain http
    visitor = cookie.split(";")[0].split("=", 1)[1]
    again = await fetch(app, SE, "/r/OTHER", headers={"Cookie": f"micafence_visitor={visitor}"})
    assert "set-cookie" not in again.headers
    records = await app.store.solicitations(f"cookie:{visitor}")
    # The second arrival, through the same route with the same (no) marker within the
    # evidence window, is a repeat: counted, not stored again.
    assert [(r.zone, r.country, r.route_id, r.marker) for r in records] == [
        ("eu", "SE", "promotions.referral", None),
    ]
    assert app.evidence.counts["repeat"] == 1


async def test_identified_client_is_recorded_by_client_id_without_cookie() -> None:
    app = guarded()
    response = await fetch(app, SE, "/campaigns/spring?ref=influencer7",
                           headers={"X-Client-Id": "client-7"})
    assert "set-cookie" not in response.headers
    records = await app.store.solicitations("client-7")
    assert [(r.route_id, r.marker) for r in records] == [
        ("promotions.campaigns", "ref=influencer7")]


@pytest.mark.parametrize(("query", "marker"), [
    pytest.param("utm_source=newsletter&utm_medium=email", "utm_source=newsletter", id="utm"),
    pytest.param("page=2&ref=FRIEND10", "ref=FRIEND10", id="ref"),
    pytest.param("%75tm_campaign=spring+sale", "utm_campaign=spring sale", id="encoded"),
    pytest.param("AFF_ID=42", "aff_id=42", id="case"),
    pytest.param("page=2&refresh=1", None, id="not-a-marker"),
])
async def test_marketing_markers_on_any_page_are_recorded(query: str, marker: str | None) -> None:
    app = guarded()
    response = await fetch(app, SE, f"/markets?{query}")
    assert response.status_code == 200
    assert 'id="plain"' not in response.text  # still rewritten
    assert [(r.marker, r.route_id) for r in await evidence(app)] == (
        [(marker, None)] if marker else [])
    assert ("set-cookie" in response.headers) is (marker is not None)


@pytest.mark.parametrize(("peer", "path"), [
    pytest.param(CH, "/markets?utm_source=x", id="non-eu-marker"),
    pytest.param(CH, "/r/FRIEND10", id="non-eu-referral"),
    pytest.param(SE, "/api/promotions", id="feed-is-not-an-arrival"),
    pytest.param(SE, "/markets", id="no-marker"),
])
async def test_nothing_is_recorded_without_a_restricted_arrival(peer: str, path: str) -> None:
    app = guarded()
    response = await fetch(app, peer, path)
    assert await evidence(app) == []
    assert "set-cookie" not in response.headers


async def test_secure_cookie_behind_a_tls_proxy() -> None:
    response = await fetch(guarded(), SE, "/r/X", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["set-cookie"].split("; ")


class FailingStore(MemoryStore):
    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        raise ConnectionError("store down")


class SlowStore(MemoryStore):
    async def record_solicitation(self, evidence: SolicitationEvidence) -> None:
        await asyncio.sleep(1.0)
        await super().record_solicitation(evidence)


async def test_a_failing_store_never_fails_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="micafence.promotions.solicitation"):
        blocked = await fetch(guarded(store=FailingStore()), SE, "/r/FRIEND10")
        page = await fetch(guarded(store=FailingStore()), SE, "/?utm_source=x")
    assert blocked.status_code == 451
    assert page.status_code == 200 and 'id="plain"' not in page.text
    assert "could not record solicitation evidence" in caplog.text


async def test_a_slow_store_delays_the_answer_only_briefly() -> None:
    app = guarded(store=SlowStore())
    started = time.monotonic()
    response = await fetch(app, SE, "/r/FRIEND10")
    assert response.status_code == 451
    assert time.monotonic() - started < 0.8
    await asyncio.sleep(1.0)  # the write carries on in the background
    assert len(await evidence(app)) == 1


# -- how much evidence a visitor can add ----------------------------------------------------------

FR_A, FR_B = "2a02:cfc0::1", "2a02:cfc0::2:3"  # one /64 in France
FR_OTHER_64 = "2a02:cfc0:0:1::1"


def limited(per_visitor: int, per_worker: int) -> MicafenceMiddleware:
    return guarded(policy_with(("per_visitor: 20   #", f"per_visitor: {per_visitor}   #"),
                               ("per_worker: 1000  #", f"per_worker: {per_worker}  #")))


async def test_marker_names_and_values_are_cut_short() -> None:
    app = guarded()
    name, value = "utm_" + "n" * 10_000, "v" * 10_000 + "%0A%00"
    response = await fetch(app, SE, f"/markets?{name}={value}&utm_x=%01%7F")
    assert response.status_code == 200
    assert [r.marker for r in await evidence(app)] == [f"{name[:64]}={value[:200]}"]
    control = guarded()
    await fetch(control, SE, "/markets?utm_x=a%01b%7Fc%0A")
    assert [r.marker for r in await evidence(control)] == ["utm_x=a?b?c?"]


async def test_one_record_per_visitor_and_arrival_per_window() -> None:
    app = guarded()
    clock = [7200.0]
    app.evidence = EvidenceBudget(clock=lambda: clock[0])
    for _ in range(3):  # no cookie: the visitor is the address
        await fetch(app, SE, "/markets?utm_source=mail")
    first = await fetch(app, SE, "/markets?utm_source=other")
    cookie = first.headers["set-cookie"].split(";")[0]
    await fetch(app, SE, "/markets?utm_source=other", headers={"Cookie": cookie})
    await fetch(app, GB_FR, "/markets?utm_source=mail")  # another visitor
    assert [r.marker for r in await evidence(app)] == [
        "utm_source=mail", "utm_source=other", "utm_source=mail"]
    assert app.evidence.counts["repeat"] == 3
    clock[0] += 3600  # the next window
    await fetch(app, SE, "/markets?utm_source=mail")
    assert len(await evidence(app)) == 4


async def test_an_ipv6_visitor_is_its_64() -> None:
    app = limited(per_visitor=2, per_worker=1000)
    for n, peer in enumerate([FR_A, FR_B, FR_A, FR_OTHER_64]):
        await fetch(app, peer, f"/markets?ref=r{n}")
    # FR_A and FR_B share a /64: two records between them, the third arrival dropped.
    assert sorted(r.marker or "" for r in await evidence(app)) == ["ref=r0", "ref=r1", "ref=r3"]
    assert app.evidence.counts["dropped_visitor_rate"] == 1


async def test_each_visitor_and_the_worker_have_a_cap() -> None:
    app = limited(per_visitor=3, per_worker=8)
    for n in range(5):  # one cookie, five different markers: three kept
        await fetch(app, SE, f"/markets?ref=one{n}",
                    headers={"Cookie": "micafence_visitor=" + "v" * 22})
    for n in range(7):  # seven visitors (their own cookies): five more fit the worker cap
        await fetch(app, SE, f"/markets?ref=many{n}",
                    headers={"Cookie": f"micafence_visitor={n:022d}"})
    assert len(await evidence(app)) == 8
    assert app.evidence.counts == {"recorded": 8, "repeat": 0, "dropped_visitor_rate": 2,
                                   "dropped_worker_cap": 2}


# -- the template hook -------------------------------------------------------------------------

TEMPLATE = (
    "{% if promotions_allowed() %}[all]{% endif %}"
    "{% if promotion_allowed() %}[banner]{% endif %}"
    '{% if promotion_allowed("uk") %}[uk]{% endif %}'
    '{% if promotion_allowed("uk", incentive=True) %}[uk-incentive]{% endif %}'
)


@pytest.mark.parametrize(("peer", "rendered"), [
    pytest.param(CH, "[all][banner][uk][uk-incentive]", id="elsewhere"),
    pytest.param(UK, "[uk]", id="uk"),
    pytest.param(GB_FR, "", id="eu-and-uk"),
    pytest.param(SE, "", id="eu"),
    pytest.param(PROXY, "", id="unknown-country"),
])
async def test_jinja2_helpers_follow_the_zone(peer: str, rendered: str) -> None:
    env = Environment(autoescape=True)
    install_jinja2(env)
    template = env.from_string(TEMPLATE)

    async def home(request: Request) -> Response:
        return HTMLResponse(template.render(request=request))

    app = MicafenceMiddleware(Starlette(routes=[Route("/", home)]), policy=DEFAULT_POLICY,
                              geoip_db=COUNTRY_DB)
    response = await fetch(app, peer, "/")
    assert response.text == rendered


def test_helpers_without_micafence_or_without_a_request() -> None:
    bare = {"type": "http", "state": {}}
    assert promotions_allowed(bare) and promotion_allowed(bare, incentive=True)
    env = Environment(autoescape=True)
    install_jinja2(env)
    assert env.from_string(TEMPLATE).render() == ""  # no request in the context: fail closed


# -- the policy section ---------------------------------------------------------------------------

def test_default_policy_settings() -> None:
    policy = load_policy_text(DEFAULT_POLICY.read_text(), "default.yaml")
    promotions = policy.promotions
    assert promotions.selectors == ("[data-promo]",)
    assert dict(promotions.approved) == {"uk": '[data-promo-approved~="uk"]'}
    assert promotions.markers == ("ref", "utm_*", "aff_id")
    assert promotions.route("promotions.feed").outcome.value == "empty"
    assert promotions.route("promotions.referral").incentive is True
    assert promotions.evidence == EvidenceLimits(window_seconds=3600, per_visitor=20,
                                                 per_worker=1000)


def test_without_a_section_approval_marks_follow_the_zones() -> None:
    text = policy_with()
    text = text[:text.index("# -- promotions")] + text[text.index("# -- client-initiated"):]
    promotions = load_policy_text(text, "p.yaml").promotions
    assert dict(promotions.approved) == {"uk": '[data-promo-approved~="uk"]'}
    assert promotions.route("promotions.feed").outcome.value == "block"


@pytest.mark.parametrize(("old", "new", "key_path", "problem"), [
    pytest.param('selectors: ["[data-promo]"]', 'selectors: ["div["]', "promotions.selectors[0]",
                 "not a selector the promotion safety net can run", id="bad-selector"),
    pytest.param('selectors: ["[data-promo]"]', 'selectors: ["[data-promo]", "main .ad"]',
                 "promotions.selectors[1]", "combinators", id="descendant-combinator"),
    pytest.param('selectors: ["[data-promo]"]', 'selectors: ["aside > div"]',
                 "promotions.selectors[0]", "combinators", id="child-combinator"),
    pytest.param('selectors: ["[data-promo]"]', 'selectors: ["div:not([data-ok])"]',
                 "promotions.selectors[0]", "pseudo-classes", id="pseudo-class"),
    pytest.param("    uk: '[data-promo-approved~=\"uk\"]'", "    uk: 'div:first-child'",
                 "promotions.approved.uk", "pseudo-classes", id="approval-pseudo-class"),
    pytest.param('selectors: ["[data-promo]"]', "selectors: ['[data-promo=pr\u00e9]']",
                 "promotions.selectors[0]", "printable ASCII", id="non-ascii-value"),
    pytest.param('selectors: ["[data-promo]"]', "selectors: []", "promotions.selectors",
                 "at least one selector", id="no-selectors"),
    pytest.param("    uk: '[data-promo-approved~=\"uk\"]'", "    eu: '[data-ok]'",
                 "promotions.approved.eu", "not 'promotions: approved_only'", id="approved-eu"),
    pytest.param("    uk: '[data-promo-approved~=\"uk\"]'", "    mars: '[data-ok]'",
                 "promotions.approved.mars", "unknown zone", id="approved-unknown-zone"),
    pytest.param("max_rewrite_bytes: 4194304", "max_rewrite_bytes: 10",
                 "promotions.max_rewrite_bytes", "at least 1024", id="tiny-limit"),
    pytest.param("on_unrewritable: block", "on_unrewritable: allow",
                 "promotions.on_unrewritable", "not one of", id="bad-outcome"),
    pytest.param("markers: [ref, utm_*, aff_id]", "markers: [ref, '*']", "promotions.markers[1]",
                 "every query string", id="star-marker"),
    pytest.param("markers: [ref, utm_*, aff_id]", "markers: [ref, 'a b']",
                 "promotions.markers[1]", "query parameter name", id="bad-marker"),
    pytest.param("{name: micafence_visitor, max_age_days: 395}", "{name: 'a;b'}",
                 "promotions.visitor_cookie.name", "cookie name", id="bad-cookie"),
    pytest.param("    promotions.referral: {outcome: block, incentive: true}",
                 "    promotions.referral: {incentive: true, approved_for: [uk]}",
                 "promotions.routes.promotions.referral.approved_for", "PS23/6",
                 id="approved-incentive"),
    pytest.param("    promotions.referral: {outcome: block, incentive: true}",
                 "    service.orders: {outcome: empty}", "promotions.routes.service.orders",
                 "not 'promotion'", id="not-a-promotion-route"),
    pytest.param("    promotions.referral: {outcome: block, incentive: true}",
                 "    promotions.nope: {outcome: empty}", "promotions.routes.promotions.nope",
                 "unknown route id", id="unknown-route"),
    pytest.param("    promotions.referral: {outcome: block, incentive: true}",
                 "    promotions.referral: {outcome: block, format: json}",
                 "promotions.routes.promotions.referral.format", "only applies",
                 id="format-without-empty"),
    pytest.param("{outcome: empty, format: json, evidence: false}",
                 "{outcome: empty, body: '[1,'}", "promotions.routes.promotions.feed.body",
                 "not JSON", id="bad-json-body"),
    pytest.param("    promotions.referral: {outcome: block, incentive: true}",
                 "    promotions.referral: {approved_for: [eu]}",
                 "promotions.routes.promotions.referral.approved_for[0]", "approved_only",
                 id="approved-for-eu"),
    pytest.param("  max_rewrite_bytes: 4194304", "  max_bytes: 4194304",
                 "promotions.max_bytes", "unknown key", id="unknown-key"),
    pytest.param("window: PT1H   #", "window: PT30S   #", "promotions.evidence.window",
                 "from PT1M to P7D", id="evidence-window-short"),
    pytest.param("window: PT1H   #", "window: P8D   #", "promotions.evidence.window",
                 "from PT1M to P7D", id="evidence-window-long"),
    pytest.param("window: PT1H   #", "window: 1h   #", "promotions.evidence.window",
                 "not an ISO 8601 duration", id="evidence-window-not-a-duration"),
    pytest.param("per_visitor: 20   #", "per_visitor: 0   #", "promotions.evidence.per_visitor",
                 "at least 1", id="evidence-per-visitor-zero"),
    pytest.param("per_visitor: 20   #", "per_visitor: 5000   #",
                 "promotions.evidence.per_visitor", "more than per_worker",
                 id="evidence-per-visitor-over-worker"),
    pytest.param("per_worker: 1000  #", "per_worker: 1000000  #",
                 "promotions.evidence.per_worker", "at most 100000",
                 id="evidence-per-worker-huge"),
    pytest.param("per_worker: 1000  #", "per_worker: many  #",
                 "promotions.evidence.per_worker", "integer", id="evidence-per-worker-text"),
    pytest.param("per_worker: 1000  #", "per_hour: 1000  #", "promotions.evidence.per_hour",
                 "unknown key", id="evidence-unknown-key"),
])
def test_bad_promotions_section_names_key_and_line(
    old: str, new: str, key_path: str, problem: str
) -> None:
    text = policy_with((old, new))
    line = next(n for n, content in enumerate(text.splitlines(), 1) if new.strip() in content)
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "bad.yaml")
    error = caught.value
    assert (error.file, error.key_path) == ("bad.yaml", key_path)
    assert problem in error.problem
    assert error.line == line


async def test_anonymizer_suppresses_even_uk_approved_promotions() -> None:
    every_flag = "81.2.69.160"  # GB (uk zone) and a Tor exit, VPN, proxy... in the test data
    app = MicafenceMiddleware(exchange(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                              anonymizer_db=MAXMIND / "GeoIP2-Anonymous-IP-Test.mmdb",
                              watch=False, store=MemoryStore())
    page = await fetch(app, every_flag, "/markets?utm_source=forum")
    assert page.status_code == 200
    assert 'id="uk-ok"' not in page.text and 'id="plain"' not in page.text
    assert [(r.zone, r.marker) for r in await evidence(app)] == [
        ("anonymizer", "utm_source=forum")]

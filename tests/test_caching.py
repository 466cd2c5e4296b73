"""Cache safety: zone-dependent responses are private and varied, whatever the app set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, PolicyError, load_policy_text
from micafence.promotions.cache_safety import merge_cache_control, merge_vary
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

SE = "89.160.20.112"
CH = "2a02:d000::1"
VARY = "X-Forwarded-For, X-Client-Id, X-Client-Residence"  # what the default policy reads


@pytest.mark.parametrize(("values", "merged"), [
    pytest.param([], "private", id="none"),
    pytest.param(["no-store"], "no-store, private", id="no-store-kept"),
    pytest.param(["public, max-age=60"], "max-age=60, private", id="public-dropped"),
    pytest.param(["max-age=60, s-maxage=3600, must-revalidate"],
                 "max-age=60, must-revalidate, private", id="s-maxage-dropped"),
    pytest.param(['private="set-cookie", max-age=5'], "max-age=5, private",
                 id="qualified-private-widened"),
    pytest.param(["no-cache", "no-store"], "no-cache, no-store, private", id="two-headers"),
    pytest.param(['no-cache="x-a, x-b", max-age=1'], 'no-cache="x-a, x-b", max-age=1, private',
                 id="quoted-comma"),
    pytest.param(["PUBLIC, No-Store, no-store"], "No-Store, private", id="case-and-duplicates"),
    pytest.param(["private"], "private", id="already-private"),
])
def test_cache_control_merge(values: list[str], merged: str) -> None:
    assert merge_cache_control([v.encode() for v in values]) == merged.encode()


@pytest.mark.parametrize(("values", "merged"), [
    pytest.param([], "X-Forwarded-For", id="none"),
    pytest.param(["Accept-Encoding"], "Accept-Encoding, X-Forwarded-For", id="appended"),
    pytest.param(["accept-encoding, x-forwarded-for", "Cookie"],
                 "accept-encoding, x-forwarded-for, Cookie", id="no-duplicates"),
    pytest.param(["*"], "*", id="star-stays"),
])
def test_vary_merge(values: list[str], merged: str) -> None:
    assert merge_vary([v.encode() for v in values], ["X-Forwarded-For"]) == merged.encode()


def app_answering(content_type: str, headers: dict[str, str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b"<p>hi</p>" if "html" in content_type else b"[]"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", content_type.encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ]})
        await send({"type": "http.response.body", "body": body})
    return app


async def get(app: Any, peer: str, path: str, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as client:
        return await client.request(method, path)


def guarded(app: Any, policy: str | None = None) -> MicafenceMiddleware:
    loaded = load_policy_text(policy, "test.yaml") if policy else DEFAULT_POLICY
    return MicafenceMiddleware(app, policy=loaded, geoip_db=COUNTRY_DB)


APP_HEADERS = {
    "Cache-Control": "public, max-age=600", "Vary": "Accept-Encoding",
    "CDN-Cache-Control": "max-age=3600", "Surrogate-Control": "max-age=3600",
    "X-Accel-Expires": "600",
}


@pytest.mark.parametrize("peer", [SE, CH])
async def test_html_page_is_private_for_every_visitor(peer: str) -> None:
    response = await get(guarded(app_answering("text/html", APP_HEADERS)), peer, "/")
    assert response.headers["cache-control"] == "max-age=600, private"
    assert response.headers["vary"] == f"Accept-Encoding, {VARY}"
    assert "cdn-cache-control" not in response.headers
    assert "surrogate-control" not in response.headers
    assert "x-accel-expires" not in response.headers


async def test_no_store_set_by_the_app_survives() -> None:
    app = app_answering("text/html; charset=utf-8", {"Cache-Control": "no-store"})
    response = await get(guarded(app), CH, "/")
    assert response.headers["cache-control"] == "no-store, private"


@pytest.mark.parametrize(("path", "method", "private"), [
    pytest.param("/api/promotions", "GET", True, id="promotion-feed"),
    pytest.param("/earn/products", "GET", True, id="service-route"),
    pytest.param("/r/FRIEND10", "HEAD", True, id="referral-head"),
    pytest.param("/api/prices", "GET", False, id="neutral-json"),
    pytest.param("/api/promotions", "POST", False, id="post-not-cacheable"),
])
async def test_json_is_private_only_on_routes_rules_treat_by_zone(
    path: str, method: str, private: bool
) -> None:
    response = await get(guarded(app_answering("application/json", APP_HEADERS)), CH, path,
                         method)
    if private:
        assert response.headers["cache-control"] == "max-age=600, private"
        assert VARY in response.headers["vary"]
    else:
        assert response.headers["cache-control"] == "public, max-age=600"
        assert response.headers["cdn-cache-control"] == "max-age=3600"


async def test_restricted_visitor_neutral_json_stays_cacheable() -> None:
    response = await get(guarded(app_answering("application/json", APP_HEADERS)), SE,
                         "/api/prices")
    assert response.headers["cache-control"] == "public, max-age=600"


async def test_a_neutral_rule_makes_every_response_zone_dependent() -> None:
    policy = DEFAULT_POLICY.read_text().replace(
        "rules:\n", "rules:\n  - {id: incident, zones: [eea], class: neutral, outcome: block}\n", 1)
    response = await get(guarded(app_answering("application/json", APP_HEADERS), policy), CH,
                         "/api/prices")
    assert response.headers["cache-control"] == "max-age=600, private"


async def test_a_route_a_reload_makes_zone_dependent_is_private_at_once(
        tmp_path: Path) -> None:
    # The middleware remembers per path what cache safety thinks of it: a reload that puts a
    # rule on the route must be seen by the very next answer, for a visitor served before.
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text(), encoding="utf-8")
    app = MicafenceMiddleware(app_answering("application/json", APP_HEADERS),
                              policy=str(policy), geoip_db=COUNTRY_DB, watch=False)
    for _ in range(2):  # the second answer comes from what the first one taught it
        before = await get(app, CH, "/api/prices")
        assert before.headers["cache-control"] == "public, max-age=600"
    policy.write_text(DEFAULT_POLICY.read_text().replace(
        "routes:\n", "routes:\n  - {id: promo.prices, class: promotion, path: /api/prices}\n",
        1), encoding="utf-8")
    assert app.reloader.check() is True
    after = await get(app, CH, "/api/prices")
    assert after.headers["cache-control"] == "max-age=600, private"
    assert VARY in after.headers["vary"]
    assert "cdn-cache-control" not in after.headers


async def test_blocked_and_suppressed_answers_are_no_store() -> None:
    app = guarded(app_answering("application/json", APP_HEADERS))
    blocked = await get(app, SE, "/r/FRIEND10")
    feed = await get(app, SE, "/api/promotions")
    assert blocked.status_code == 451 and blocked.headers["cache-control"] == "no-store"
    assert feed.status_code == 200 and feed.headers["cache-control"] == "no-store"


# -- set-up "edge": the CDN keys on its country header, micafence decides by the same header ------

def with_cache(section: str, text: str | None = None) -> str:
    """The default policy with its ``cache:`` section replaced by ``section``."""
    text = text or DEFAULT_POLICY.read_text()
    start = text.index("\ncache:\n") + 1
    end = text.index("\n\n", start) + 1
    return text[:start] + section + text[end:]


EDGE = with_cache("cache:\n  setup: edge\n  edge_country_header: CloudFront-Viewer-Country\n")
PAGE_WITH_PROMO = b'<p id="prices">1</p><div id="banner" data-promo>0% fees</div>'


def promo_page(headers: dict[str, str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html"),
            *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": PAGE_WITH_PROMO})
    return app


@pytest.mark.parametrize(("peer", "headers", "promo", "cache_control"), [
    pytest.param("127.0.0.1", {"CloudFront-Viewer-Country": "CH", "X-Forwarded-For": SE}, True,
                 "public, max-age=600", id="edge-says-ch-geoip-ignored"),
    pytest.param("127.0.0.1", {"CloudFront-Viewer-Country": "fr"}, False,
                 "public, max-age=600", id="edge-says-fr"),
    pytest.param("127.0.0.1", {"CloudFront-Viewer-Country": "XX"}, False,
                 "public, max-age=600", id="edge-unknown"),
    pytest.param("127.0.0.1", {"X-Forwarded-For": CH}, False, "public, max-age=600",
                 id="no-edge-header-unknown-country"),
    pytest.param(CH, {"CloudFront-Viewer-Country": "CH"}, False, "public, max-age=600",
                 id="header-from-untrusted-peer-ignored"),
    pytest.param("127.0.0.1", {"CloudFront-Viewer-Country": "CH", "X-Client-Id": "c-1"}, True,
                 "max-age=600, private", id="signed-in-stays-private"),
])
async def test_edge_setup_decides_by_the_edge_country_and_varies_on_it(
    peer: str, headers: dict[str, str], promo: bool, cache_control: str
) -> None:
    app = guarded(promo_page({"Cache-Control": "public, max-age=600"}), EDGE)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as client:
        response = await client.get("/", headers=headers)
    assert ('id="banner"' in response.text) is promo
    assert response.headers["cache-control"] == cache_control
    assert response.headers["vary"].startswith("Cloudfront-Viewer-Country")


@pytest.mark.parametrize(("section", "key_path", "problem"), [
    pytest.param("cache:\n  setup: edge\n", "cache", "needs 'edge_country_header'",
                 id="edge-without-header"),
    pytest.param("cache:\n  setup: private\n  edge_country_header: cf-ipcountry\n",
                 "cache.edge_country_header", "only used with 'setup: edge'",
                 id="header-without-edge"),
    pytest.param("cache:\n  setup: cdn\n", "cache.setup", "not one of", id="unknown-setup"),
])
def test_bad_cache_section_names_key_and_line(section: str, key_path: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(with_cache(section), "bad.yaml")
    assert caught.value.key_path == key_path
    assert problem in caught.value.problem
    assert caught.value.line is not None


def test_edge_setup_needs_proxies_to_trust() -> None:
    text = DEFAULT_POLICY.read_text().replace("trusted_proxies: [127.0.0.0/8, ::1/128]",
                                              "trusted_proxies: []")
    with pytest.raises(PolicyError, match=r"client_ip\.trusted_proxies"):
        load_policy_text(with_cache("cache: {setup: edge, edge_country_header: cf-ipcountry}\n",
                                    text), "bad.yaml")


# -- every response that may be a page (issue 19) ----------------------------------------------

def answering(content_type: bytes | None, body: bytes) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"cache-control", b"public, max-age=600")]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return app


@pytest.mark.parametrize(("peer", "method"), [
    (SE, "GET"), (SE, "HEAD"), (CH, "GET"), (CH, "HEAD"), (CH, "POST"),
])  # (an EU visitor's POST here is refused: 451, no-store)
@pytest.mark.parametrize(("content_type", "body"), [
    pytest.param(None, b"<html><p>hi</p>", id="untyped"),
    pytest.param(b"text/plain, text/html", b"<p>hi</p>", id="html-last"),
    pytest.param(b"application/xhtml+xml", b"<html/>", id="xhtml"),
    pytest.param(b"image/svg+xml", b"<svg/>", id="svg"),
    pytest.param(b"*/*", b"<p>hi</p>", id="star"),
])
async def test_a_response_that_may_be_a_page_is_private_for_every_visitor(
    peer: str, method: str, content_type: bytes | None, body: bytes
) -> None:
    response = await get(guarded(answering(content_type, body)), peer, "/api/prices", method)
    assert response.headers["cache-control"] == "max-age=600, private"
    assert VARY in response.headers["vary"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_json_on_a_neutral_route_stays_shared_on_any_method(method: str) -> None:
    response = await get(guarded(answering(b"application/json", b"[]")), CH, "/api/prices",
                         method)
    assert response.headers["cache-control"] == "public, max-age=600"

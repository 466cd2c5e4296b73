"""End to end in a real headless Chromium: which promotions a visitor actually sees.

Playwright drives Debian's ``chromium`` (``bash tests/run`` installs it with apt-get; a missing
browser fails these tests, it never skips them, and Playwright's own browser download is never
used). The demo exchange runs under a real uvicorn; visitors are played with an
``X-Forwarded-For`` header, trusted from loopback. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from micafence import MicafenceMiddleware
from micafence_tools.demo.server import build_demo
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

pytestmark = [pytest.mark.browser, pytest.mark.server]

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
ALL_PROMOS = {"promo-banner", "promo-referral", "promo-uk-approved", "feed-p1", "feed-p2"}
VISITORS = [
    pytest.param("2a02:d000::1", ALL_PROMOS, id="switzerland"),
    pytest.param("89.160.20.112", set(), id="sweden-eu"),
    pytest.param("2a02:d180::1", set(), id="germany-eu"),
    pytest.param("216.160.83.56", {"promo-uk-approved"}, id="uk-zone"),
    pytest.param(None, set(), id="unknown-country"),
]
# Every element that is a promotion and is rendered (has a layout box), by id.
VISIBLE_PROMOS = """() => Array.from(document.querySelectorAll('[data-promo]'))
    .filter(e => e.getClientRects().length > 0).map(e => e.id)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run `bash tests/run`, which installs "
                    "it (apt-get install chromium); this test never skips")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with ServerThread(build_demo(DEFAULT_POLICY, COUNTRY_DB)) as server:
        yield server.url


def visible_promotions(browser: Any, url: str, ip: str | None, shot: str) -> set[str]:
    """Load ``url`` as a visitor from ``ip``; wait for the feed script; the promotions shown."""
    headers = {"X-Forwarded-For": ip} if ip else {}
    context = browser.new_context(extra_http_headers=headers)
    try:
        page = context.new_page()
        response = page.goto(url, wait_until="load")
        assert response is not None and response.status == 200
        page.wait_for_selector("body[data-promo-feed]", state="attached", timeout=10_000)
        assert page.get_attribute("body", "data-promo-feed") == "loaded"  # the JS ran fine
        assert page.locator("#prices").is_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        return set(page.evaluate(VISIBLE_PROMOS))
    finally:
        context.close()


@pytest.mark.parametrize(("ip", "expected"), VISITORS)
def test_demo_home_page_shows_each_visitor_only_their_promotions(
    browser: Any, demo_url: str, ip: str | None, expected: set[str]
) -> None:
    shot = f"demo-home-{ip or 'unknown'}".replace(":", "_")
    assert visible_promotions(browser, demo_url + "/", ip, shot) == expected


# -- the safety net alone: an app that ignores the template hook and gzips its pages ----------

NAIVE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Naive</title>
</head><body><h1>Naive exchange</h1>
<div id="promo-banner" data-promo>0% fees on your first trade</div>
<div id="promo-referral" data-promo data-promo-kind="incentive">Refer a friend: 20 USDT</div>
<div id="promo-uk-approved" data-promo data-promo-approved="uk">GBP deposits</div>
<table id="prices"><tr><td>BTC</td><td>61250.00</td></tr></table>
<div id="promo-feed"></div>
<script>
fetch("/api/promotions").then(r => r.json()).then(items => {
  items.forEach(p => { const d = document.createElement("div"); d.id = "feed-" + p.id;
    d.setAttribute("data-promo", ""); d.textContent = p.title;
    document.getElementById("promo-feed").appendChild(d); });
  document.body.dataset.promoFeed = "loaded";
}).catch(() => { document.body.dataset.promoFeed = "failed"; });
</script>""" + "<!-- padding so GZip compresses -->" * 40 + "</body></html>"


@pytest.fixture(scope="module")
def naive_url() -> Iterator[str]:
    async def home(request: Request) -> Response:
        return HTMLResponse(NAIVE_PAGE)

    async def feed(request: Request) -> Response:
        return JSONResponse([{"id": "p1", "title": "zero fees"}, {"id": "p2", "title": "bonus"}])

    app = Starlette(routes=[Route("/", home), Route("/api/promotions", feed)])
    guarded = MicafenceMiddleware(GZipMiddleware(app, minimum_size=100), policy=DEFAULT_POLICY,
                                  geoip_db=COUNTRY_DB)
    with ServerThread(guarded) as server:
        yield server.url


@pytest.mark.parametrize(("ip", "expected"), VISITORS)
def test_rewriter_alone_removes_what_a_careless_template_renders(
    browser: Any, naive_url: str, ip: str | None, expected: set[str]
) -> None:
    shot = f"naive-home-{ip or 'unknown'}".replace(":", "_")
    assert visible_promotions(browser, naive_url + "/", ip, shot) == expected

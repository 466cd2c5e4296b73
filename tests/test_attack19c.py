"""Outside attack on three speed changes of the safety net: ``data-*`` value tests run in
lol-html as presence and HTML's case-insensitive attribute values (selectors.py), the page
headers remembered per app header set (rewriter.py), the may-be-page answer asked once and the
request headers rebuilt only when the cut changes them (guard.py).

Findings (each fixed; the tests below failed before): the case-insensitive list applied to SVG
and MathML elements too, and ``~=`` split on more than HTML whitespace (an approval Chromium
does not see kept a promotion for a UK visitor); the header memo shared an app's
``memoryview`` with other responses, crashed on one it cannot hash, and its byte bound ignored
what each header costs (77 MB for 256 sets). Open (strict xfail): lol-html does not see an
integration point (``<mo>``, ``<foreignObject>``) that follows an end tag inside ``<math>`` or
``<svg>``, so a promotion marked on one reaches an EU visitor.
What held stays as plain tests.
"""

from __future__ import annotations

import gc
import re
import shutil
import tracemalloc
from typing import Any

import httpx
import pytest

from micafence.policy.probe import build_scope
from micafence.promotions import rewriter as rewriter_module
from micafence.promotions.engine import rewrite
from micafence.promotions.filter import PromotionFilter
from tests.test_browser import CHROMIUM_ARGS
from tests.test_rewriter import PAGE, SE, UK, RawApp, fetch, guarded, ids

_IDS = re.compile(rb"""\bid=["']?([\w-]+)""")


def removed_ids(page_filter: PromotionFilter, markup: bytes) -> set[str]:
    """The ids of the elements the safety net takes out of ``markup``."""
    before = {m.decode() for m in _IDS.findall(markup)}
    return before - {m.decode() for m in _IDS.findall(rewrite(page_filter, markup))}


# -- selectors, as Chromium's querySelectorAll matches them -----------------------------------

_BROWSER_CASES = [
    pytest.param('[type="promo"]',
                 b'<i id=h type="PROMO">a</i><svg><a id=s type="PROMO">b</a><foreignObject>'
                 b'<b id=f type="PROMO">c</b></foreignObject></svg><i id=k type="promos">d</i>',
                 id="case-insensitive-on-html-only"),
    pytest.param('[rel~="sponsored"]',
                 b'<a id=a rel="nofollow SPONSORED">a</a><a id=b rel="x&nbsp;sponsored">b</a>'
                 b'<a id=c rel="x&#11;sponsored">c</a><a id=d rel="x&#12;sponsored">d</a>'
                 b'<a id=e rel="x&#x2003;sponsored">e</a><svg><a id=g rel="SPONSORED">g</a></svg>',
                 id="word-list"),
    pytest.param('[data-promo-kind~="incentive"]',
                 b'<i id=a data-promo-kind="bonus&nbsp;incentive">a</i>'
                 b'<i id=b data-promo-kind="bonus &#105;ncentive">b</i>'
                 b'<i id=c data-promo-kind="Incentive">c</i>'
                 b'<i id=d data-promo-kind="x incentive" data-promo-kind="y">d</i>'
                 b'<i id=e data-promo-kind="y" data-promo-kind="incentive">e</i>'
                 b'<i id=f DATA-PROMO-KIND="&#x69;ncentive&#x1c;">f</i>'
                 b'<svg><g id=g data-promo-kind="incentive">g</g></svg>',
                 id="data-value-decoded"),
    pytest.param('[lang|="en"]',
                 b'<i id=a lang="EN-gb">a</i><svg><text id=b lang="EN">b</text></svg>'
                 b'<i id=c lang="en&#x2D;us">c</i>', id="dash-match"),
    pytest.param('.promo',
                 b'<i id=a class="x&#x2003;promo">a</i><i id=b class="x\tpromo">b</i>'
                 b'<i id=c class="PROMO">c</i>', id="class"),
]


@pytest.mark.browser
def test_selectors_remove_what_chromium_matches() -> None:
    # Chromium launched here and closed before the next test (its sync API runs an event loop
    # of its own, which the async tests of this module must not find running).
    executable = shutil.which("chromium")
    assert executable is not None, "Debian's chromium is not installed (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    found: dict[str, tuple[set[str], set[str]]] = {}
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page()
            for case in _BROWSER_CASES:
                selector, markup = case.values
                assert isinstance(selector, str) and isinstance(markup, bytes)
                page.set_content("<!doctype html><body>" + markup.decode())
                matched = set(page.evaluate(
                    "s => Array.from(document.querySelectorAll(s)).map(e => e.id)", selector))
                ours = removed_ids(PromotionFilter.build([selector], [], []), markup)
                found[str(case.id)] = (ours, matched)
        finally:
            chromium.close()
    assert {k: v for k, v in found.items() if v[0] != v[1]} == {}
    assert all(matched for _, matched in found.values())  # every case matches something


def test_an_approval_chromium_does_not_match_keeps_nothing() -> None:
    # UK (approved_only): a promotion stays only if its approval matches as the browser sees
    # it. On an SVG element ``rel`` is case-sensitive; a no-break space separates no words.
    page_filter = PromotionFilter.build(["[data-promo]"], ['[data-kind~="incentive"]'],
                                        ['[rel~="approved"]'])
    markup = (b'<a id=html data-promo rel="APPROVED">kept</a>'
              b'<svg><a id=svg data-promo rel="APPROVED">unapproved</a></svg>'
              b'<a id=nbsp data-promo rel="not&nbsp;approved">unapproved</a>'
              b'<a id=inc data-promo rel="approved" data-kind="x&#9;incentive">incentive</a>')
    assert removed_ids(page_filter, markup) == {"svg", "nbsp", "inc"}


async def test_uk_visitor_never_sees_a_promotion_approved_only_through_a_no_break_space() -> None:
    # The default policy: '[data-promo-approved~="uk"]'. "pending&nbsp;uk" is one word to the
    # browser, so the promotion is not approved and goes.
    page = (b'<div id="plain" data-promo data-promo-approved="pending&nbsp;uk">unapproved</div>'
            b'<div id="uk-ok" data-promo data-promo-approved="uk">GBP</div>'
            b'<p id="prices">BTC</p>')
    response = await fetch(guarded(RawApp([page])), UK)
    assert ids(response) == {"uk-ok", "prices"}


@pytest.mark.xfail(strict=True, reason=(
    "open: lol-html matches no integration-point element (MathML mi/mo/mn/ms/mtext/annotation-"
    "xml, SVG foreignObject/desc/title) that follows an end tag inside <math> or <svg>, for any "
    "selector; a fix needs a decision (refuse such pages, or a scan of our own)"))
@pytest.mark.parametrize("foreign", [
    pytest.param(b'<math><mi>x</mi><mo id="banner" data-promo>0% fees</mo></math>', id="mathml"),
    pytest.param(b'<svg><g></g><foreignObject id="banner" data-promo width="200" height="50">'
                 b'<p>0% fees</p></foreignObject></svg>', id="svg-foreignobject"),
])
async def test_a_promotion_on_a_foreign_integration_point_never_reaches_an_eu_visitor(
        foreign: bytes) -> None:
    # Chromium renders both (the <mo>'s text, the <foreignObject>'s HTML) with [data-promo]
    # matching them.
    page = (b'<!doctype html><html><body>' + foreign + b'<p id="prices">BTC</p></body></html>')
    response = await fetch(guarded(RawApp([page])))
    assert "0% fees" not in response.text


# -- the page headers remembered per app header set ----------------------------------------------

async def _in_process(app: Any, guard: Any = None) -> list[dict[str, Any]]:
    """Messages micafence sends for one Swedish GET of ``app`` (behind ``guard``, if given)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = build_scope(SE, "GET", "/", [("host", "exchange.test")])
    await (guard or guarded(app))(scope, receive, send)
    return sent


async def test_one_apps_memoryview_header_never_reaches_another_response() -> None:
    # An app hands a memoryview (equal to bytes, and hashable): the memo must not give that
    # object to the next response with equal headers, whose app sent plain bytes.
    app = RawApp([PAGE], headers=[(b"x-shard", memoryview(b"eu-7"))])
    guard = guarded(app)
    await _in_process(app, guard)
    app.headers = [(b"content-type", b"text/html; charset=utf-8"), (b"x-shard", b"eu-7")]
    response = await fetch(guard)
    assert response.status_code == 200
    assert response.headers["x-shard"] == "eu-7"
    assert ids(response) == {"prices"}


async def test_a_header_value_the_memo_cannot_hash_does_not_crash_the_page() -> None:
    odd = memoryview(b"abcd").cast("H")  # hash() raises ValueError, not TypeError
    sent = await _in_process(RawApp([PAGE], headers=[(b"x-odd", odd)]))
    assert sent[0]["status"] == 200
    assert b"data-promo" not in b"".join(m.get("body", b"") for m in sent[1:])


async def test_the_header_memo_stays_small_whatever_the_header_sets() -> None:
    # 256 header sets of many one-byte headers: each under the old 4096-byte bound, which
    # ignored what a header costs beyond its bytes (77 MB held).
    app = RawApp([PAGE])
    guard = guarded(app)
    await _in_process(app, guard)
    rewriter_module._PAGE_HEADERS.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(256):
            app.headers = [(b"content-type", b"text/html"), (b"x-%d" % index, b"")]
            app.headers += [(b"a", b"%d" % (j % 10)) for j in range(2000)]
            assert (await _in_process(app, guard))[0]["status"] == 200
        app.headers = []
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        rewriter_module._PAGE_HEADERS.clear()
    assert held < 8 << 20


async def test_the_memo_still_serves_each_response_its_own_cookie_and_set_cookie() -> None:
    # Held: the visitor cookie (added per response) and the app's Set-Cookie (in the key).
    page = PAGE
    first = guarded(RawApp([page], headers=[(b"set-cookie", b"session=alice")]))
    second = guarded(RawApp([page], headers=[(b"set-cookie", b"session=bob")]))
    for _ in range(2):
        a = await fetch(first, path="/?utm_source=x")
        b = await fetch(second)
        assert a.headers.get_list("set-cookie")[0] == "session=alice"
        assert b.headers.get_list("set-cookie") == ["session=bob"]
        assert b.headers["cache-control"] == "private"


# -- the request headers a restricted request keeps (held) ---------------------------------------

class _SeenApp(RawApp):
    """A RawApp that keeps the request's headers as a list (duplicates and order)."""

    seen: list[tuple[bytes, bytes]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen = [tuple(h) for h in scope["headers"]]  # type: ignore[misc]
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize(("sent", "kept"), [
    pytest.param([("accept-encoding", "gzip, deflate, br, zstd")],
                 [b"gzip, deflate, br, zstd"], id="chromium-unchanged"),
    pytest.param([("accept-encoding", "gzip, deflate, br, zstd, dcb, dcz")],
                 [b"gzip, deflate, br, zstd"], id="dictionary-codings"),
    pytest.param([("accept-encoding", "GZIP,DCB;q=1")], [b"GZIP"], id="case-no-space"),
    pytest.param([("accept-encoding", "*")], [], id="star"),
    pytest.param([("accept-encoding", "br;q=1, *;q=0")], [b"br;q=1, *;q=0"], id="star-refused"),
    pytest.param([("accept-encoding", "gzip"), ("accept-encoding", "dcz")], [b"gzip"],
                 id="duplicates"),
    pytest.param([("accept-encoding", "gzip"), ("range", "bytes=0-10")], [b"gzip"],
                 id="range-after"),
    pytest.param([("accept-encoding", " gzip ")], [b"gzip"], id="whitespace"),
])
async def test_accept_encoding_the_app_sees(sent: list[tuple[str, str]], kept: list[bytes]) -> None:
    app = _SeenApp([PAGE])
    transport = httpx.ASGITransport(app=guarded(app), client=(SE, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as client:
        response = await client.get("/", headers=sent)
    assert response.status_code == 200
    assert [v for n, v in app.seen if n == b"accept-encoding"] == kept
    assert not [n for n, _ in app.seen if n == b"range"]

"""Outside attack on issue 19's speed-ups of the safety net (memos per header value, lol-html's
exact fast path, identity codings, HEAD). Its two findings (a bytes-like Cache-Control or Vary
from the app crashed the header memos) are fixed; what held stays as plain tests."""

from __future__ import annotations

import pytest

from micafence.promotions.engine import rewrite
from micafence.promotions.filter import PromotionFilter
from tests.test_rewriter import PAGE, SE, RawApp, fetch, guarded

UK = "216.160.83.56"

pytestmark = pytest.mark.anyio


def _checked_only(page_filter: PromotionFilter) -> PromotionFilter:
    """The same filter with every selector decided in Python (the path before issue 19)."""
    twin = PromotionFilter(page_filter.remove, page_filter.approvals, page_filter.incentive)
    object.__setattr__(twin, "engine_plan", (None, ", ".join(page_filter.engine_selectors)))
    return twin


_FILTERS = {
    "restricted": PromotionFilter.build(["[data-promo]", "aside[data-ad]"],
                                        ["[data-incentive]"], ()),
    "approved_only": PromotionFilter.build(["[data-promo]", "aside[data-ad]"],
                                           ["[data-incentive]"], ["[data-approved-uk]"]),
}

_ODD_PAGES = [
    b"<div DATA-PROMO>a</div><div Data-Promo=x>b</div><p>keep</p>",
    b"<div data-promo-x>keep</div><div xdata-promo>keep</div><div title='data-promo'>keep</div>",
    b"<div data-promo=''>a</div><div data-promo/>b<p data-promo data-promo>c</p>",
    b"<svg><a xlink:data-promo data-promo>a</a><foo:bar data-promo>b</foo:bar></svg><p>k</p>",
    b"<math><mi data-promo>a</mi></math><template><div data-promo>t</div></template>",
    b"<noscript data-promo><div data-promo>n</div></noscript><noscript><b data-promo>m</b>"
    b"</noscript><p>keep</p>",
    b"<iframe data-promo srcdoc='<p data-promo>x</p>'></iframe>"
    b"<iframe srcdoc='<p data-promo>y</p><p>z</p>'></iframe>",
    b"<div data-promo data-approved-uk>approved</div><div data-promo data-approved-uk "
    b"data-incentive>incentive</div><div data-incentive>inc2</div>",
    b"<ASIDE DATA-AD>ad</ASIDE><aside data-ad='&amp;'>ad2</aside><div data-ad>keep</div>",
    b"<div data-promo\x00>nul</div><div data-pro\xc3\xa9mo>keep</div>"
    b"<div data-\xe2\x84\xaapromo>k</div>",
    b"<table><tr data-promo><td>r</td></tr><td data-promo>c</td></table><select>"
    b"<option data-promo>o</option></select>",
]


@pytest.mark.parametrize("who", sorted(_FILTERS))
@pytest.mark.parametrize("page", _ODD_PAGES)
def test_exact_fast_path_removes_what_the_checked_path_removes(who: str, page: bytes) -> None:
    page_filter = _FILTERS[who]
    assert rewrite(page_filter, page) == rewrite(_checked_only(page_filter), page)


def test_the_exact_fast_path_is_taken_only_without_approvals() -> None:
    exact, _ = _FILTERS["restricted"].engine_plan
    assert exact is not None and "[data-promo]" in exact
    assert _FILTERS["approved_only"].engine_plan[0] is None


def _cache_header(value: bytes) -> tuple[bytes, bytes]:
    return (b"cache-control", value)


async def test_a_bytearray_cache_control_from_the_app_does_not_crash_the_page() -> None:
    app = RawApp([PAGE], headers=[_cache_header(bytearray(b"max-age=60"))])
    response = await fetch(guarded(app), peer=SE)
    assert response.status_code == 200
    assert b"0% fees" not in response.content
    assert "private" in response.headers["cache-control"]


async def test_a_bytearray_vary_from_the_app_does_not_crash_the_page() -> None:
    app = RawApp([PAGE], headers=[(b"vary", bytearray(b"Accept-Language"))])
    response = await fetch(guarded(app), peer=SE)
    assert response.status_code == 200
    assert b"0% fees" not in response.content
    assert "Accept-Language" in response.headers["vary"]


_NOSCRIPT_PAGE = (b"<!doctype html><body><noscript><div data-promo>NOSCRIPT-PROMO</div></noscript>"
                  b"<p>keep \xc3\xa9</p></body>")


async def test_a_bom_page_after_a_page_without_one_is_read_by_its_bom_not_the_memo() -> None:
    # The charset memo keys on the Content-Type alone: a later UTF-8 BOM under the same
    # windows-1252 header must still be read as UTF-8 (its <noscript> cleaned), and a UTF-16
    # BOM refused, though the header's answer was remembered by the pages before.
    content_type = b"text/html; charset=windows-1252"
    middleware = guarded(RawApp([_NOSCRIPT_PAGE], content_type=content_type))
    assert (await fetch(middleware, peer=SE)).status_code == 200  # warms the memos
    bom = guarded(RawApp([b"\xef\xbb\xbf" + _NOSCRIPT_PAGE], content_type=content_type))
    response = await fetch(bom, peer=SE)
    assert response.status_code == 200 and b"NOSCRIPT-PROMO" not in response.content
    utf16 = ("\ufeff" + PAGE.decode()).encode("utf-16-le")
    response = await fetch(guarded(RawApp([utf16], content_type=content_type)), peer=SE)
    assert response.status_code == 451 and "0% fees" not in response.text


_UK_PAGE = (b'<html><body><div id="plain" data-promo>unapproved</div>'
            b'<div id="uk-ok" data-promo data-promo-approved="uk">GBP deposits</div>'
            b'<p id="prices">BTC</p></body></html>')


async def test_visitors_take_turns_on_one_middleware_without_sharing_answers() -> None:
    # One middleware, one Content-Type and Cache-Control: the memos are warm after the first
    # request; each visitor still gets its own page, and an anonymous answer never loses the
    # private marking a restricted one got.
    app = RawApp([_UK_PAGE], headers=[(b"cache-control", b"max-age=60")])
    middleware = guarded(app)
    for _ in range(2):
        swedish = await fetch(middleware, peer=SE)
        uk = await fetch(middleware, peer=UK)
        swiss = await fetch(middleware, peer="2a02:d000::1")
        assert b"GBP deposits" not in swedish.content and b"unapproved" not in swedish.content
        assert b"GBP deposits" in uk.content and b"unapproved" not in uk.content
        assert swiss.content == _UK_PAGE
        for response in (swedish, uk, swiss):
            assert "private" in response.headers["cache-control"]


async def test_head_through_the_net_after_a_get_carries_no_body() -> None:
    middleware = guarded(RawApp([PAGE]))
    assert b"0% fees" not in (await fetch(middleware, peer=UK)).content
    response = await fetch(middleware, peer=UK, method="HEAD")
    assert response.status_code == 200 and response.content == b""

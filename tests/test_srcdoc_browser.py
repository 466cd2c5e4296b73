"""``<iframe srcdoc>`` written back by the rewriter reads, in Chromium, as exactly the rewritten
document (issue 19: a promotion inside a ``srcdoc`` document rendered).

Each page is served twice under a real uvicorn, as the app wrote it and as
:func:`~micafence.promotions.engine.rewrite` made it, and Debian's headless ``chromium`` reads
every frame's ``srcdoc`` back through the DOM. The expected value is computed from what the
browser read on the original page, not from our own decoding of it: the nested rewrite of
that value. So both halves of the round trip are checked against the browser: our reading of
the attribute (character references, CR LF, quotes) and our escaping of the value we write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from micafence.promotions.engine import rewrite
from micafence.promotions.filter import PromotionFilter
from tests.conftest import ServerThread
from tests.live import answer_lifespan
from tests.test_browser import browser  # noqa: F401  (the shared Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.server]

FILTER = PromotionFilter.build(["[data-promo]"], [], [])
# Values as written in the page; each frame holds a promotion beside something hard to escape.
FRAMES = [
    # quotes and ampersands, escaped and double-escaped, a named reference without ';'
    '"<div data-promo>0%</div><p title=&quot;a&amp;amp;b &apos;q&apos;&quot;>&amp;copy &copy '
    '?a=1&copy=2 &notit; &#x26;lt;b&#x26;gt;</p>"',
    # a CR by reference, a literal CR LF and a lone CR, tabs; non-ASCII characters
    '"<p>line&#13;one\r\ntwo\rthree\tfour caf\xc3\xa9 \xe2\x82\xac 0x&#0;</p><b data-promo>x</b>"',
    # single-quoted, holding double quotes
    "'<p class=\"a\">\"quoted\"</p><span data-promo>x</span>'",
    # unquoted (no space, no '>': references stand for them)
    "<i&gt;x</i&gt;<b&#32;data-promo&gt;y</b&gt;",
    # a nested srcdoc holding the promotion, its own value escaped once more
    '"<p>outer</p><iframe srcdoc=&quot;<p title=&amp;quot;in&amp;amp;ner&amp;quot;>in</p>'
    '<div data-promo>x</div>&quot;></iframe>"',
    # invalid UTF-8 inside the value (read as U+FFFD by both)
    '"<p>\xff\xfe bytes</p><div data-promo>x</div>"',
]


def page(frames: list[str]) -> bytes:
    parts = [f"<iframe id=f{i} srcdoc={value}></iframe>" for i, value in enumerate(frames)]
    text = ("<!DOCTYPE html><html><head><meta charset=utf-8></head><body>"
            + "".join(parts) + "</body></html>")
    return text.encode("latin-1")  # the frames above are given as UTF-8 bytes already


ORIGINAL = page(FRAMES)
REWRITTEN = rewrite(FILTER, ORIGINAL)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] in ("http", "lifespan")
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    body = REWRITTEN if scope["path"] == "/rewritten" else ORIGINAL
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(app) as server:
        yield server.url


# Every frame's srcdoc, document by document (the top one's frames first, then theirs), and
# every [data-promo] element of every document.
READ = """() => {
  const values = [], found = [], docs = [document];
  for (let i = 0; i < docs.length && i < 100; i++) {
    for (const f of docs[i].querySelectorAll('iframe')) {
      values.push(f.getAttribute('srcdoc'));
      if (f.contentDocument) docs.push(f.contentDocument);
    }
    found.push(...Array.from(docs[i].querySelectorAll('[data-promo]'), e => e.localName));
  }
  return [values, found];
}"""


def test_srcdoc_written_back_is_read_by_chromium_as_the_rewritten_document(
        browser: Any, url: str) -> None:  # noqa: F811
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(f"{url}/original", wait_until="load")
        original, promos = tab.evaluate(READ)
        assert len(original) == len(FRAMES) + 1 and len(promos) == len(FRAMES)  # live cases
        tab.goto(f"{url}/rewritten", wait_until="load")
        seen, promos = tab.evaluate(READ)
        assert len(seen) == len(original) and promos == []
    finally:
        context.close()
    # The outer frames: what Chromium reads is the rewrite of what it read in the original.
    for index in range(len(FRAMES)):
        expected = rewrite(FILTER, original[index].encode("utf-8")).decode("utf-8")
        assert expected != original[index]
        assert seen[index] == expected, f"frame {index}"
    # The nested frame: its value, read in the rewritten outer document, lost its promotion.
    assert seen[-1] == '<p title="in&ner">in</p>'
    assert original[-1] == '<p title="in&ner">in</p><div data-promo>x</div>'

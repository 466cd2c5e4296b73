"""Issue 19, outside eyes: the streaming promotion safety net attacked under a real server.

Every test runs micafence (default policy, the bundled test GeoIP database) in front of an app
under uvicorn on 127.0.0.1; restricted visitors are played with ``X-Forwarded-For`` from
loopback (Swedish 89.160.20.112; Swiss 2a02:d000::1 may see promotions). Where the question is
what a visitor sees, the page is loaded in Debian's headless Chromium with the harness of
``tests/test_browser_corpus.py`` (reused, not copied).

A test marked ``xfail(strict=True)`` is a finding: it fails today and documents the fix (its
``reason`` says what is wrong); when the product is fixed it passes, strict xfail turns that
into a failure, and the mark must go. Unmarked tests are attacks that held.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread
from tests.corpus_cases import Case, guarded_corpus, typed
from tests.test_browser import browser  # noqa: F401  (the shared Chromium fixture)
from tests.test_browser_corpus import SWEDISH, SWISS, Visitor, check_case

Scope = MutableMapping[str, Any]

# -- pages a browser parses otherwise than lol-html's HTML tokenizer ---------------------------

XHTML_START = ('<?xml version="1.0" encoding="utf-8"?>\n'
               '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title></head><body>')
XHTML_END = '<p id="after">after</p><script>report("page")</script></body></html>'
XHTML = b"application/xhtml+xml"
PROMO = '<div id="promo" data-promo="">zero fees</div>'
# An internal DTD entity whose replacement text is a promotion. Character references in an
# entity value are expanded when it is declared, so the bytes never spell the start tag (nor even
# "data-promo"): only an XML parser sees the element, when &promo; is referenced.
ENTITY_DTD = ('<!ENTITY promo "&#60;div id=\'promo\' data-&#112;romo=\'\'&#62;zero fees'
              '&#60;/div&#62;">')
SVG_ENTITY_DTD = ('<!ENTITY promo "&#60;text id=\'promo\' data-&#112;romo=\'\' x=\'0\' y=\'20\''
                  '&#62;zero fees&#60;/text&#62;">')
XSLT = ('<?xml version="1.0"?>\n<xsl:stylesheet version="1.0" '
        'xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns="http://www.w3.org/1999/xhtml">'
        '<xsl:template match="/"><html><body><xsl:element name="div">'
        '<xsl:attribute name="id">promo</xsl:attribute><xsl:attribute name="data-promo"/>'
        '<xsl:value-of select="offers/offer"/></xsl:element>'
        '<script>report("page")</script></body></html></xsl:template></xsl:stylesheet>')
# ISO-2022-JP: after ESC $ B the bytes '<!' are one kanji, so the browser sees the <div> that
# follows ESC ( B; read as ASCII, '<!' opens a bogus comment that swallows the <div> start tag.
JIS_TRICK = b'<p>\x1b$B<!\x1b(B' + PROMO.encode() + b'</p>'
HTML_END = b'<p id="after">after</p><script>report("page")</script></body></html>'
# 70 000 bytes of script in <head>: Blink still reads a <meta charset> after it (it looks for
# one as long as the parser is in <head>), the safety net only in the first 64 KB.
LONG_HEAD_SCRIPT = b"<script>/*" + b"x" * 70_000 + b"*/</script>"


def xhtml(case_id: str, why: str, body: str, *, dtd: str = "",
          content_type: bytes = XHTML, shows_promo: bool = True) -> Case:
    start = XHTML_START
    if dtd:
        start = start.replace("\n", f"\n<!DOCTYPE html [ {dtd} ]>\n", 1)
    return Case(case_id, why, typed(content_type), (start + body + XHTML_END).encode(),
                shows_promo=shows_promo)


XML_FINDINGS = [
    xhtml("xhtml-xmp", "<xmp> is raw text to lol-html; in XHTML its children are elements "
          "and <xmp> renders them", f"<xmp>{PROMO}</xmp>"),
    xhtml("xhtml-plaintext", "<plaintext/> makes the rest of the page text to lol-html; in "
          "XHTML it is an empty element and what follows renders", f"<plaintext/>{PROMO}"),
    xhtml("xhtml-entity", "a promotion in an internal DTD entity: never a start tag in the bytes",
          "&promo;", dtd=ENTITY_DTD),
    xhtml("xml-entity", "the same as application/xml (an XHTML-namespaced document)",
          "&promo;", dtd=ENTITY_DTD, content_type=b"application/xml"),
    Case("svg-entity", "an SVG document whose promotion is an entity's replacement text",
         typed(b"image/svg+xml"),
         ('<?xml version="1.0"?>\n<!DOCTYPE svg [ ' + SVG_ENTITY_DTD + ' ]>\n'
          '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="40">&promo;'
          '<script>report("page")</script></svg>').encode()),
    Case("svg-foreignobject-xmp", "an <xmp> in an SVG document's <foreignObject>",
         typed(b"image/svg+xml"),
         ('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="60">'
          '<foreignObject width="300" height="60"><xmp xmlns="http://www.w3.org/1999/xhtml">'
          + PROMO + '</xmp></foreignObject><script>report("page")</script></svg>').encode()),
    Case("xml-xslt", "an XML document styled by XSLT: the stylesheet makes the promotion with "
         "<xsl:attribute name=\"data-promo\"/>, which no start tag carries",
         typed(b"application/xml"),
         b'<?xml version="1.0"?>\n<?xml-stylesheet type="text/xsl" href="/case/xslt-sheet"?>\n'
         b'<offers><offer>zero fees</offer></offers>'),
]
XSLT_SHEET = Case("xslt-sheet", "the stylesheet of xml-xslt", typed(b"text/xsl"),
                  XSLT.encode(), shows_promo=False, not_a_page="fetched by xml-xslt only")
CHARSET_FINDINGS = [
    Case("jis-late-meta", "<meta charset=iso-2022-jp> in <head> after 70 KB of script: Blink "
         "reads it and decodes the page as ISO-2022-JP; the net reads 64 KB, sees no charset, "
         "and rewrites the page as ASCII", typed(b"text/html"),
         b'<!DOCTYPE html><html><head><title>t</title>' + LONG_HEAD_SCRIPT
         + b'<meta charset="iso-2022-jp"></head><body>' + JIS_TRICK + HTML_END),
]
HELD = [
    Case("jis-meta-50k", "the same meta after 50 KB: within the 64 KB the net reads (refused)",
         typed(b"text/html"),
         b'<!DOCTYPE html><html><head><title>t</title><script>/*' + b"x" * 50_000
         + b'*/</script><meta charset="iso-2022-jp"></head><body>' + JIS_TRICK + HTML_END),
    Case("jis-escape-after-64k", "an undeclared page with ISO-2022-JP escapes only after 70 KB: "
         "Chromium's detector does not pick ISO-2022-JP, the page is windows-1252 (no promotion "
         "element in either reading)", typed(b"text/html"),
         b'<!DOCTYPE html><html><head><title>t</title></head><body><!--' + b"x" * 70_000
         + b"-->" + JIS_TRICK + HTML_END, shows_promo=False),
    xhtml("xhtml-noscript", "<noscript> in XHTML: lol-html cleans it (held; never rendered with "
          "scripts on)", f"<noscript>{PROMO}</noscript>",
          shows_promo=False),
]
BROWSER_CASES = [*XML_FINDINGS, *CHARSET_FINDINGS, *HELD, XSLT_SHEET]


@pytest.fixture(scope="module")
def attack_corpus() -> Iterator[str]:
    app, _ = guarded_corpus(BROWSER_CASES)
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def attack_visitors(browser: Any) -> Iterator[tuple[Visitor, Visitor]]:  # noqa: F811
    swiss, swedish = Visitor(browser, SWISS), Visitor(browser, SWEDISH)
    try:
        yield swiss, swedish
    finally:
        swiss.context.close()
        swedish.context.close()


def _load_both(url: str, visitors: tuple[Visitor, Visitor], case: Case) -> list[str]:
    swiss = visitors[0].load(f"{url}/case/{case.id}")
    swedish = visitors[1].load(f"{url}/case/{case.id}")
    return check_case(case, swiss, swedish)


XML_REASON = ("lol-html tokenizes XML documents (XHTML, application/xml, SVG) as HTML: raw-text "
              "elements (<xmp>, <plaintext>) hide their children from it, DTD entities and XSLT "
              "make elements no start tag spells. Proposed fix: read XML kinds with an XML "
              "tokenizer (expat reports byte offsets) and refuse (on_unrewritable) a DOCTYPE "
              "with an internal subset and an <?xml-stylesheet?>, or refuse every XML page that "
              "holds any of these constructs")


@pytest.mark.browser
@pytest.mark.server
@pytest.mark.xfail(strict=True, reason=XML_REASON)
@pytest.mark.parametrize("case", XML_FINDINGS, ids=lambda case: case.id)
def test_xml_document_promotion_hidden_from_the_html_tokenizer(
        case: Case, attack_corpus: str, attack_visitors: tuple[Visitor, Visitor]) -> None:
    problems = _load_both(attack_corpus, attack_visitors, case)
    assert not problems, f"case {case.id} ({case.why}):\n  " + "\n  ".join(problems)


@pytest.mark.browser
@pytest.mark.server
@pytest.mark.xfail(strict=True, reason=(
    "the charset is settled on the first 64 KB, but Blink honours a <meta charset> anywhere in "
    "<head> (HTMLMetaCharsetParser stops only when it leaves <head>): a late ISO-2022-JP meta "
    "makes the browser decode markup the net read as ASCII. Proposed fix: keep scanning for "
    "<meta> while lol-html is still in <head> (an element handler on head meta can refuse/abort "
    "on an ASCII-incompatible charset), or refuse an undeclared page whose <head> outlives the "
    "64 KB hold"))
@pytest.mark.parametrize("case", CHARSET_FINDINGS, ids=lambda case: case.id)
def test_late_meta_charset_beyond_the_hold(
        case: Case, attack_corpus: str, attack_visitors: tuple[Visitor, Visitor]) -> None:
    problems = _load_both(attack_corpus, attack_visitors, case)
    assert not problems, f"case {case.id} ({case.why}):\n  " + "\n  ".join(problems)


@pytest.mark.browser
@pytest.mark.server
@pytest.mark.parametrize("case", HELD, ids=lambda case: case.id)
def test_held_in_chromium(case: Case, attack_corpus: str,
                          attack_visitors: tuple[Visitor, Visitor]) -> None:
    problems = _load_both(attack_corpus, attack_visitors, case)
    assert not problems, f"case {case.id} ({case.why}):\n  " + "\n  ".join(problems)

"""The XML rewriter (expat) on its own: what it cuts, what it keeps byte for byte, what it refuses.

Pages a browser parses as XML (XHTML, SVG, ``application/xml``) are read by expat, not by
lol-html; the browser-level checks are in ``tests/test_browser_corpus.py`` (the ``xml`` cases).
"""

from __future__ import annotations

import pytest

from micafence.promotions.engine import RewriteError
from micafence.promotions.filter import PromotionFilter
from micafence.promotions.xml_rewriter import XmlRewriter

FILTER = PromotionFilter.build(["[data-promo]"], ["[data-incentive]"], [])
XHTML = (b'<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml">'
         b"<head><title>t</title></head><body>")
END = b"<p>after</p></body></html>\n"


def rewrite(page: bytes, sizes: tuple[int, ...] = (), utf8: bool = True) -> bytes:
    """``page`` through one XmlRewriter, in pieces of ``sizes`` (cycled; whole if empty)."""
    rewriter = FILTER.rewriter(xml=True, utf8=utf8)
    assert isinstance(rewriter, XmlRewriter)
    out, at, index = [], 0, 0
    while at < len(page):
        size = sizes[index % len(sizes)] if sizes else len(page)
        out.append(rewriter.write(page[at:at + size]))
        at += size
        index += 1
    out.append(rewriter.end())
    return b"".join(out)


def same_in_every_piece_size(page: bytes, **options: bool) -> bytes:
    results = {rewrite(page, sizes, **options) for sizes in ((), (1,), (3, 7), (4096,))}
    assert len(results) == 1, results
    return results.pop()


@pytest.mark.parametrize(("body", "kept"), [
    pytest.param(b'<div data-promo="">x<b>y</b></div>', b"", id="element"),
    pytest.param(b'<div data-promo=""/>tail', b"tail", id="empty-element-tag"),
    pytest.param(b'<div data-promo="" ></div ><i>i</i>', b"<i>i</i>", id="spaces-in-tags"),
    pytest.param(b'<xmp><div data-promo="">x</div></xmp>', b"<xmp></xmp>", id="xmp"),
    pytest.param(b'<plaintext/><div data-promo="">x</div>', b"<plaintext/>", id="plaintext"),
    pytest.param(b'<noscript><div data-promo="">x</div></noscript>', b"<noscript></noscript>",
                 id="noscript"),
    pytest.param(b'<template><div data-promo="">x</div></template>', b"<template></template>",
                 id="template"),
    pytest.param(b'<div data-promo="&#x3e;"><div data-promo="">x</div></div>', b"",
                 id="nested"),
    pytest.param(b'<x:div xmlns:x="http://www.w3.org/1999/xhtml" data-promo="">x</x:div>', b"",
                 id="prefixed-element"),
    pytest.param(b'<g a:data-promo="" xmlns:a="urn:a"/>k', b"k", id="prefixed-attribute"),
    pytest.param(b'<div DATA-PROMO="">x</div>', b"", id="upper-case-name"),
    pytest.param(b'<p data-incentive="">x</p><![CDATA[<div data-promo="">]]>',
                 b'<![CDATA[<div data-promo="">]]>', id="cdata-is-text"),
])
def test_promotions_are_cut_and_every_other_byte_kept(body: bytes, kept: bytes) -> None:
    assert same_in_every_piece_size(XHTML + body + END) == XHTML + kept + END


def test_a_page_without_promotions_passes_byte_for_byte() -> None:
    page = (b'<?xml version="1.0"?>\n<!-- c --><?other x?>\n<svg xmlns="http://www.w3.org/2000/svg"'
            b' viewBox="0 0 8 8">\r\n<path d="M0 0h8v8z"/><text>&amp;&#60;&lt;</text>'
            b"<![CDATA[<x>]]></svg>\n\n")
    assert same_in_every_piece_size(page) == page


def test_text_entities_in_the_doctype_are_read() -> None:
    """An internal subset of text entities (as illustration programs write): kept, read."""
    page = (b'<!DOCTYPE svg [ <!ENTITY ns "http://www.w3.org/2000/svg"> <!ENTITY c "promo"> ]>'
            b'<svg xmlns="&ns;"><g class="&c;" data-promo="">x</g><text>&c;</text></svg>')
    promo_by_class = PromotionFilter.build([".promo"], [], [])
    rewriter = promo_by_class.rewriter(xml=True)
    assert rewriter.write(page) + rewriter.end() == page.replace(
        b'<g class="&c;" data-promo="">x</g>', b"")
    assert same_in_every_piece_size(page) == page.replace(b'<g class="&c;" data-promo="">x</g>',
                                                          b"")


def test_a_page_in_another_ascii_compatible_charset() -> None:
    page = (XHTML.replace(b"utf-8", b"iso-8859-2") + b'<p>\xe9\xb9</p><div data-promo="">x</div>'
            + END)
    assert same_in_every_piece_size(page, utf8=False) == page.replace(
        b'<div data-promo="">x</div>', b"")


@pytest.mark.parametrize(("page", "problem"), [
    pytest.param(XHTML + b"<p>" + END, "not well-formed", id="not-well-formed"),
    pytest.param(XHTML + b"&nbsp;" + END, "not well-formed", id="undefined-entity"),
    pytest.param(XHTML + b"<p>\xff</p>" + END, "not well-formed", id="not-utf-8"),
    pytest.param(b'<?xml-stylesheet type="text/xsl" href="s.xsl"?><r/>', "xml-stylesheet",
                 id="xslt"),
    pytest.param(b'<r><?XML-STYLESHEET href="s.css"?></r>', "xml-stylesheet",
                 id="stylesheet-anywhere"),
    pytest.param(b"<!DOCTYPE r [ <!ENTITY p \"&#60;div data-promo=''/&#62;\"> ]><r>&p;</r>",
                 "replacement text is markup", id="entity-with-markup"),
    pytest.param(b'<!DOCTYPE r [ <!ENTITY % p "x"> ]><r/>', "parameter entity",
                 id="parameter-entity"),
    pytest.param(b'<!DOCTYPE r [ <!ENTITY e SYSTEM "e.xml"> ]><r>&e;</r>', "external entity",
                 id="external-entity"),
    pytest.param(b'<!DOCTYPE r [ <!ATTLIST div data-promo CDATA "x"> ]><r><div/></r>',
                 "default for attribute", id="attribute-default"),
])
def test_what_cannot_be_vouched_for_is_refused(page: bytes, problem: str) -> None:
    with pytest.raises(RewriteError, match=problem):
        rewrite(page)


def test_a_refused_rewriter_refuses_every_later_call() -> None:
    rewriter = FILTER.rewriter(xml=True)
    with pytest.raises(RewriteError):
        rewriter.write(b"<r></x>")
    with pytest.raises(RewriteError):
        rewriter.write(b"<r/>")
    with pytest.raises(RewriteError):
        rewriter.end()


def test_srcdoc_with_a_promotion_is_emptied() -> None:
    page = (XHTML + b'<iframe id="a" srcdoc="&lt;div data-promo&gt;x&lt;/div&gt;"/>'
            b"<iframe srcdoc='&lt;p&gt;ok'></iframe>" + END)
    assert same_in_every_piece_size(page) == page.replace(
        b'srcdoc="&lt;div data-promo&gt;x&lt;/div&gt;"', b'srcdoc=""')


def test_output_streams_and_holds_little() -> None:
    """Bytes go out as events pass them: what is held is the token being read (of a long
    text, what the last piece brought)."""
    rewriter = FILTER.rewriter(xml=True)
    rewriter.write(XHTML + b"<p>" + b"x" * 100_000)
    assert rewriter.write(b"x" * 100) == b"x" * 100_000
    sent = rewriter.write(b'</p><div data-promo="">' + b"y" * 100_000)
    assert b"y" not in sent
    # The removed element ends where the next event begins; then each token waits for its next.
    assert rewriter.write(b"</div><p>z</p>") == b"<p>z"
    assert rewriter.write(b"<i/>") == b"</p><i/>"  # (expat ends an empty tag at its end)
    assert rewriter.removed == 1

"""The promotion engine (lol-html): what it removes, and that every other byte passes untouched.

Byte-exactness: a second run marks where each removed element starts; the rewritten page must
be the input with spans cut, each beginning at such a start, and nothing else changed. What is
removed is checked against an HTML5 tree builder (lexbor): parsed as a browser parses it, the
rewritten page must hold no promotion element. The corpus is html5lib-tests
(tests/data/html5lib-tests, MIT), each input with ``data-promo`` added to one tag name at a
time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import lolhtml
import pytest
from selectolax.lexbor import LexborHTMLParser, LexborNode

from micafence.policy.selectors import decode_attribute
from micafence.promotions.engine import (
    SRCDOC_DEPTH,
    PageRewriter,
    RewriteError,
    escape_attribute,
    rewrite,
)
from micafence.promotions.filter import PromotionFilter

CORPUS = Path(__file__).parent / "data" / "html5lib-tests"
DEFAULT = PromotionFilter.build(["[data-promo]"], ['[data-promo-kind~="incentive"]'], [])
UK = PromotionFilter.build(["[data-promo]"], ['[data-promo-kind~="incentive"]'],
                           ['[data-promo-approved~="uk"]'])
START = "\ue000"


def run(page_filter: PromotionFilter, page: bytes, remove: bool) -> str:
    """lol-html over ``page`` with a START mark before each element the filter removes: the
    element removed too (``remove``), or left in place (its start is then where the mark is)."""
    out: list[bytes] = []
    rewriter = lolhtml.HTMLRewriter(out.append)

    class Mark:
        def element(self, element: lolhtml.Element) -> None:
            if element.removed:
                return
            attributes: dict[str, str] = {}
            for name, value in element.attributes:
                attributes.setdefault(name.lower(), decode_attribute(value))
            if page_filter.removes(element.tag_name, attributes):
                element.before(START, lolhtml.ContentType.HTML)
                if remove:
                    element.remove()

    mark = Mark()
    for selector in page_filter.engine_selectors:
        rewriter.on(selector, mark)
    rewriter.write(page)
    rewriter.end()
    return b"".join(out).decode("utf-8", "surrogateescape")


def cut_at_starts(page: str, starts: list[int], pieces: list[str]) -> bool:
    """Is ``pieces`` (the rewritten page, split where elements were removed) ``page`` with
    spans cut, each span beginning at one of ``starts`` (where removed elements begin)?"""
    if not page.startswith(pieces[0]):
        return False
    begun = len(pieces[0])  # where the span being cut begins
    if pieces[1:] and begun not in starts:
        return False
    for index, piece in enumerate(pieces[1:], 1):
        if index == len(pieces) - 1:
            end = len(page)
        else:
            after = [s for s in starts if s > begun and s - len(piece) > begun
                     and page[s - len(piece):s] == piece]
            if not after:
                return False
            end = after[0]
        if end - len(piece) <= begun or page[end - len(piece):end] != piece:
            return False
        begun = end
    return True


def promotions_in(html: str) -> int:
    """``[data-promo]`` elements in the tree an HTML5 parser builds (templates included)."""
    tree = LexborHTMLParser(html)
    count = 0

    def walk(node: LexborNode) -> None:
        nonlocal count
        count += len(node.css("[data-promo]"))
        for fragment in node.template_fragments():
            walk(fragment)

    if tree.root is not None:
        walk(tree.root)
    return count


def _tree_inputs() -> Iterator[tuple[str, str]]:
    for path in sorted((CORPUS / "tree-construction").glob("*.dat")):
        for index, block in enumerate(path.read_text(encoding="utf-8").split("\n\n#data\n")):
            if "#document-fragment" in block:
                continue
            yield f"{path.stem}:{index}", block.removeprefix("#data\n").split("\n#errors")[0]


def _tokenizer_inputs() -> Iterator[tuple[str, str]]:
    for path in sorted((CORPUS / "tokenizer").glob("*.test")):
        for index, test in enumerate(json.loads(path.read_text(encoding="utf-8"))["tests"]):
            if not test.get("doubleEscaped"):
                yield f"{path.stem}:{index}", test["input"]


TAGS = ("div", "p", "a", "b", "i", "table", "td", "tr", "svg", "math", "mi", "style", "select",
        "option", "li", "span", "template", "textarea", "title", "script", "form", "img", "br",
        "iframe", "noscript", "frameset", "body", "html", "head", "foreignobject", "desc")


def _promoted(source: Iterator[tuple[str, str]]) -> Iterator[tuple[str, bytes]]:
    """Each input with ``data-promo`` added to every start tag of one tag name."""
    for case, data in source:
        for tag in TAGS:
            pattern = re.compile(f"<{tag}(?=[\\s/>])", re.IGNORECASE)
            if pattern.search(data):
                page = pattern.sub(lambda found: found.group(0) + " data-promo", data)
                yield f"{case}:{tag}", page.encode("utf-8", "surrogatepass")


CASES = [*_promoted(_tree_inputs()), *_promoted(_tokenizer_inputs())]

# Where lol-html, a streaming tokenizer, and a tree builder disagree (docs/promotions.md).
# MathML text integration points (mi, mo, mn, ms, mtext) after a closed one, and SVG <title>
# after <foreignObject>: lol-html's namespace tracking loses them (lol-html 2.7.0).
KNOWN_MISSES = re.compile(r"<mi data-promo|<title data-promo", re.IGNORECASE)


@pytest.mark.parametrize(("case", "page"), CASES, ids=[case for case, _ in CASES])
def test_every_other_byte_passes_untouched_and_no_promotion_is_left(
    case: str, page: bytes
) -> None:
    try:
        out = rewrite(DEFAULT, page)
    except RewriteError as exc:
        # lol-html refuses some nonconforming markup (a text tag where it cannot tell whether
        # the tree builder would ignore it): the page takes the policy's failure posture.
        assert "ambiguous" in str(exc) or "ambiguity" in str(exc)
        return
    text = page.decode("utf-8", "surrogateescape")
    if "<noscript" not in text.lower():  # (<noscript> content is rewritten by a nested run)
        in_place = run(DEFAULT, page, remove=False)
        assert in_place.replace(START, "") == text  # marking moved no byte
        starts = [m.start() - i for i, m in enumerate(re.finditer(START, in_place))]
        pieces = run(DEFAULT, page, remove=True).split(START)
        assert "".join(pieces).encode("utf-8", "surrogateescape") == out
        if not KNOWN_MISSES.search(text):  # (a missed <mi> start is missing from ``starts``)
            assert cut_at_starts(text, starts, pieces)
    if not KNOWN_MISSES.search(page.decode("utf-8", "replace")):
        assert promotions_in(out.decode("utf-8", "replace")) == 0


def test_the_corpus_is_large_enough_to_mean_something() -> None:
    assert len(CASES) > 2500


# -- the cases ------------------------------------------------------------------------

MXSS = (b"<div data-promo>0% fees</div><math><mtext><table><mglyph><style>"
        b"<img src=x onerror=\"document.title='XSS'\">")
FORM = b"<form><math><mtext></form><form><mglyph><style></math><div data-promo>x</div>"


def test_mxss_page_loses_its_promotion_and_nothing_else() -> None:
    assert rewrite(DEFAULT, MXSS) == MXSS.removeprefix(b"<div data-promo>0% fees</div>")


def test_form_pattern_is_left_as_it_came() -> None:
    # In the browser the <div data-promo> is text inside an HTML <style>; lol-html agrees, and
    # the bytes go out unchanged, so the browser builds the same (promotion-free) tree.
    assert promotions_in(FORM.decode()) == 0
    assert rewrite(DEFAULT, FORM) == FORM


@pytest.mark.parametrize(("page", "out"), [
    pytest.param(b"<div data-promo><p>0% fees</div><p>after", b"<p>after", id="unclosed-inside"),
    pytest.param(b"<div data-promo>0% fees<p>and the rest", b"", id="never-closed-to-the-end"),
    pytest.param(b"<div data-promo/>0% fees</div>after", b"after", id="self-closing-html"),
    pytest.param(b"<svg><g data-promo/>kept</svg>", b"<svg>kept</svg>", id="self-closing-svg"),
    # lol-html ends the div at </p>; the stray </div> left is ignored by the browser, which
    # had closed the <p> before the <div> anyway.
    pytest.param(b'<p id="prices">x<div data-promo>y</p></div>z', b'<p id="prices">x</div>z',
                 id="misnested"),
    pytest.param(b"<table><tr><td>1</td></tr><div data-promo>fostered</div></table>",
                 b"<table><tr><td>1</td></tr></table>", id="foster-parented"),
    pytest.param(b"<template><div data-promo>t</div><i>k</i></template>",
                 b"<template><i>k</i></template>", id="template"),
    pytest.param(b"<textarea><div data-promo>text</div></textarea>",
                 b"<textarea><div data-promo>text</div></textarea>", id="text-not-markup"),
    pytest.param(b'<DIV DATA-PROMO id="x">0% fees</DIV>y', b"y", id="upper-case"),
    pytest.param(b"<div data-promo-slot></div>", b"<div data-promo-slot></div>",
                 id="longer-name"),
    pytest.param(b"<p data-promo>a<p>b", b"", id="implied-end-runs-on"),
])
def test_what_lol_html_removes(page: bytes, out: bytes) -> None:
    """How far a removal reaches in malformed markup (recorded in docs/promotions.md): to the
    matching end tag, or to the end of the page when there is none. Self-closing syntax counts
    only in SVG and MathML, as in HTML; an XHTML page's ``<div data-promo/>`` therefore takes
    what follows up to the parent's end tag with it."""
    assert rewrite(DEFAULT, page) == out


# -- matching ---------------------------------------------------------------------------------

UK_PAGE = (b'<div id="plain" data-promo>a</div>'
           b'<div id="ok" data-promo data-promo-approved="uk">b</div>'
           b'<div data-promo data-promo-approved="uk" data-promo-kind="incentive">c</div>'
           b'<div data-promo data-promo-approved="u&#107;" data-promo-kind="x&#32;incentive">d'
           b"</div><p>e</p>")


def test_uk_keeps_approved_promotions_and_never_incentives() -> None:
    assert rewrite(UK, UK_PAGE) == b'<div id="ok" data-promo data-promo-approved="uk">b</div>' \
        b"<p>e</p>"
    assert rewrite(DEFAULT, UK_PAGE) == b"<p>e</p>"


@pytest.mark.parametrize(("selector", "page", "out"), [
    pytest.param(".banner", b'<i class="b&#97;nner">x</i><i class="banners">y</i>',
                 b'<i class="banners">y</i>', id="class-with-a-character-reference"),
    pytest.param(".banner", b'<i class="top BANNER">x</i><i class="top banner">y</i>',
                 b'<i class="top BANNER">x</i>', id="class-case-sensitive"),
    pytest.param("#hero", b'<i id="hero">x</i><i id="hero2">y</i>', b'<i id="hero2">y</i>',
                 id="id"),
    pytest.param("[data-x^=ab i]", b'<i data-x="ABc">x</i><i data-x="cab">y</i>',
                 b'<i data-x="cab">y</i>', id="prefix-ignoring-case"),
    pytest.param("[href*=promo]", b'<a href="/p?x&amp;promo">x</a><a href="/q">y</a>',
                 b'<a href="/q">y</a>', id="substring"),
    pytest.param("[href$='&copy=1']", b'<a href="?a&copy=1">x</a>', b"",
                 id="legacy-reference-left-literal-in-attributes"),
    pytest.param("aside, [data-ad]", b"<aside>x</aside><b data-ad>y</b><p>z</p>", b"<p>z</p>",
                 id="list"),
    pytest.param("[lang|=en]", b'<i lang="en-GB">x</i><i lang="eng">y</i>',
                 b'<i lang="eng">y</i>', id="dash-match"),
    # HTML's case-insensitive attribute values, as the browser's selectors compare them
    pytest.param("[rel~=sponsored]", b'<a REL="nofollow SPONSORED">x</a><a rel="ugc">y</a>',
                 b'<a rel="ugc">y</a>', id="rel-value-case-insensitive"),
    # a data-* test runs in lol-html as the attribute's presence, decided here on the value
    pytest.param('[data-kind~="incentive"]',
                 b'<i data-kind="x &#105;ncentive">a</i><i data-kind="incentives">b</i>'
                 b'<i data-kind="Incentive">c</i><i data-kind="bonus incentive">d</i>',
                 b'<i data-kind="incentives">b</i><i data-kind="Incentive">c</i>',
                 id="data-attribute-value-decoded"),
])
def test_selectors_match_the_decoded_values(selector: str, page: bytes, out: bytes) -> None:
    assert rewrite(PromotionFilter.build([selector], [], []), page) == out


def test_a_page_split_anywhere_is_rewritten_the_same() -> None:
    page = '<p>价格</p><div id="x" data-promo>0% fees</div><p class="a&amp;b">keep</p>'.encode()
    whole = rewrite(DEFAULT, page)
    for size in range(1, 12):
        rewriter = PageRewriter(DEFAULT)
        out = b"".join(rewriter.write(page[i:i + size]) for i in range(0, len(page), size))
        assert out + rewriter.end() == whole


def test_output_starts_before_the_page_ends() -> None:
    rewriter = PageRewriter(DEFAULT)
    assert rewriter.write(b"<p>prices</p><div data-promo>0% ") == b"<p>prices</p>"
    assert rewriter.write(b"fees</div><p>more") == b"<p>more"
    assert rewriter.end() == b""
    assert rewriter.removed == 1


@pytest.mark.parametrize(("page", "out"), [
    pytest.param(b"<noscript><div data-promo>0% fees</div><img src=/t.gif></noscript><p>x",
                 b"<noscript><img src=/t.gif></noscript><p>x", id="body"),
    pytest.param(b"<head><noscript><style data-promo>.x{}</style></noscript></head>",
                 b"<head><noscript></noscript></head>", id="head"),
    pytest.param("<noscript>café <b>x</b></noscript>".encode(),
                 "<noscript>café <b>x</b></noscript>".encode(), id="untouched"),
])
def test_noscript_content_is_cleaned_for_browsers_without_javascript(
    page: bytes, out: bytes
) -> None:
    assert rewrite(DEFAULT, page) == out
    rewriter = PageRewriter(DEFAULT)
    assert b"".join(rewriter.write(page[i:i + 3]) for i in range(0, len(page), 3)) \
        + rewriter.end() == out


def test_noscript_on_a_page_not_in_utf8_passes_as_it_came() -> None:
    """(lol-html would give its text back from a UTF-8 reading: a documented limit.)"""
    page = "<noscript>café<div data-promo>x</div></noscript>".encode("latin-1")
    assert rewrite(DEFAULT, page, utf8=False) == page


@pytest.mark.parametrize(("page", "out"), [
    pytest.param(b'<iframe srcdoc="<p>a</p><div data-promo>x</div>"></iframe>',
                 b'<iframe srcdoc="<p>a</p>"></iframe>', id="promotion"),
    pytest.param(b"<iframe SRCDOC='<b title=\"t\">&amp;amp;</b><i data-promo>x</i>' id=f>",
                 b'<iframe SRCDOC="<b title=&quot;t&quot;>&amp;amp;</b>" id=f>', id="quotes"),
    pytest.param(b'<iframe srcdoc="a&#13;b\r\nc<div data-promo>x</div>">',
                 b'<iframe srcdoc="a&#13;b\nc">', id="cr"),
    pytest.param(b'<iframe srcdoc="<iframe srcdoc=&quot;<p data-promo>x</p>y&quot;>">',
                 b'<iframe srcdoc="<iframe srcdoc=&quot;y&quot;>">', id="nested"),
    pytest.param(b'<noscript><iframe srcdoc="<p data-promo>x</p>y"></iframe></noscript>',
                 b'<noscript><iframe srcdoc="y"></iframe></noscript>', id="in-noscript"),
    pytest.param(b'<iframe srcdoc="<p>&amp;copy=1 &copy</p>">',
                 b'<iframe srcdoc="<p>&amp;copy=1 &copy</p>">', id="untouched"),
    pytest.param(b'<iframe data-promo srcdoc="<p>x</p>"></iframe><p>y',
                 b"<p>y", id="iframe-itself"),
])
def test_srcdoc_documents_are_cleaned_and_written_back(page: bytes, out: bytes) -> None:
    """(Chromium reads the value back exactly: tests/test_srcdoc_browser.py.)"""
    assert rewrite(DEFAULT, page) == out


def test_srcdoc_that_cannot_be_written_back_exactly_is_emptied() -> None:
    """On a page not in UTF-8 (lol-html read the value as UTF-8) or parsed as XML (other
    attribute rules) a srcdoc holding a promotion becomes an empty document."""
    page = '<iframe srcdoc="café<p data-promo>x</p>"></iframe><p>café'.encode("latin-1")
    assert rewrite(DEFAULT, page, utf8=False) == '<iframe srcdoc=""></iframe><p>café'.encode(
        "latin-1")
    page = b'<iframe srcdoc="<p>a</p><p data-promo>x</p>"/><p>b</p>'
    assert rewrite(DEFAULT, page, xml=True) == b'<iframe srcdoc="" /><p>b</p>'
    clean = '<iframe srcdoc="café"></iframe>'.encode("latin-1")
    assert rewrite(DEFAULT, clean, utf8=False) == clean


def test_srcdoc_nested_past_the_depth_limit_is_emptied_unread() -> None:
    inner = "<p>deep</p>"
    for _ in range(SRCDOC_DEPTH + 1):
        inner = f'<iframe srcdoc="{escape_attribute(inner)}"></iframe>'
    out = rewrite(DEFAULT, inner.encode()).decode()
    for _ in range(SRCDOC_DEPTH):
        found = re.fullmatch(r'<iframe srcdoc="(.*)"></iframe>', out)
        assert found is not None
        out = decode_attribute(found.group(1))
    assert out == '<iframe srcdoc=""></iframe>'


def test_a_refused_page_leaves_the_rewriter_unusable_not_crashed() -> None:
    rewriter = PageRewriter(DEFAULT)
    with pytest.raises(RewriteError):
        rewriter.write(b"<select data-promo><plaintext></plaintext>X")
    with pytest.raises(RewriteError):
        rewriter.write(b"more")
    with pytest.raises(RewriteError):
        rewriter.end()


@pytest.mark.parametrize("charset", ["iso-8859-1", "shift_jis", "windows-1252", "euc-kr"])
def test_legacy_charset_bytes_pass_as_they_came(charset: str) -> None:
    text = {"shift_jis": "価格の一覧", "euc-kr": "가격"}.get(charset, "Café «prix»")
    page = f"<p>{text}</p><div data-promo>{text}</div><p>{text}</p>".encode(charset)
    kept = f"<p>{text}</p>".encode(charset)
    assert rewrite(DEFAULT, page) == kept + kept

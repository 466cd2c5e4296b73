"""The browser corpus of issue 19: pages a promotion could slip through the safety net in.

Each :class:`Case` is a response given byte for byte: its header lines (several
``Content-Type`` lines, empty values, none at all) and its body (in its own charset, compressed
as its ``Content-Encoding`` says). :func:`corpus_app` serves case ``id`` at ``/case/<id>`` from
a raw ASGI endpoint, so nothing between the case and the wire normalises a header, and
:func:`guarded_corpus` mounts it behind :class:`~micafence.MicafenceMiddleware` with the
default policy. ``tests/test_browser_corpus.py`` loads every case in Chromium as a visitor who
may see promotions and as one who may not.

A case's scripts (and its ``onerror`` handlers) call ``report("name")``, a binding the browser
test installs: what ran is compared between the two loads. Every promotion element carries
``data-promo`` (the default policy's selector).

Some cases come from html5lib-tests' tree-construction suite (MIT; the inputs used are copied,
with the licence, into ``tests/data/html5lib/``): each input is followed by a promotion, so a
parser that ends the input in another state than the browser does misses it.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import zstandard
from starlette.applications import Starlette
from starlette.routing import Route

from micafence import MicafenceMiddleware
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

Header = tuple[bytes, bytes]

HTML5LIB = Path(__file__).parent / "data" / "html5lib" / "corpus.dat"
#: Every page case is cacheable as its app sends it: the safety net must make it private.
CACHEABLE: Header = (b"cache-control", b"public, max-age=600")
PROMO = '<div id="promo" data-promo>0% fees on your first trade</div>'
#: ``report`` is called with one name per script; the test compares the names per load.
PAGE_SCRIPT = '<script>report("page")</script>'


@dataclass(frozen=True)
class Case:
    """One response of the corpus, as the app sends it.

    ``shows_promo``: Chromium renders at least one ``[data-promo]`` element for a visitor who
    may see promotions (the test asserts it, so the case is known to be live). ``not_a_page``:
    why Chromium does not render the response as a page at all (then nothing can be shown and
    ``shows_promo`` is false). ``page``: the response may be a page (typed or sniffed), so the
    restricted answer must say ``nosniff`` and no answer may be shared-cacheable.
    ``untouched``: the restricted visitor must get exactly these bytes (JSON, an icon).
    ``keeps``: the ``report`` names whose scripts must run for the restricted visitor too (the
    content around a removed promotion that must stay).
    """

    id: str
    why: str
    headers: tuple[Header, ...]
    body: bytes
    shows_promo: bool = True
    not_a_page: str | None = None
    page: bool = True
    untouched: bool = False
    group: str = "markup"
    tags: frozenset[str] = field(default_factory=frozenset)
    keeps: frozenset[str] = frozenset()


def html_page(body: str, *, head: str = "", doctype: bool = True, meta: str | None = "utf-8",
              script: bool = True) -> str:
    """A small page around ``body``: a baseline script reports ``page`` once it has run."""
    meta_tag = f'<meta charset="{meta}">' if meta else ""
    return (("<!DOCTYPE html>" if doctype else "")
            + f"<html><head>{meta_tag}<title>corpus</title>{head}</head><body>"
            + f'<p id="before">before</p>{body}<p id="after">after</p>'
            + (PAGE_SCRIPT if script else "") + "</body></html>")


def typed(content_type: bytes | None, *extra: Header) -> tuple[Header, ...]:
    """Headers of a cacheable response with one ``Content-Type`` line (none if ``None``)."""
    lines: list[Header] = [] if content_type is None else [(b"content-type", content_type)]
    return (*lines, CACHEABLE, *extra)


HTML_UTF8 = b"text/html; charset=utf-8"


def markup(case_id: str, why: str, body: str, *, shows_promo: bool = True, head: str = "",
           doctype: bool = True) -> Case:
    """An HTML page (UTF-8, typed) whose body holds the trick."""
    page = html_page(body, head=head, doctype=doctype)
    return Case(case_id, why, typed(HTML_UTF8), page.encode(), shows_promo=shows_promo)


# -- mXSS and tree construction: what a re-serialised tree turns into -------------------------

MARKUP_CASES = [
    markup("mxss-mglyph-style",
           "the issue's mXSS: a re-serialised <style> under <mglyph> becomes live markup",
           PROMO + '<math><mtext><table><mglyph><style><img src=x '
           'onerror="report(\'mxss-img\')">'),
    markup("mxss-form-mglyph",
           "the issue's nested-form mXSS: a [data-promo] inside inert <style> text comes back",
           PROMO + '<form><math><mtext></form><form><mglyph><style></math>'
           '<div id="promo-revived" data-promo>revived</div><img src=x '
           'onerror="report(\'mxss-form-img\')">'),
    markup("mxss-noscript-title",
           "with scripting on, <noscript> is raw text: '</noscript>' inside an attribute ends it",
           '<noscript><p title="</noscript><div id=promo data-promo>fees</div>'
           '<img src=x onerror=report(\'noscript-img\')>"></noscript>'),
    markup("svg-style-breakout",
           "<style> in SVG is not raw text and a <div> breaks out of foreign content",
           '<svg><style><div id=promo data-promo>fees</div></style></svg>'),
    markup("svg-plaintext-foreign",
           "<plaintext> inside SVG is an SVG element, not the end of markup",
           '<svg><plaintext>x</plaintext></svg>' + PROMO),
    markup("svg-xmp-foreign", "<xmp> inside SVG is an SVG element, its content markup",
           '<svg><xmp><div id=promo data-promo>fees</div></xmp></svg>'),
    markup("svg-foreignobject", "a promotion inside <svg><foreignObject> is HTML and shown",
           '<svg width="300" height="60"><foreignObject width="300" height="60">'
           '<div id=promo data-promo>fees</div></foreignObject></svg>'),
    markup("svg-g-promo", "an SVG element carrying the attribute is a promotion too",
           '<svg width="300" height="40"><g id=promo data-promo><text x="0" y="20">fees</text>'
           '</g></svg>'),
    markup("math-promo", "a MathML element carrying the attribute",
           '<math><mi id=promo data-promo>fees</mi></math>'),
    markup("foster-table-div", "a promotion in a table before any cell is fostered out",
           '<table><div id=promo data-promo>fees</div><tr><td>cell</td></tr></table>'),
    markup("foster-table-row", "a promotion between cells is fostered before the table",
           '<table><tr><td>a</td><div id=promo data-promo>fees</div></tr></table>'),
    markup("foster-table-text", "a promotion with text, fostered, its end tag inside a cell",
           '<table>lead<b id=promo data-promo>fees<tr><td>cell</b></td></tr></table>'),
    markup("table-promo", "a promotion table with a cell",
           '<table id=promo data-promo><tr><td>fees</td></tr></table>'),
    markup("template-content", "a promotion in <template> content (not rendered, but in DOM "
           "a script can clone) beside a live one",
           '<template id=tpl><div id=promo-tpl data-promo>fees</div></template>' + PROMO),
    markup("template-clone", "a page script clones a template holding a promotion",
           '<template id=tpl><div id=promo-tpl data-promo>fees</div></template>'
           '<div id=slot></div><script>document.getElementById("slot").append('
           'document.getElementById("tpl").content.cloneNode(true));report("clone")</script>'),
    markup("shadow-open", "a promotion in a declarative open shadow root",
           '<div id=host><template shadowrootmode="open"><div id=promo data-promo>fees</div>'
           '</template></div>'),
    markup("shadow-closed", "a promotion in a declarative closed shadow root: no script sees it",
           '<div id=host><template shadowrootmode="closed"><div id=promo data-promo>fees</div>'
           '</template></div>'),
    markup("noscript-inert", "<noscript> text beside a live promotion",
           '<noscript><div id=promo-ns data-promo>fees</div></noscript>' + PROMO),
    markup("plaintext-after", "a live promotion before <plaintext>, a dead one after",
           PROMO + '<plaintext><div data-promo>text</div>'),
    markup("xmp-end", "<xmp> ends at </xmp> and what follows is markup",
           '<xmp><div data-promo>text</div></xmp >' + PROMO),
    markup("iframe-srcdoc", "a promotion in an <iframe srcdoc> document",
           '<iframe srcdoc="<div id=promo data-promo>fees</div>'
           '<script>report(&quot;srcdoc&quot;)</script>"></iframe>'),
    markup("iframe-srcdoc-nested", "a promotion in a srcdoc document inside a srcdoc document",
           '<iframe srcdoc="<p title=&quot;a&amp;amp;b&quot;>outer</p><iframe srcdoc=&quot;'
           '<div id=promo data-promo>fees</div><script>report(&amp;quot;inner&amp;quot;)'
           '</script>&quot;></iframe>"></iframe>'),
    markup("iframe-rawtext", "<iframe> content is raw text, </iframe> ends it",
           '<iframe><div data-promo>text</div></iframe>' + PROMO),
    markup("textarea-title-rcdata", "RCDATA in <textarea> and <title>, then a live promotion",
           '<textarea><div data-promo>t</div></textarea>' + PROMO,
           head='<title><div data-promo>t</div></title>'),
    markup("script-double-escape",
           "'<!--<script>' in a script: its first '</script>' does not end it, '-->' then does",
           '<script>var s = "<!--<script>";</script><div data-promo>script text</div>'
           '--></script>' + PROMO),
    markup("unclosed-inside", "unclosed elements inside a promotion, page ends inside it",
           '<div id=promo data-promo><p>fees<span>more<b>bold'),
    markup("unclosed-promo-p", "an unclosed <p> promotion closed by the next <p>",
           '<p id=promo data-promo>fees<p>next'),
    markup("nested-promos", "a promotion inside a promotion, and one after",
           '<div id=promo data-promo><div data-promo>inner</div>outer</div>'
           '<span id=promo2 data-promo>second</span>'),
    markup("adoption-clone", "the adoption agency clones a formatting promotion into a <p>",
           '<b id=promo data-promo>fees<p>in p</b>tail</p>'),
    markup("formatting-reconstruct", "an open formatting promotion is reconstructed in the "
           "next paragraphs",
           '<p><i id=promo data-promo>fees</p><p>next</p><p>again'),
    markup("comment-abrupt", "'<!-->' is an empty comment: the promotion after it is live",
           '<!-->' + PROMO + '-->'),
    markup("comment-bang-close", "'--!>' closes a comment",
           '<!-- x --!>' + PROMO + '<!-- -->'),
    markup("comment-dash-gt", "'<!--->' is an empty comment too", '<!--->' + PROMO + '-->'),
    markup("cdata-outside-foreign", "<![CDATA[ outside SVG is a bogus comment ending at '>'",
           '<![CDATA[>' + PROMO + ']]>'),
    markup("cdata-inside-svg", "CDATA in SVG is text: the promotion after it is live",
           '<svg><![CDATA[<div data-promo>text</div>]]></svg>' + PROMO),
    markup("processing-instruction", "'<?' is a bogus comment up to '>'",
           '<?php echo "x" ?>' + PROMO),
    markup("attr-uppercase", "attribute names are case-insensitive in HTML",
           '<DIV ID=promo DATA-PROMO>fees</DIV>'),
    markup("attr-empty-value", 'data-promo="" is the attribute', '<div id=promo data-promo="">'
           'fees</div>'),
    markup("attr-whitespace", "tabs, newlines and form feeds between attributes",
           '<div\tid=promo\ndata-promo\x0c>fees</div>'),
    markup("attr-slash", "slashes between attributes are whitespace", '<div/data-promo/id=promo>'
           'fees</div>'),
    markup("attr-no-space", 'an attribute right after a quoted value',
           '<div id="promo"data-promo>fees</div>'),
    markup("attr-quoted-gt", "a quoted '>' in an earlier attribute", '<div title=">"'
           ' id=promo data-promo>fees</div>'),
    markup("attr-duplicate", "a duplicate attribute (the first wins)",
           '<div id=promo data-promo=a data-promo=b>fees</div>'),
    markup("attr-not-promo", "a value is not an attribute: no promotion on this page",
           '<div title="data-promo" class="x data-promo">not a promotion</div>',
           shows_promo=False),
    markup("quirks-no-doctype", "no doctype: quirks mode, and a <p> inside a table", '<table>'
           '<tr><td><p id=promo data-promo>fees</table>', doctype=False),
    markup("head-promo", "a promotion element written in <head> is moved into <body>", "",
           head='<div id=promo data-promo>fees</div>'),
    markup("html-attr-merge", "a second <html> tag adds its attributes to the root element",
           '<html id=promo data-promo>'),
    markup("body-attr-merge", "a second <body> tag adds its attributes to the body",
           '<body id=promo data-promo>'),
    Case("after-body", "a promotion after </body></html> still lands in <body>",
         typed(HTML_UTF8), (html_page("") + PROMO).encode()),
]


# -- content types: what makes a response a page ----------------------------------------------

PLAIN_PAGE = html_page(PROMO).encode()
XHTML = (b'<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml">'
         b'<head><title>xhtml</title></head><body><p>before</p>'
         b'<div id="promo" data-promo="">0% fees</div>'
         b'<script>report("page")</script></body></html>')
SVG_PROMO = (b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="60">'
             b'<script>report("page")</script>'
             b'<g id="promo" data-promo=""><text x="0" y="30">0% fees</text></g></svg>')
SVG_ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">'
            b'<circle cx="8" cy="8" r="7" fill="#0a0"/></svg>')
JSON_BODY = b'{"promo": "<div data-promo>0% fees</div>", "price": 61250.0}'


def typed_case(case_id: str, why: str, headers: Sequence[Header], body: bytes = PLAIN_PAGE,
               **options: Any) -> Case:
    return Case(case_id, why, (*headers, CACHEABLE), body, group="content-type", **options)


CT = b"content-type"
TYPE_CASES = [
    typed_case("ct-html", "plain text/html, the baseline", [(CT, HTML_UTF8)]),
    typed_case("ct-list-plain-html", "one line 'text/plain, text/html': Fetch takes the last",
               [(CT, b"text/plain, text/html")]),
    typed_case("ct-two-lines", "two Content-Type lines, text/plain first",
               [(CT, b"text/plain"), (CT, b"text/html")]),
    typed_case("ct-unknown-unknown", "unknown/unknown is sniffed", [(CT, b"unknown/unknown")]),
    typed_case("ct-application-unknown", "application/unknown is sniffed",
               [(CT, b"application/unknown")]),
    typed_case("ct-star-star", "*/* is sniffed", [(CT, b"*/*")]),
    typed_case("ct-empty", "an empty Content-Type value", [(CT, b"")]),
    typed_case("ct-bogus", "'bogus' is no MIME type", [(CT, b"bogus")]),
    typed_case("ct-space-in-type", "'text /html' is no MIME type", [(CT, b"text /html")]),
    typed_case("ct-uppercase", "TEXT/HTML with odd spacing", [(CT, b"  TEXT/HTML ;Charset=UTF-8")]),
    typed_case("ct-xhtml", "application/xhtml+xml", [(CT, b"application/xhtml+xml")], XHTML),
    typed_case("ct-xhtml-srcdoc", "XHTML with a promotion in an <iframe srcdoc>",
               [(CT, b"application/xhtml+xml")],
               XHTML.replace(b"<p>before</p>", b'<p>before</p><iframe srcdoc="&lt;div id=p2 '
                             b'data-promo&gt;fees&lt;/div&gt;"></iframe>')),
    typed_case("ct-application-xml-xhtml", "application/xml carrying XHTML",
               [(CT, b"application/xml")], XHTML),
    typed_case("ct-text-xml-xhtml", "text/xml carrying XHTML", [(CT, b"text/xml")], XHTML),
    typed_case("ct-svg-promo", "an SVG document with a promotion", [(CT, b"image/svg+xml")],
               SVG_PROMO),
    typed_case("ct-untyped", "no Content-Type at all: sniffed as HTML", []),
    typed_case("ct-untyped-vt", "untyped, starting with \\x0b (not whitespace to the sniffer)",
               [], b"\x0b" + PLAIN_PAGE),
    typed_case("ct-untyped-leading-ws", "untyped, starting with spaces and a tag the sniffer "
               "knows", [], b" \t\n<div>x</div>" + PROMO.encode()),
    typed_case("ct-charset-in-param", 'text/html; foo="charset=utf-16": not a charset',
               [(CT, b'text/html; foo="charset=utf-16"')]),
    typed_case("ct-xcharset", "text/html; xcharset=utf-16; charset=utf-8",
               [(CT, b"text/html; xcharset=utf-16; charset=utf-8")]),
    typed_case("ct-octet-stream", "application/octet-stream is downloaded, never rendered",
               [(CT, b"application/octet-stream")], shows_promo=False, page=False,
               not_a_page="Chromium downloads application/octet-stream"),
    typed_case("ct-attachment", "HTML sent as an attachment: downloaded, opened later as a page",
               [(CT, HTML_UTF8), (b"content-disposition", b'attachment; filename="offer.html"')],
               shows_promo=False, not_a_page="Content-Disposition: attachment is downloaded"),
    typed_case("ct-text-plain", "text/plain is shown as text, never sniffed: nothing to remove",
               [(CT, b"text/plain")], shows_promo=False, page=False),
    typed_case("ct-json", "a JSON response mentioning a promotion passes untouched",
               [(CT, b"application/json")], JSON_BODY, shows_promo=False, page=False,
               untouched=True),
    # The same bytes for every visitor: the icon does not depend on the zone, so it may stay
    # publicly cacheable (page=False); it must reach the restricted visitor as it is.
    typed_case("ct-svg-icon", "an SVG icon without promotions stays an image",
               [(CT, b"image/svg+xml")], SVG_ICON, shows_promo=False, page=False,
               untouched=True),
]


# -- charsets: the bytes around a promotion in another encoding -------------------------------

def charset_case(case_id: str, why: str, text: str, encoding: str, content_type: bytes,
                 *, meta: str | None = None, bom: bytes = b"") -> Case:
    body_html = f"<p>{text}</p><div id=promo data-promo>{text} 0%</div><p>{text}</p>"
    page = html_page(body_html, meta=meta)
    return Case(case_id, why, typed(content_type), bom + page.encode(encoding), group="charset")


def raw_charset_case(case_id: str, why: str, content_type: bytes, body: bytes,
                     **options: Any) -> Case:
    return Case(case_id, why, typed(content_type), body, group="charset", **options)


ISO2022_HEAD = b"<!DOCTYPE html><html><head><title>jis</title></head><body><p>"
ISO2022_TAIL = b"<script>report(\"page\")</script></body></html>"
CHARSET_CASES = [
    charset_case("cs-windows-1252", "windows-1252 text", "Prämie für Kunden - €",
                 "cp1252", b"text/html; charset=windows-1252"),
    charset_case("cs-latin1-label", "the iso-8859-1 label means windows-1252", "Prämie - €",
                 "cp1252", b"text/html; charset=iso-8859-1"),
    charset_case("cs-iso-8859-2", "iso-8859-2 text", "Żółć gęślą jaźń", "iso8859_2",
                 b"text/html; charset=iso-8859-2"),
    charset_case("cs-shift-jis", "Shift_JIS text", "手数料無料キャンペーン", "cp932",
                 b"text/html; charset=Shift_JIS"),
    charset_case("cs-euc-jp", "EUC-JP text", "手数料無料キャンペーン", "euc_jp",
                 b"text/html; charset=EUC-JP"),
    charset_case("cs-gbk", "GBK text", "零手续费交易", "gbk", b"text/html; charset=GBK"),
    charset_case("cs-big5", "Big5 text", "零手續費交易", "big5", b"text/html; charset=Big5"),
    charset_case("cs-euc-kr", "EUC-KR text", "수수료 무료", "euc_kr",
                 b"text/html; charset=EUC-KR"),
    Case("cs-windows-1252-srcdoc", "a promotion in an <iframe srcdoc> on a windows-1252 page",
         typed(b"text/html; charset=windows-1252"), html_page(
             '<p>Prämie</p><iframe srcdoc="<p>Prämie</p><div id=promo data-promo>0%</div>">'
             '</iframe>', meta=None).encode("cp1252"), group="charset"),
    charset_case("cs-utf8-bom", "a UTF-8 BOM", "Prämie", "utf-8",
                 b"text/html; charset=utf-8", bom=b"\xef\xbb\xbf"),
    charset_case("cs-utf16le-bom", "UTF-16LE with its BOM", "Prämie 手数料", "utf-16-le",
                 b"text/html; charset=utf-16le", bom=b"\xff\xfe"),
    charset_case("cs-utf16be-bom", "UTF-16BE with its BOM", "Prämie 手数料", "utf-16-be",
                 b"text/html; charset=utf-16be", bom=b"\xfe\xff"),
    charset_case("cs-bom-beats-header", "a UTF-16LE BOM beats the header's utf-8",
                 "Prämie", "utf-16-le", b"text/html; charset=utf-8", bom=b"\xff\xfe"),
    charset_case("cs-meta-only", "no charset in the header, <meta charset=shift_jis>",
                 "手数料無料", "cp932", b"text/html", meta="shift_jis"),
    charset_case("cs-header-beats-meta", "the header's windows-1252 beats <meta utf-8>",
                 "Prämie - €", "cp1252", b"text/html; charset=windows-1252", meta="utf-8"),
    charset_case("cs-meta-utf16", "<meta charset=utf-16> on ASCII bytes means UTF-8",
                 "Prämie", "utf-8", b"text/html", meta="utf-16"),
    charset_case("cs-unknown-label", "an unknown charset label: the meta or the default decides",
                 "Prämie", "cp1252", b"text/html; charset=x-nonsense", meta="windows-1252"),
    charset_case("cs-utf16-no-bom", "charset=utf-16 without a BOM is UTF-16LE",
                 "Prämie 手数料", "utf-16-le", b"text/html; charset=utf-16"),
    charset_case("cs-x-user-defined", "x-user-defined: Python has no such codec",
                 "Prämie", "cp1252", b"text/html; charset=x-user-defined"),
    # WHATWG's decoders are supersets of Python's codecs of the same name: these bytes decode
    # in Chromium and fail (or differ) in Python's shift_jis, euc_kr, gbk and big5.
    charset_case("cs-shift-jis-windows-31j", "Shift_JIS is windows-31j to a browser (NEC ①②)",
                 "①② 手数料", "cp932", b"text/html; charset=shift_jis"),
    charset_case("cs-euc-kr-uhc", "EUC-KR is windows-949 to a browser (똠)", "똠 수수료", "cp949",
                 b"text/html; charset=euc-kr"),
    charset_case("cs-gbk-gb18030", "GBK is decoded as gb18030 by a browser (a four-byte 𠀀)",
                 "𠀀 零手续费", "gb18030", b"text/html; charset=gbk"),
    raw_charset_case("cs-gbk-0x80", "byte 0x80 is € in a browser's GBK, an error in Python's",
                     b"text/html; charset=gbk",
                     html_page("<p>@@</p>" + PROMO, meta=None).encode().replace(b"@@", b"\x80")),
    charset_case("cs-big5-hkscs", "Big5 is Big5-HKSCS to a browser (𥚃)", "𥚃 零手續費",
                 "big5hkscs", b"text/html; charset=big5"),
    raw_charset_case("cs-shift-jis-lone-lead", "a Shift_JIS lead byte before '<': the browser "
                     "keeps the '<'", b"text/html; charset=shift_jis",
                     html_page("<p>@@</p>" + PROMO, meta=None).encode().replace(b"@@", b"\x81")),
    raw_charset_case("cs-iso-2022-jp", "ISO-2022-JP with JIS X 0208 text around a promotion",
                     b"text/html; charset=iso-2022-jp",
                     ISO2022_HEAD + "手数料".encode("iso2022_jp")
                     + b"</p><div id=promo data-promo>" + "無料".encode("iso2022_jp")
                     + b"</div>" + ISO2022_TAIL),
    raw_charset_case("cs-iso-2022-jp-lone-lead",
                     "ESC $ B, one lead byte, ESC ( B: Chromium is back in ASCII, Python not",
                     b"text/html; charset=iso-2022-jp",
                     ISO2022_HEAD + b"\x1b$BA\x1b(B<div id=promo data-promo>fees</div>"
                     + ISO2022_TAIL),
    raw_charset_case("cs-iso-2022-jp-katakana",
                     "ESC ( I (half-width katakana) is WHATWG's, not Python's iso2022_jp",
                     b"text/html; charset=iso-2022-jp",
                     ISO2022_HEAD + b"\x1b(I12\x1b(B<div id=promo data-promo>fees</div>"
                     + ISO2022_TAIL),
    raw_charset_case("cs-iso-2022-jp-swallow",
                     "JIS X 0208 mode turns markup bytes into kanji: no promotion shown",
                     b"text/html; charset=iso-2022-jp",
                     ISO2022_HEAD + b"\x1b$B<div data-promo>\x1b(B" + ISO2022_TAIL,
                     shows_promo=False),
]


# -- content codings ---------------------------------------------------------------------------

CODED_PAGE = html_page(PROMO + "<p>" + "padding " * 200 + "</p>").encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def coded(case_id: str, why: str, coding: bytes, body: bytes, **options: Any) -> Case:
    headers = (*typed(HTML_UTF8), (b"content-encoding", coding))
    return Case(case_id, why, headers, body, group="coding", **options)




def members(*parts: str) -> bytes:
    """A gzip body of one member per part."""
    return b"".join(gzip.compress(part.encode()) for part in parts)


# Chromium decodes the first member of a gzip body only (checked on Debian's chromium 156: the
# page ends where the first member does): a promotion in a later member is never shown, and a
# script there never runs. A safety net that decodes every member and sends them back as one
# makes Chromium run it.
_LATER = "<p>third member</p><script>report('third-member')</script></body></html>"
CODING_CASES = [
    coded("ce-gzip", "gzip", b"gzip", gzip.compress(CODED_PAGE)),
    coded("ce-gzip-upper", "GZIP spelled in capitals", b"GZIP", gzip.compress(CODED_PAGE)),
    coded("ce-x-gzip", "the x-gzip alias", b"x-gzip", gzip.compress(CODED_PAGE)),
    coded("ce-gzip-3-members", "gzip of three members, the promotion in the second (Chromium "
          "stops after the first member: nothing shown)", b"gzip",
          members("<!DOCTYPE html><html><body><p>first member</p>", PROMO, _LATER),
          shows_promo=False),
    coded("ce-gzip-3-members-first", "gzip of three members, the promotion in the first",
          b"gzip", members("<!DOCTYPE html><html><body><p>first</p>" + PROMO,
                           "<p>second member</p>", _LATER)),
    coded("ce-deflate-zlib", "deflate as RFC 9110 says (zlib wrapper)", b"deflate",
          zlib.compress(CODED_PAGE)),
    coded("ce-deflate-raw", "deflate without the zlib wrapper (browsers accept it)", b"deflate",
          raw_deflate(CODED_PAGE)),
    coded("ce-br", "brotli", b"br", brotli.compress(CODED_PAGE)),
    coded("ce-zstd", "zstd", b"zstd", zstandard.ZstdCompressor().compress(CODED_PAGE)),
    coded("ce-gzip-br", "stacked 'gzip, br': brotli of gzip", b"gzip, br",
          brotli.compress(gzip.compress(CODED_PAGE))),
    coded("ce-gzip-members-br", "'gzip, br' whose gzip has three members (kept only for gzip "
          "alone: refused)", b"gzip, br",
          brotli.compress(members("<!DOCTYPE html><html><body><p>first</p>" + PROMO,
                                  "<p>second member</p>", _LATER))),
    coded("ce-identity", "Content-Encoding: identity", b"identity", CODED_PAGE),
    coded("ce-empty", "an empty Content-Encoding", b"", CODED_PAGE),
    coded("ce-unknown", "an unknown coding on plain bytes", b"x-unknown", CODED_PAGE),
]


# -- documents Chromium parses as XML: what an HTML tokenizer reads otherwise ------------------

XML_HEAD = ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>xml</title></head><body>')
XML_TAIL = '<p id="after">after</p>' + PAGE_SCRIPT + "</body></html>"
XML_PROMO = '<div id="promo" data-promo="">0% fees</div>'
# Character references in an entity value are expanded when it is declared: the bytes never
# spell the start tag, only an XML parser makes the element where &promo; is referenced.
# ('%' would start a parameter entity reference in an entity value: "zero fees".)
XML_ENTITY = ("<!ENTITY promo \"&#60;div id='promo' data-&#112;romo=''&#62;zero fees"
              '&#60;/div&#62;">')
XSLT_SHEET = ('<?xml version="1.0"?>\n<xsl:stylesheet version="1.0" '
              'xmlns:xsl="http://www.w3.org/1999/XSL/Transform" '
              'xmlns="http://www.w3.org/1999/xhtml"><xsl:template match="/"><html><body>'
              '<xsl:element name="div"><xsl:attribute name="id">promo</xsl:attribute>'
              '<xsl:attribute name="data-promo"/><xsl:value-of select="offers/offer"/>'
              '</xsl:element>' + PAGE_SCRIPT + "</body></html></xsl:template></xsl:stylesheet>")
ILLUSTRATOR_ICON = (b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE svg PUBLIC '
                    b'"-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd"'
                    b' [\n\t<!ENTITY ns_svg "http://www.w3.org/2000/svg">\n'
                    b'\t<!ENTITY st0 "fill:#0a0;">\n]>\n<svg xmlns="&ns_svg;" width="16" '
                    b'height="16" viewBox="0 0 16 16"><circle style="&st0;" cx="8" cy="8" r="7"/>'
                    b"</svg>\n")


def xhtml_case(case_id: str, why: str, body: str, *, dtd: str = "",
               content_type: bytes = b"application/xhtml+xml", **options: Any) -> Case:
    head = XML_HEAD
    if dtd:
        head = head.replace("\n", f"\n<!DOCTYPE html [ {dtd} ]>\n", 1)
    return Case(case_id, why, typed(content_type), (head + body + XML_TAIL).encode(),
                group="xml", **options)


XML_CASES = [
    xhtml_case("xml-xhtml-xmp", "<xmp> is raw text to an HTML tokenizer; in XHTML its children "
               "are elements and render", f"<xmp>{XML_PROMO}</xmp>"),
    xhtml_case("xml-xhtml-plaintext", "<plaintext/> turns the rest into text for an HTML "
               "tokenizer; in XHTML it is an empty element and what follows renders",
               f"<plaintext/>{XML_PROMO}"),
    xhtml_case("xml-xhtml-entity", "a promotion in an internal DTD entity: no start tag in the "
               "bytes spells it", "&promo;", dtd=XML_ENTITY),
    xhtml_case("xml-application-xml-entity", "the same served as application/xml", "&promo;",
               dtd=XML_ENTITY, content_type=b"application/xml"),
    xhtml_case("xml-xhtml-self-closing", "<div data-promo/> is an empty element in XHTML: the "
               "content after it stays", '<div id="promo" data-promo=""/><p>kept</p>'
               '<script>report("after-promo")</script>', keeps=frozenset({"after-promo"})),
    Case("xml-xslt", "an XML document styled by XSLT that makes the promotion with "
         "<xsl:attribute name=\"data-promo\"/> (no start tag carries it)",
         typed(b"application/xml"),
         b'<?xml version="1.0"?>\n<?xml-stylesheet type="text/xsl" href="/case/xml-xslt-sheet"?>'
         b"\n<offers><offer>0% fees</offer></offers>", group="xml"),
    Case("xml-xslt-sheet", "the stylesheet of xml-xslt", typed(b"text/xsl"), XSLT_SHEET.encode(),
         shows_promo=False, group="xml"),  # (text/xsl is XML to Chromium: rendered)
    # An icon as illustration programs export it: a DOCTYPE internal subset of text entities.
    Case("xml-svg-icon-entities", "an SVG icon with text entities in its DOCTYPE stays an image",
         typed(b"image/svg+xml"), ILLUSTRATOR_ICON,
         shows_promo=False, page=False, untouched=True, group="xml"),
]


# -- html5lib-tests tree-construction inputs, each followed by a promotion --------------------

def html5lib_inputs(path: Path = HTML5LIB) -> list[tuple[str, str]]:
    """``(source, input)`` of each ``#data`` block of ``path`` (``#source FILE line N``)."""
    out: list[tuple[str, str]] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    source = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#source "):
            source = line.removeprefix("#source ").strip()
        elif line == "#data":
            data: list[str] = []
            index += 1
            while index < len(lines) and lines[index] != "#errors":
                data.append(lines[index])
                index += 1
            out.append((source, "\n".join(data)))
        index += 1
    return out


def html5lib_cases() -> list[Case]:
    """One case per copied input: the input, then a promotion (then the page script)."""
    cases = []
    for source, text in html5lib_inputs():
        name, _, line = source.partition(".dat line ")
        body = (text + PROMO + PAGE_SCRIPT).encode()
        cases.append(Case(f"h5-{name}-{line}", f"html5lib {source}: {text[:60]!r} then a "
                          "promotion", typed(HTML_UTF8), body, group="html5lib"))
    return cases


def all_cases() -> list[Case]:
    cases = [*MARKUP_CASES, *TYPE_CASES, *XML_CASES, *CHARSET_CASES, *CODING_CASES,
             *html5lib_cases()]
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


CASES = all_cases()


# -- the app ------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
SendFn = Callable[[MutableMapping[str, Any]], Any]


class RawCases:
    """An ASGI endpoint sending a case's header lines and body exactly as given (plus its
    ``Content-Length``, as a real app would), and the image ``x`` the mXSS cases point at as a
    404. It records the ``Accept-Encoding`` each case was asked with, by case id and
    ``X-Forwarded-For`` (the visitor)."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = {case.id: case for case in cases}
        self.accept_encoding: dict[tuple[str, bytes], list[bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        case_id = scope["path"].rsplit("/", 1)[-1]
        case = self.cases.get(case_id)
        headers = scope.get("headers") or ()
        asked = b", ".join(v for k, v in headers if k.lower() == b"accept-encoding")
        visitor = b", ".join(v for k, v in headers if k.lower() == b"x-forwarded-for")
        self.accept_encoding.setdefault((case_id, visitor), []).append(asked)
        if case is None:
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"content-length", b"9")]})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        answer = [*case.headers, (b"content-length", str(len(case.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": case.body})


ICON_HOST = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>icon</title></head>'
             '<body><img id="icon" src="/case/ct-svg-icon" width="16" height="16"></body></html>')


class IconHost:
    """``/host/icon``: a page showing the SVG icon case as an ``<img>``."""

    async def __call__(self, scope: Scope, receive: Receive, send: SendFn) -> None:
        body = ICON_HOST.encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def corpus_app(cases: Sequence[Case] = CASES) -> tuple[Starlette, RawCases]:
    """The Starlette app serving ``cases`` (and its raw endpoint, to read what it saw)."""
    raw = RawCases(cases)
    app = Starlette(routes=[Route("/case/{case_id}", raw), Route("/host/icon", IconHost())])
    return app, raw


def guarded_corpus(cases: Sequence[Case] = CASES) -> tuple[MicafenceMiddleware, RawCases]:
    """:func:`corpus_app` behind micafence with the default policy and the test Country DB."""
    app, raw = corpus_app(cases)
    return MicafenceMiddleware(app, policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB), raw

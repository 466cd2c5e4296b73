"""What a response is: Fetch's Content-Type extraction, the page kinds, the sniff, the hot path.

Every Content-Type trick of issue 19 that Chromium rendered as HTML must come out HTML (typed,
or untyped and then sniffed as HTML); the Fetch Standard's own examples must come out as Fetch
says; malformed headers never raise.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micafence.promotions.mime import (
    SNIFF_BYTES,
    Kind,
    MimeType,
    extract,
    kind_of,
    may_be_page,
    parse,
    sniff,
)

PAGE = b"<!doctype html><div data-promo>0% fees</div>"


def ct(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", value) for value in values]


def renders_as(headers: list[tuple[bytes, bytes]], body: bytes) -> Kind:
    """The kind the safety net gives a response: its type's, or the sniff's when untyped."""
    kind = kind_of(extract(headers))
    return sniff(body, complete=True) if kind is Kind.UNTYPED else kind


# Issue 19: every one of these showed a promotion in Chromium; each must be judged HTML.
ISSUE_HTML = [
    pytest.param(ct(b"text/plain, text/html"), id="text/plain, text/html"),
    pytest.param(ct(b"text/plain", b"text/html"), id="two lines, text/plain first"),
    pytest.param(ct(b"unknown/unknown"), id="unknown/unknown"),
    pytest.param(ct(b"application/unknown"), id="application/unknown"),
    pytest.param(ct(b"*/*"), id="*/*"),
    pytest.param(ct(b""), id="empty value"),
    pytest.param(ct(b"bogus"), id="bogus"),
    pytest.param(ct(b"text /html"), id="text /html"),
    pytest.param(ct(b"application/xhtml+xml"), id="application/xhtml+xml"),
    pytest.param([], id="no Content-Type"),
]


@pytest.mark.parametrize("headers", ISSUE_HTML)
def test_issue_cases_render_as_html(headers: list[tuple[bytes, bytes]]) -> None:
    assert renders_as(headers, PAGE) is Kind.HTML
    assert may_be_page(headers)


@pytest.mark.parametrize(
    "value", [b"application/xml", b"text/xml", b"image/svg+xml", b"application/rss+xml"]
)
def test_xml_types_are_xml(value: bytes) -> None:
    xhtml = b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><div data-promo/>'
    assert renders_as(ct(value), xhtml) is Kind.XML
    assert may_be_page(ct(value))


def test_untyped_body_after_vertical_tab_is_html() -> None:
    # Chromium skips \x0b before sniffing; the standard does not. The superset catches it.
    assert sniff(b"\x0b<div data-promo>0% fees</div>", complete=True) is Kind.HTML


@pytest.mark.parametrize(
    "value",
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/plain",
        b"text/css",
        b"text/javascript",
        b"image/png",
        b"application/octet-stream",
        b"text/event-stream",
        b"Application/JSON",
        b"  application/json  ",
        b"text/html, application/json",
    ],
)
def test_other_types_are_not_pages(value: bytes) -> None:
    assert kind_of(extract(ct(value))) is Kind.OTHER
    assert not may_be_page(ct(value))


# --- Fetch's extract a MIME type: the standard's examples --------------------------------


@pytest.mark.parametrize(
    ("lines", "essence", "params"),
    [
        # Combined lines, last valid one wins.
        ((b"text/plain;charset=gbk", b"text/html"), "text/html", ()),
        # Charset carried over when the essence repeats without one.
        ((b"text/html;charset=gbk", b"text/html"), "text/html", (("charset", "gbk"),)),
        # ... the charset only: the last value's other parameters are its own.
        ((b"text/html;charset=gbk;a=b", b"text/html;c=d"), "text/html",
         (("c", "d"), ("charset", "gbk"))),
        # ... but not across a different essence.
        ((b"text/html;charset=gbk", b"text/plain", b"text/html"), "text/html", ()),
        # A quoted comma does not split; the charset is carried into the last value.
        ((b'text/html;charset=gbk', b'text/html;x=",text/plain"'), "text/html",
         (("x", ",text/plain"), ("charset", "gbk"))),
        # */* is skipped.
        ((b"text/html;charset=gbk", b"*/*"), "text/html", (("charset", "gbk"),)),
        ((b"text/html, */*",), "text/html", ()),
        # A value that fails to parse is skipped.
        ((b"text/html", b"bogus"), "text/html", ()),
        ((b"text/html;charset=shift_jis", b"text/html;charset=euc-kr"), "text/html",
         (("charset", "euc-kr"),)),
    ],
)
def test_fetch_examples(
    lines: tuple[bytes, ...], essence: str, params: tuple[tuple[str, str], ...]
) -> None:
    found = extract(ct(*lines))
    assert found is not None
    assert (found.essence, found.params) == (essence, params)
    # One line with the values joined by commas is the same header.
    joined = extract(ct(b", ".join(lines)))
    assert joined is not None and (joined.essence, joined.params) == (essence, params)


def test_header_names_are_case_insensitive_and_other_headers_ignored() -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"content-length", b"3"),
        (b"CoNtEnT-TyPe", b"text/html"),
        (b"content-type-x", b"application/json"),
    ]
    assert extract(headers) == MimeType("text/html")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("text/html", MimeType("text/html")),
        ("TEXT/HTML;CHARSET=UTF-8", MimeType("text/html", (("charset", "UTF-8"),))),
        (" text/html ; charset = utf-8", MimeType("text/html")),  # "charset " is no token
        ('text/html;charset="utf-8"', MimeType("text/html", (("charset", "utf-8"),))),
        ('text/html;charset="ut\\f-8";x', MimeType("text/html", (("charset", "utf-8"),))),
        ('text/html;charset="utf-8', MimeType("text/html", (("charset", "utf-8"),))),
        ("text/html;charset=;charset=utf-8", MimeType("text/html", (("charset", "utf-8"),))),
        ("text/html;charset=gbk;charset=utf-8", MimeType("text/html", (("charset", "gbk"),))),
        ("text/html;charset=\x01;charset=utf-8", MimeType("text/html", (("charset", "utf-8"),))),
        ('text/html; foo="charset=utf-16"', MimeType("text/html", (("foo", "charset=utf-16"),))),
        ("text/html;;;charset=x", MimeType("text/html", (("charset", "x"),))),
        ("text/html;x;charset=x", MimeType("text/html", (("charset", "x"),))),
        ("text/html;charset=x y ", MimeType("text/html", (("charset", "x y"),))),
        ("x/x;\u00e9=1;a=\u00ff", MimeType("x/x", (("a", "\u00ff"),))),
        ("", None),
        ("text", None),
        ("text/", None),
        ("/html", None),
        ("text /html", None),
        ("text/ html", None),
        ("text/html(x)", None),
        ("te(t/html", None),
        ("\u00e9/html", None),
    ],
)
def test_parse(text: str, expected: MimeType | None) -> None:
    assert parse(text) == expected


# --- Chromium's reading, where it renders more (the superset) -------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        # Chromium ends the type at a space or '(': still text/html there, a failure in Fetch.
        (b"text/html foo", Kind.HTML),
        (b"text/html(comment)", Kind.HTML),
        (b"text/plain, text/html foo", Kind.HTML),
        # Chromium reads "text" (no slash: unknown, sniffed) where Fetch keeps text/plain.
        (b"text/plain, text /html", Kind.UNTYPED),
        (b"text/plain, ;a=/", Kind.UNTYPED),
        # Agreement stays as it is.
        (b"text/html, text /plain", Kind.HTML),
        (b"application/json; x=(", Kind.OTHER),
    ],
)
def test_chromium_superset(value: bytes, kind: Kind) -> None:
    assert kind_of(extract(ct(value))) is kind
    assert may_be_page(ct(value)) is (kind is not Kind.OTHER)


def test_charset_chromium_reads_differently_is_kept_aside() -> None:
    # Fetch skips the first charset (a control character); Chromium takes it.
    found = extract(ct(b"text/html; charset=utf-16\x0c; charset=utf-8"))
    assert found is not None and found.param("charset") == "utf-8"
    assert found.other_charsets == ("utf-16\x0c",)


# --- kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("essence", "kind"),
    [
        ("text/html", Kind.HTML),
        ("application/xhtml+xml", Kind.HTML),
        ("multipart/x-mixed-replace", Kind.HTML),
        ("text/xml", Kind.XML),
        ("application/xml", Kind.XML),
        ("image/svg+xml", Kind.XML),
        ("application/atom+xml", Kind.XML),
        ("text/xsl", Kind.XML),
        ("unknown/unknown", Kind.UNTYPED),
        ("application/unknown", Kind.UNTYPED),
        ("*/*", Kind.UNTYPED),
        ("application/json", Kind.OTHER),
        ("text/plain", Kind.OTHER),
        ("image/png", Kind.OTHER),
        ("application/xml-dtd", Kind.OTHER),
    ],
)
def test_kind_of(essence: str, kind: Kind) -> None:
    assert kind_of(MimeType(essence)) is kind


def test_kind_of_nothing_is_untyped() -> None:
    assert kind_of(None) is Kind.UNTYPED


# --- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"<!DOCTYPE html><p>x", Kind.HTML),
        (b"<!doctype HTML>", Kind.HTML),
        (b"  \t\r\n\x0c<html>", Kind.HTML),
        (b"<HEAD>", Kind.HTML),
        (b"<script>", Kind.HTML),
        (b"<iframe ", Kind.HTML),
        (b"<h1>", Kind.HTML),
        (b"<div data-promo>", Kind.HTML),
        (b"<font>", Kind.HTML),
        (b"<table>", Kind.HTML),
        (b"<a href=x>", Kind.HTML),
        (b"<style>", Kind.HTML),
        (b"<title>", Kind.HTML),
        (b"<b>", Kind.HTML),
        (b"<body>", Kind.HTML),
        (b"<br>", Kind.HTML),
        (b"<p>", Kind.HTML),
        (b"<!-- x -->", Kind.HTML),
        # Chromium matches a prefix with no terminating byte: <bogus is <b.
        (b"<bogus>", Kind.HTML),
        (b"<pre>", Kind.HTML),
        (b"\x0b<div>", Kind.HTML),
        (b"<?xml version='1.0'?><root/>", Kind.XML),
        (b"\n<?XML", Kind.XML),
        (b"<span>", Kind.OTHER),
        (b"<svg>", Kind.OTHER),
        (b"x<html>", Kind.OTHER),
        (b"\xef\xbb\xbf<html>", Kind.OTHER),
        (b'{"html": "<div>"}', Kind.OTHER),
        (b"", Kind.OTHER),
        (b"   ", Kind.OTHER),
        (b"%PDF-1.4", Kind.OTHER),
        (b"\x89PNG\r\n\x1a\n", Kind.OTHER),
    ],
)
def test_sniff_complete_body(body: bytes, kind: Kind) -> None:
    assert sniff(body, complete=True) is kind


def test_sniff_incomplete_prefix_that_may_become_html_is_html() -> None:
    assert sniff(b"<ht", complete=False) is Kind.HTML
    assert sniff(b"   ", complete=False) is Kind.HTML
    assert sniff(b"<", complete=False) is Kind.HTML
    assert sniff(b"<ht", complete=True) is Kind.OTHER
    assert sniff(b"<span", complete=False) is Kind.OTHER


def test_sniff_looks_no_further_than_the_resource_header() -> None:
    late = b" " * SNIFF_BYTES + b"<html>"
    assert sniff(late, complete=True) is Kind.OTHER
    assert sniff(late, complete=False) is Kind.OTHER
    assert sniff(b" " * (SNIFF_BYTES - 7) + b"<html>", complete=True) is Kind.HTML


# --- malformed headers never raise ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        ct(bytes(range(256))),
        ct(b"\xff\xfe/\x00\x01"),
        ct(b"text/html;" + b"a=b;" * 50_000),
        ct(b'"' * 10_000),
        ct(b"\\" * 10_000),
        ct(b"," * 10_000),
        ct(b'text/html;charset="' + b"\\" * 9_999),
        ct(b"text/html\r\n\x00"),
        [(b"content-type", b"text/html")] * 1000,
    ],
)
def test_malformed_headers_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    kind_of(extract(headers))
    assert may_be_page(headers) is (kind_of(extract(headers)) is not Kind.OTHER)


def test_may_be_page_survives_headers_that_are_not_bytes() -> None:
    assert may_be_page([("content-type", "application/json")])  # type: ignore[list-item]
    assert may_be_page(None)  # type: ignore[arg-type]


def test_may_be_page_reads_an_iterator_once() -> None:
    assert may_be_page(iter(ct(b"text/plain", b"text/html")))
    assert not may_be_page(iter(ct(b"application/json")))


_HEADER_BYTES = st.binary(max_size=60) | st.sampled_from(
    [b"text/html", b"text/plain", b"application/json", b"*/*", b"", b"text /html",
     b"image/svg+xml", b'text/html;charset="x,y"', b"unknown/unknown", b"a/b+xml"]
)
_NAMES = st.sampled_from([b"content-type", b"Content-Type", b"CONTENT-TYPE", b"x-other"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _HEADER_BYTES), max_size=4))
def test_fuzz_extract_and_may_be_page(headers: list[tuple[bytes, bytes]]) -> None:
    kind = kind_of(extract(headers))
    if kind is not Kind.OTHER:
        assert may_be_page(headers)
    # Joining the same lines into one is the same header (Fetch combines them).
    values = [v for n, v in headers if n.lower() == b"content-type"]
    if values:
        assert kind_of(extract(ct(b", ".join(values)))) is kind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
def test_fuzz_sniff(body: bytes, complete: bool) -> None:
    assert sniff(body, complete) in (Kind.HTML, Kind.XML, Kind.OTHER)


# The hot path remembers its answer per Content-Type value: the second answer, and answers
# after the memo has started over, are the first one's, and the full extraction's.
REMEMBERED = [b"text/plain; charset=utf-8", b"text/plain, text/html", b"text/html",
              b'text/plain; x="("', b"application/json", b"TEXT/PLAIN", b"text /html",
              b"application/json; charset=utf-8, text/html", b"image/svg+xml", b""]


def test_answers_per_content_type_value_are_remembered_faithfully() -> None:
    expected = {value: kind_of(extract(ct(value))) is not Kind.OTHER for value in REMEMBERED}
    assert expected[b"text/plain; charset=utf-8"] is False  # both kinds are in the list
    assert expected[b"text/plain, text/html"] is True
    for _ in range(2):
        assert {value: may_be_page(ct(value)) for value in REMEMBERED} == expected
    for number in range(600):  # more values than the memo keeps: it starts over
        assert may_be_page(ct(b"application/x-bench-%d" % number)) is False
    assert {value: may_be_page(ct(value)) for value in REMEMBERED} == expected
    long = b"text/plain; " + b"a" * 400  # longer than the memo keeps: answered all the same
    assert may_be_page(ct(long)) is may_be_page(ct(long)) is False

"""The browser's encoding of a page, and whether its markup bytes read as ASCII.

The meta prescan is checked against the html5lib-tests encoding data (MIT, copied with its
LICENSE into tests/data/html5lib-encoding/). Skipped from those files: nothing; the seven
tests1.dat cases whose ``<meta>`` comes after the first 1024 bytes (after a 2048-8192 character
comment, and the multi-script test) need the full parser's "change the encoding" rather than
the prescan, and are checked against the extended prescan, which is what makes them a problem
when they name a problem encoding. scripted/tests1.dat (document.write) is not copied.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from micafence.promotions.charsets import (
    LABELS,
    HeadWatch,
    encoding,
    encoding_name,
    encoding_problem,
    get_encoding,
    meta_problem,
    prescan,
)
from micafence.promotions.mime import Kind, MimeType, extract

DATA = Path(__file__).parent / "data" / "html5lib-encoding"
ASCII_PAGE = b"<!doctype html><html><head><title>T</title></head><div data-promo>x</div>"
HTML = MimeType("text/html")


def html(charset: str | None = None) -> MimeType:
    return MimeType("text/html", (("charset", charset),) if charset is not None else ())


def header(value: bytes) -> MimeType | None:
    return extract([(b"content-type", value)])


# --- html5lib-tests: the meta prescan -------------------------------------------------------


# The cases whose declaration comes after the first 1024 bytes (see the module docstring).
LATE = frozenset(f"tests1-{index}" for index in range(47, 54))


def _cases() -> list[object]:
    cases: list[object] = []
    for path in sorted(DATA.glob("*.dat")):
        blocks = path.read_bytes().split(b"#data\n")[1:]
        for index, block in enumerate(blocks):
            data, _, rest = block.partition(b"\n#encoding\n")
            expected = rest.split(b"\n")[0].decode()
            case_id = f"{path.stem}-{index}"
            cases.append(pytest.param(data, expected, case_id in LATE, id=case_id))
    return cases


CASES = _cases()


def test_the_html5lib_data_is_there() -> None:
    assert len(CASES) == 82
    assert (DATA / "LICENSE").is_file()


@pytest.mark.parametrize(("data", "expected", "late"), CASES)
def test_html5lib_encoding(data: bytes, expected: str, late: bool) -> None:
    want = get_encoding(expected)
    assert want is not None
    if not late:
        assert encoding_name(HTML, data, Kind.HTML) == want
    else:
        # The <meta> is past the first 1024 bytes: the browser's parser finds it, the prescan
        # of 1024 bytes does not; the extended prescan does.
        assert b"<meta" not in data[:1024].lower()
        assert encoding_name(HTML, data, Kind.HTML) == "windows-1252"
        assert prescan(data) == want


@pytest.mark.parametrize("at", [1000, 1014, 1020, 1023, 1024, 3000])
def test_a_meta_cut_off_by_the_1024_byte_prescan_counts(at: int) -> None:
    page = b"<p>" + b"x" * (at - 3) + b'<meta charset="iso-2022-jp"><div data-promo>'
    assert page.index(b"<meta") == at
    assert encoding_name(HTML, page, Kind.HTML) == "windows-1252"
    assert encoding_problem(HTML, page, Kind.HTML) is not None
    # Declared in the header, the page's own declarations are not read at all.
    assert encoding_problem(html("utf-8"), page, Kind.HTML) is None


def test_a_late_meta_naming_a_problem_encoding_is_a_problem() -> None:
    late = b"<!--" + b"x" * 2000 + b'--><meta charset="iso-2022-jp"><div data-promo>'
    assert encoding_name(HTML, late, Kind.HTML) == "windows-1252"
    problem = encoding_problem(HTML, late, Kind.HTML)
    assert problem is not None and "ISO-2022-JP" in problem


# --- the order a browser follows ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "prefix", "kind", "name", "ok"),
    [
        # Byte order marks come first.
        (html("utf-16"), b"\xef\xbb\xbf" + ASCII_PAGE, Kind.HTML, "UTF-8", True),
        (html("utf-8"), b"\xff\xfe<\x00h\x00", Kind.HTML, "UTF-16LE", False),
        (html("utf-8"), b"\xfe\xff\x00<\x00h", Kind.HTML, "UTF-16BE", False),
        # The Content-Type charset, from the parsed type.
        (header(b'text/html; foo="charset=utf-16"'), ASCII_PAGE, Kind.HTML, "windows-1252", True),
        (header(b"text/html; xcharset=utf-16; charset=utf-8"), ASCII_PAGE, Kind.HTML, "UTF-8",
         True),
        (header(b"text/html; charset=utf-16"), ASCII_PAGE, Kind.HTML, "UTF-16LE", False),
        (header(b"text/html; charset=UTF-16BE"), ASCII_PAGE, Kind.HTML, "UTF-16BE", False),
        (header(b'text/html; charset="unicode"'), ASCII_PAGE, Kind.HTML, "UTF-16LE", False),
        (header(b"text/html; charset=ISO-2022-JP"), ASCII_PAGE, Kind.HTML, "ISO-2022-JP", False),
        (header(b"text/html; charset=csiso2022jp"), ASCII_PAGE, Kind.HTML, "ISO-2022-JP", False),
        (header(b"text/html; charset= utf-8 "), ASCII_PAGE, Kind.HTML, "UTF-8", True),
        # The header wins over the page's own declaration.
        (html("utf-8"), b'<meta charset="iso-2022-jp">', Kind.HTML, "UTF-8", True),
        # A label browsers do not know is ignored: the page's meta decides.
        (html("utf-7"), b'<meta charset="iso-2022-jp">', Kind.HTML, "ISO-2022-JP", False),
        (html("bogus"), ASCII_PAGE, Kind.HTML, "windows-1252", True),
        # The replacement encoding renders one U+FFFD: nothing to remove.
        (html("iso-2022-kr"), ASCII_PAGE, Kind.HTML, "replacement", True),
        (html("hz-gb-2312"), ASCII_PAGE, Kind.HTML, "replacement", True),
        # Multi-byte CJK encodings keep every markup delimiter.
        (html("shift_jis"), ASCII_PAGE, Kind.HTML, "Shift_JIS", True),
        (html("euc-jp"), ASCII_PAGE, Kind.HTML, "EUC-JP", True),
        (html("gb2312"), ASCII_PAGE, Kind.HTML, "GBK", True),
        (html("gb18030"), ASCII_PAGE, Kind.HTML, "gb18030", True),
        (html("big5"), ASCII_PAGE, Kind.HTML, "Big5", True),
        (html("ks_c_5601-1987"), ASCII_PAGE, Kind.HTML, "EUC-KR", True),
        (html("koi8-r"), ASCII_PAGE, Kind.HTML, "KOI8-R", True),
        (html("latin1"), ASCII_PAGE, Kind.HTML, "windows-1252", True),
        (html("x-user-defined"), ASCII_PAGE, Kind.HTML, "x-user-defined", True),
        # The meta prescan.
        (HTML, b'<meta charset="utf-16">', Kind.HTML, "UTF-8", True),
        (HTML, b"<meta charset=x-user-defined>", Kind.HTML, "windows-1252", True),
        (HTML, b'<meta http-equiv="Content-Type" content="text/html; charset=iso-2022-jp">',
         Kind.HTML, "ISO-2022-JP", False),
        (HTML, b'<meta content="text/html; charset=iso-2022-jp">', Kind.HTML, "windows-1252",
         True),
        (HTML, b"<!-- <meta charset=iso-2022-jp> --><p>", Kind.HTML, "windows-1252", True),
        (HTML, b"<!--><meta charset=euc-jp>", Kind.HTML, "EUC-JP", True),
        (HTML, b'<p title="<meta charset=iso-2022-jp>">', Kind.HTML, "windows-1252", True),
        (HTML, b"<meta charset=bogus><meta charset=iso-2022-jp>", Kind.HTML, "ISO-2022-JP",
         False),
        (HTML, b"<meta charset=gbk charset=iso-2022-jp>", Kind.HTML, "GBK", True),
        # Blink (and the standard's prescan) read an XML declaration in HTML too.
        (HTML, b'<?xml version="1.0" encoding="iso-2022-jp"?><html>', Kind.HTML, "ISO-2022-JP",
         False),
        (HTML, b'<?xml version="1.0" encoding="utf-16"?><html>', Kind.HTML, "UTF-8", True),
        (HTML, b"<\x00?\x00x\x00m\x00l\x00", Kind.HTML, "UTF-16LE", False),
        # XML: the declaration; UTF-16 spelled in ASCII bytes means UTF-8.
        (MimeType("image/svg+xml"), b'<?xml version="1.0" encoding="ISO-2022-JP"?><svg/>',
         Kind.XML, "ISO-2022-JP", False),
        (MimeType("application/xml"), b"<?xml version='1.0' encoding='utf-16'?><a/>", Kind.XML,
         "UTF-8", True),
        (MimeType("application/xml"), b"\x00<\x00?\x00x\x00m\x00l", Kind.XML, "UTF-16BE", False),
        (MimeType("text/xml"), b"<a/>", Kind.XML, "UTF-8", True),
        # XHTML is decoded as XML: its meta is not read.
        (MimeType("application/xhtml+xml"), b"<html><meta charset=iso-2022-jp/>", Kind.HTML,
         "UTF-8", True),
        # An untyped body sniffed as HTML follows the HTML rules.
        (None, b"<html><meta charset=iso-2022-jp>", Kind.HTML, "ISO-2022-JP", False),
    ],
)
def test_the_browsers_encoding(
    mime: MimeType | None, prefix: bytes, kind: Kind, name: str, ok: bool
) -> None:
    assert encoding_name(mime, prefix, kind) == name
    problem = encoding_problem(mime, prefix, kind)
    assert (problem is None) is ok, problem
    if problem is not None:
        assert "not ASCII-compatible" in problem
    assert encoding(mime, prefix, kind) == (name, problem)  # both from one pass


@pytest.mark.parametrize(
    ("prefix", "word"),
    [
        (b"<html><p>\x1b$B$3$s\x1b(B", "ISO-2022-JP"),
        (b"<\x00h\x00t\x00m\x00l\x00>\x00", "UTF-16"),
    ],
)
def test_undeclared_page_chromium_may_autodetect(prefix: bytes, word: str) -> None:
    problem = encoding_problem(HTML, prefix, Kind.HTML)
    assert problem is not None and word in problem
    # Declared, the detector does not run.
    assert encoding_problem(html("utf-8"), prefix, Kind.HTML) is None


def test_chromium_charset_is_checked_too() -> None:
    # Fetch skips "utf-16\x0c" (a control character); Chromium takes it, and the Encoding
    # Standard's "get an encoding" strips the \x0c: UTF-16.
    mime = header(b"text/html; charset=utf-16\x0c; charset=utf-8")
    assert encoding_name(mime, ASCII_PAGE, Kind.HTML) == "UTF-8"
    problem = encoding_problem(mime, ASCII_PAGE, Kind.HTML)
    assert problem is not None and "Chromium" in problem


def test_multipart_parts_are_not_read() -> None:
    problem = encoding_problem(MimeType("multipart/x-mixed-replace"), b"--b\r\n", Kind.HTML)
    assert problem is not None and "multipart" in problem


def test_label_table() -> None:
    assert len(set(LABELS.values())) == 40
    assert get_encoding(" \tUTF8\n") == "UTF-8"
    assert get_encoding("utf-7") is None
    assert get_encoding("utf-32") is None
    assert get_encoding("") is None


# --- the claim behind "fine": markup bytes survive decoding ----------------------------------

# WHATWG encodings judged fine, with the Python codec closest to each.
_FINE_CODECS = {
    "Shift_JIS": "cp932",
    "EUC-JP": "euc_jp",
    "GBK": "gbk",
    "gb18030": "gb18030",
    "Big5": "big5hkscs",
    "EUC-KR": "cp949",
    "windows-1252": "cp1252",
    "KOI8-R": "koi8_r",
    "UTF-8": "utf-8",
}
_MARKUP = b"<>/=\"' \t\n\x0c\r"


def _markup(text: str) -> list[str]:
    return [c for c in text if c in _MARKUP.decode()]


_SINGLE_BYTE = ("windows-1252", "KOI8-R", "UTF-8")
_ALPHABET = (
    "<>/=\"' \tadZ09@\\~"  # markup and ASCII, some of it trail bytes in Shift_JIS, Big5, GBK
    "\u00e9\u00fc\u0416\u65e5\u672c\u8a9e\uff7f\u30bd\u8868\ud55c\u4e2d\u20ac"
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_single_byte_and_utf8_keep_every_markup_byte(data: bytes) -> None:
    assume(not data.startswith((b"\xfe\xff", b"\xff\xfe")))  # a UTF-16 BOM wins: a problem
    for name in _SINGLE_BYTE:
        assert encoding_problem(html(name), data, Kind.HTML) is None
        decoded = codecs.decode(data, _FINE_CODECS[name], errors="replace")
        assert _markup(decoded) == [chr(b) for b in data if b in _MARKUP], name


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=40))
def test_cjk_encodings_keep_every_markup_byte(text: str) -> None:
    # Well-formed text only: on malformed bytes the WHATWG decoders put an ASCII byte after a
    # bad lead back into the stream, Python's decoders (euc_jp after 0x8F, gb18030 after
    # 0x81 0x30) drop it, so Python is no oracle there.
    for name, codec in _FINE_CODECS.items():
        if name in _SINGLE_BYTE:
            continue
        data = text.encode(codec, errors="ignore")
        assert encoding_problem(html(name), data, Kind.HTML) is None
        assert _markup(data.decode(codec)) == [chr(b) for b in data if b in _MARKUP], name


def test_shift_jis_trail_bytes_are_ascii_but_never_markup() -> None:
    data = "<p title='\u8868\u30bd'>".encode("cp932")  # both end in the trail byte 0x5C
    assert data.count(b"\\") == 2
    assert encoding_problem(html("shift_jis"), data, Kind.HTML) is None
    assert _markup(data.decode("cp932")) == _markup(data.decode("latin-1"))


def test_problem_encodings_do_lose_markup_bytes() -> None:
    jis = b'<div \x1b$B<div data-promo>\x1b(B>'
    assert encoding_problem(html("iso-2022-jp"), jis, Kind.HTML) is not None
    assert _markup(jis.decode("iso2022_jp", errors="replace")) != _markup(jis.decode("latin-1"))
    utf16 = "<div data-promo>".encode("utf-16-le")
    assert encoding_problem(html("utf-16le"), utf16, Kind.HTML) is not None
    assert "<" not in utf16.decode("utf-8", errors="replace").replace("\x00", "")[1:]


# --- never raises ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.none(), st.builds(html, st.text(max_size=20))),
    st.binary(max_size=3000) | st.builds(
        lambda a, b: a + b,
        st.sampled_from([b"<meta ", b"<meta charset=", b"<!--", b"<?xml encoding=", b"</a ",
                         b"<meta http-equiv=content-type content='charset=", b"\xef\xbb\xbf"]),
        st.binary(max_size=200),
    ),
    st.sampled_from(list(Kind)),
)
def test_fuzz_never_raises(mime: MimeType | None, prefix: bytes, kind: Kind) -> None:
    problem = encoding_problem(mime, prefix, kind)
    assert problem is None or isinstance(problem, str)
    assert encoding_name(mime, prefix, kind) in set(LABELS.values())
    assert encoding(mime, prefix, kind) == (encoding_name(mime, prefix, kind), problem)


# --- HeadWatch: when the rewriter may stop holding (issue 19) ----------------------------------

PAD = b"<link rel=preload href=/a.js>" * 40  # past the 1024 bytes Blink always reads
BODY = b"<body><p>" + b"x" * 500


@pytest.mark.parametrize(("mime", "prefix", "kind", "settled"), [
    pytest.param(html("utf-8"), b"<p>" + b"x" * 2000, Kind.HTML, True, id="header"),
    pytest.param(html("utf-8"), b"<p>" + b"x" * 1000, Kind.HTML, False, id="under-1024-bytes"),
    pytest.param(MimeType("text/html", (("charset", "utf-8"),), ("x-bogus",)),
                 b"<head>" + PAD, Kind.HTML, False, id="header-chromium-reads-otherwise"),
    pytest.param(html("bogus"), b"<p>" + b"x" * 2000, Kind.HTML, False, id="unknown-label"),
    pytest.param(HTML, b"\xef\xbb\xbf<p>" + b"x" * 2000, Kind.HTML, True, id="bom"),
    pytest.param(HTML, b"<head><meta charset=utf-8>" + PAD + BODY, Kind.HTML, True,
                 id="meta-and-body"),
    pytest.param(HTML, b"<head><meta charset=utf-8>" + PAD, Kind.HTML, False,
                 id="meta-head-not-over"),
    pytest.param(HTML, b"<head>" + PAD + BODY, Kind.HTML, False, id="undeclared"),
    pytest.param(HTML, b"<meta charset=utf-8><body>" + b"x" * 1000 + b"<meta charset='x",
                 Kind.HTML, True, id="meta-after-1024-unread"),
    pytest.param(HTML, b"<meta charset=utf-8><body>" + b"x" * 980 + b"<meta charset=utf-8>"
                 + b"y" * 500, Kind.HTML, True, id="meta-crossing-1024-complete"),
    pytest.param(HTML, b"<meta charset=utf-8><body>" + b"x" * 980 + b"<meta charset='utf-8"
                 + b"y" * 500, Kind.HTML, False, id="meta-crossing-1024-cut"),
    pytest.param(HTML, b"<body>" + b"x" * 1000 + b"<meta charset=utf-8>" + b"y" * 500,
                 Kind.HTML, False, id="only-a-meta-crossing-1024-is-undeclared-to-the-prescan"),
    pytest.param(MimeType("application/xhtml+xml"), b'<?xml version="1.0" encoding="utf-8"?>'
                 + PAD, Kind.HTML, True, id="xhtml-declared"),
    pytest.param(MimeType("text/xml"), b"<a>" + PAD, Kind.XML, False, id="xml-undeclared"),
])
def test_the_prefix_settles_the_charset(
    mime: MimeType, prefix: bytes, kind: Kind, settled: bool
) -> None:
    assert HeadWatch().settled(mime, prefix, kind) is settled


PAGES = [
    b"<!doctype html><html><head><meta charset=utf-8><title>a<b</title><!-- c --!>"
    + PAD + b"<script>var s='<body>';</script><style>p{}</style>" + BODY,
    b"<html><head><meta http-equiv=content-type content='text/html; charset=utf-8'>"
    + PAD + b"<noscript><link rel=x></noscript></head>" + BODY,
    b"<meta charset=utf-8>" + PAD + b"<title>x" + b"y" * 3000 + b"</title><div>",
]


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("step", [1, 7, 300])
def test_a_growing_prefix_is_judged_as_a_fresh_one(page: bytes, step: int) -> None:
    """The walk resumes where it stopped: fed a growing prefix, the watch answers as a new
    watch does for each prefix, and says yes at last."""
    watch = HeadWatch()
    answers = []
    for size in range(1024, len(page) + step, step):
        prefix = page[:size]
        answer = watch.settled(HTML, prefix, Kind.HTML)
        assert answer == HeadWatch().settled(HTML, prefix, Kind.HTML), size
        answers.append(answer)
    assert answers[-1] and answers == sorted(answers)  # no, no, ..., yes, yes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000) | st.builds(
    lambda a, b: a + b,
    st.sampled_from([b"<meta charset=utf-8><noscript>", b"<!--", b"<title>", b"<script><!--",
                     b"</", b"<body", b"<a b='", b"<head><style>"]),
    st.binary(max_size=2000)))
def test_head_watch_fuzz_never_raises(prefix: bytes) -> None:
    watch = HeadWatch()
    for size in (1024, 1500, len(prefix)):
        assert watch.settled(HTML, prefix[:size], Kind.HTML) in (True, False)


@pytest.mark.parametrize(("attributes", "problem"), [
    ({"charset": "iso-2022-jp"}, True),
    ({"charset": " ISO-2022-JP "}, True),
    ({"charset": "utf-16"}, False),  # UTF-16 in a <meta> means UTF-8
    ({"charset": "shift_jis"}, False),
    ({"charset": "bogus", "http-equiv": "content-type", "content": "charset=iso-2022-jp"}, False),
    ({"http-equiv": "Content-Type", "content": "text/html; charset=csiso2022jp"}, True),
    ({"content": "text/html; charset=iso-2022-jp"}, False),  # no pragma
    ({"name": "viewport"}, False),
])
def test_meta_problem_reads_a_meta_as_the_prescan_does(
        attributes: dict[str, str], problem: bool) -> None:
    assert (meta_problem(attributes) is not None) == problem

"""The HTML safety net as a visitor sees it: what arrives from an app that still sends promotions.

Each test puts a raw ASGI app (it sends exactly the headers and body chunks given) behind
micafence and asks for the page as a Swedish (EU), a US-on-GB-block (UK zone) or a Swiss
visitor.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import brotli
import httpx
import pytest
import zstandard

from micafence import MicafenceMiddleware, load_policy_text
from micafence.policy.probe import build_scope
from micafence.promotions.rewriter import ABORTS, RewriteAborted
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

SE = "89.160.20.112"  # eu
UK = "216.160.83.56"  # US on a GB-registered block: the uk zone (approved_only)
CH = "2a02:d000::1"  # no zone: promotions allowed
HTML = b"text/html; charset=utf-8"

PAGE = (
    b'<!doctype html><html><head><meta charset="utf-8"><title>T</title></head><body>'
    b'<h1>Markets</h1><div id="banner" data-promo>0% fees</div><p id="prices">BTC 61250</p>'
    b"</body></html>"
)


class RawApp:
    """Sends ``chunks`` with ``headers``; remembers the request headers and extensions."""

    def __init__(
        self, chunks: Sequence[bytes], headers: Sequence[tuple[bytes, bytes]] = (),
        status: int = 200, content_type: bytes | None = HTML,
    ) -> None:
        self.chunks = list(chunks)
        self.headers = list(headers)
        if content_type is not None:
            self.headers.insert(0, (b"content-type", content_type))
        self.status = status
        self.seen_headers: dict[bytes, bytes] = {}
        self.seen_extensions: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # for a real server
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen_headers = dict(scope["headers"])
        self.seen_extensions = dict(scope.get("extensions") or {})
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        if not self.chunks:
            await send({"type": "http.response.body", "body": b""})
        for index, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": index < len(self.chunks) - 1})


async def call_in_process(app: Any, send: Any, method: str = "GET") -> None:
    """``app`` behind micafence, called once by a Swedish visitor with no request body;
    ``send`` takes every message micafence sends."""

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    await guarded(app)(build_scope(SE, method, "/", [("host", "exchange.test")]), receive, send)


def guarded(app: Any, policy_text: str | None = None) -> MicafenceMiddleware:
    policy = load_policy_text(policy_text, "test.yaml") if policy_text else DEFAULT_POLICY
    return MicafenceMiddleware(app, policy=policy, geoip_db=COUNTRY_DB)


async def fetch(app: Any, peer: str = SE, method: str = "GET", path: str = "/",
                headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as client:
        return await client.request(method, path, headers=headers)


def ids(response: httpx.Response) -> set[str]:
    text = response.text
    return {name for name in ("banner", "prices", "uk-ok", "uk-incentive", "plain", "inner",
                              "outer", "approved-inner", "t-promo", "t-keep")
            if f'id="{name}"' in text or f"id={name}" in text}


# -- what is removed ------------------------------------------------------------------------

async def test_eu_visitor_gets_the_page_without_its_promotion() -> None:
    response = await fetch(guarded(RawApp([PAGE])))
    assert response.status_code == 200
    assert ids(response) == {"prices"}
    assert response.headers["content-length"] == str(len(response.content))
    assert "0% fees" not in response.text


async def test_swiss_visitor_gets_the_page_byte_for_byte() -> None:
    app = RawApp([PAGE], headers=[(b"etag", b'"v1"')])
    response = await fetch(guarded(app), CH)
    assert response.content == PAGE
    assert response.headers["etag"] == '"v1"'
    assert response.headers["cache-control"] == "private"  # HTML depends on the zone


UK_PAGE = (
    b"<html><body>"
    b'<div id="plain" data-promo>unapproved</div>'
    b'<div id="uk-ok" data-promo data-promo-approved="uk">GBP deposits</div>'
    b'<div id="uk-incentive" data-promo data-promo-approved="uk" data-promo-kind="incentive">'
    b"refer a friend</div>"
    b'<div id="outer" data-promo data-promo-approved="uk">outer'
    b'<span id="inner" data-promo>unapproved inside approved</span></div>'
    b'<p id="prices">BTC</p></body></html>'
)


@pytest.mark.parametrize(("peer", "visible"), [
    pytest.param(SE, {"prices"}, id="eu-nothing"),
    pytest.param(UK, {"uk-ok", "outer", "prices"}, id="uk-approved-only-no-incentive"),
    pytest.param(CH, {"plain", "uk-ok", "uk-incentive", "outer", "inner", "prices"},
                 id="elsewhere-everything"),
])
async def test_uk_sees_only_approved_non_incentive_promotions(peer: str, visible: set[str]) -> None:
    response = await fetch(guarded(RawApp([UK_PAGE])), peer)
    assert ids(response) == visible


async def test_nested_promotions_go_with_their_parent_and_alone() -> None:
    page = (b'<div id="outer" data-promo>a<div id="inner" data-promo>b</div></div>'
            b'<section><div id="approved-inner" class="x" data-promo>c</div></section>'
            b'<p id="prices">keep</p>')
    response = await fetch(guarded(RawApp([page])))
    assert ids(response) == {"prices"}
    assert "<section></section>" in response.text


@pytest.mark.parametrize("page", [
    pytest.param(b'<div id="banner" data-promo><p>unclosed <b>tags<div>still inside',
                 id="unclosed"),
    pytest.param(b'<table><tr><td id="prices">1</td></tr><div id="banner" data-promo>fostered'
                 b"</div></table>", id="foster-parented"),
    pytest.param(b'<p id="prices">x<div id=banner data-promo=yes>bare attributes</p></div>',
                 id="misnested"),
    pytest.param(b'<p id="prices">\x00nul</p><div id="banner" data-promo>\x00</div>',
                 id="nul-bytes"),
])
async def test_malformed_html_loses_its_promotion_as_a_browser_would_build_it(page: bytes) -> None:
    response = await fetch(guarded(RawApp([page])))
    assert response.status_code == 200
    assert "banner" not in response.text
    assert ("fostered" not in response.text) and ("bare attributes" not in response.text)


async def test_template_contents_are_cleaned_too() -> None:
    page = (b'<template id="tpl"><div id="t-promo" data-promo>cloned later</div>'
            b'<i id="t-keep">row</i></template><p id="prices">x</p>')
    response = await fetch(guarded(RawApp([page])))
    assert ids(response) == {"prices", "t-keep"}


async def test_a_fragment_stays_a_fragment() -> None:
    fragment = b'<script>var x = 1;</script><div id="banner" data-promo>p</div><p id="prices">1</p>'
    response = await fetch(guarded(RawApp([fragment])))
    assert response.text == '<script>var x = 1;</script><p id="prices">1</p>'


async def test_policy_selectors_and_incentive_marks_are_used() -> None:
    policy = DEFAULT_POLICY.read_text().replace(
        'selectors: ["[data-promo]"]', 'selectors: ["[data-promo]", ".ad-slot", "#hero-offer"]')
    page = (b'<div class="ad-slot big" id="banner">a</div><div id="plain">b</div>'
            b'<b id="outer" data-promo-kind="incentive">bonus</b><p id="prices">1</p>')
    response = await fetch(guarded(RawApp([page]), policy))
    assert ids(response) == {"plain", "prices"}


# -- bytes: charsets and content codings -------------------------------------------------------

@pytest.mark.parametrize(("content_type", "meta", "codec", "text"), [
    pytest.param(b"text/html; charset=iso-8859-1", b"", "iso-8859-1", "Café «prix»",
                 id="header-latin1"),
    pytest.param(b"text/html", b'<meta charset="windows-1252">', "cp1252", "Café «prix» 1€",
                 id="meta-cp1252"),
    pytest.param(b"text/html", b'<meta http-equiv="Content-Type" '
                 b'content="text/html; charset=shift_jis">', "shift_jis", "価格の一覧",
                 id="meta-shift-jis"),
    pytest.param(b"text/html", b"", "latin-1", "Café «prix»", id="undeclared-not-utf8"),
])
async def test_page_is_written_back_in_its_own_charset(
    content_type: bytes, meta: bytes, codec: str, text: str
) -> None:
    body = (b"<html><head>" + meta + b"</head><body><p id=prices>" + text.encode(codec)
            + b'</p><div data-promo id="banner">bonus</div></body></html>')
    response = await fetch(guarded(RawApp([body], content_type=content_type)))
    assert b"banner" not in response.content
    assert text.encode(codec) in response.content  # same bytes, same charset
    assert response.headers["content-type"] == content_type.decode()


async def test_utf8_bom_is_kept() -> None:
    body = b"\xef\xbb\xbf<p id=prices>\xc3\xa9</p><div data-promo>x</div>"
    response = await fetch(guarded(RawApp([body], content_type=b"text/html")))
    assert response.content == b"\xef\xbb\xbf<p id=prices>\xc3\xa9</p>"  # byte for byte


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress),
    ("br", brotli.compress),
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
    ("deflate", _deflate),
])
async def test_compressed_pages_are_rewritten_in_their_own_coding(
    coding: str, encode: Callable[[bytes], bytes]
) -> None:
    compressed = encode(PAGE)
    app = RawApp([compressed[:10], compressed[10:]],
                 headers=[(b"content-encoding", coding.encode()),
                          (b"content-length", str(len(compressed)).encode()),
                          (b"vary", b"Accept-Encoding")])
    response = await fetch(guarded(app))
    assert response.headers["content-encoding"] == coding  # httpx decoded it for us
    assert ids(response) == {"prices"}
    assert response.content == PAGE.replace(b'<div id="banner" data-promo>0% fees</div>', b"")
    assert int(response.headers["content-length"]) == response.num_bytes_downloaded
    assert response.headers["vary"].startswith("Accept-Encoding, X-Forwarded-For")


async def exchange(app: Any, peer: str = SE,
                   headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[Any, bytes]:
    """One request straight through the ASGI interface: the response start and the raw body
    (httpx would decode a gzip body, and only its first member)."""
    start: list[Any] = []
    body: list[bytes] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            start.append(message)
        else:
            body.append(message.get("body", b""))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"exchange.test"), *headers],
             "client": (peer, 40000), "server": ("exchange.test", 80)}
    await guarded(app)(scope, receive, send)
    return start[0], b"".join(body)


def gzip_members(body: bytes) -> list[bytes]:
    """Each member of a gzip body, decoded on its own (the first is all Chromium shows)."""
    found = []
    for _ in range(100):
        if not body:
            return found
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        found.append(inflater.decompress(body))
        assert inflater.eof, "a member cut short"
        body = inflater.unused_data
    raise AssertionError("more than 100 members")


PADDING = b"<p>" + b"market rows " * 10000 + b"</p>"  # past what the net holds: it streams


@pytest.mark.parametrize("padding", [b"", PADDING], ids=["whole", "streamed"])
@pytest.mark.parametrize("split", [None, 1000], ids=["one-message", "1000-byte-messages"])
async def test_gzip_members_are_kept_so_each_browser_sees_what_it_would(
        padding: bytes, split: int | None) -> None:
    """Chromium decodes a gzip body's first member only, Firefox every member. The rewritten
    body keeps the app's member boundaries: the first member holds the rewrite of the app's
    first member (nothing of the later ones, whose script Chromium never ran), and all of them
    decoded (Python's gzip, as Firefox) are the rewrite of the whole page."""
    members = [b"<!doctype html><html><body><p id=prices>first member</p>" + padding
               + b"<div data-promo>0% ",
               b"fees</div><p>second member</p><div id=banner data-promo>x</div>",
               b"<p>third member</p><script>report('third')</script></body></html>"]
    body = b"".join(gzip.compress(member) for member in members)
    messages = [body] if split is None else chunked(body, split)
    start, out = await exchange(RawApp(messages, headers=[(b"content-encoding", b"gzip")]))
    assert start["status"] == 200
    whole = b"".join(members)
    kept = (whole.replace(b"<div data-promo>0% fees</div>", b"")
            .replace(b"<div id=banner data-promo>x</div>", b""))
    assert gzip.decompress(out) == kept  # Firefox: every member, no promotion
    ours = gzip_members(out)
    assert ours[0] == members[0].removesuffix(b"<div data-promo>0% ")  # Chromium: the first
    assert len(ours) == 3 and b"".join(ours) == kept


async def test_restricted_request_reaches_the_app_without_ranges_or_validators() -> None:
    app = RawApp([PAGE])
    await fetch(guarded(app), headers={
        "Accept-Encoding": "gzip, br", "Range": "bytes=0-10", "If-Range": '"v1"',
        "If-None-Match": '"v1"', "If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT",
    })
    for name in (b"range", b"if-range", b"if-none-match", b"if-modified-since"):
        assert name not in app.seen_headers
    # The net re-encodes in the app's own coding: the app may compress for this client.
    assert app.seen_headers[b"accept-encoding"] == b"gzip, br"
    swiss = RawApp([PAGE])
    await fetch(guarded(swiss), CH, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-10"})
    assert swiss.seen_headers[b"range"] == b"bytes=0-10"  # unrestricted: untouched


@pytest.mark.parametrize(("asked", "seen"), [
    pytest.param("gzip, deflate, br, zstd, dcb, dcz", b"gzip, deflate, br, zstd", id="chromium"),
    pytest.param("br;q=1.0, GZIP;q=0.5, compress, *;q=0.1", b"br;q=1.0, GZIP;q=0.5", id="q"),
    pytest.param("gzip, *;q=0", b"gzip, *;q=0", id="refusing-the-rest"),
    pytest.param("dcb, sdch", None, id="nothing-left"),
])
async def test_accept_encoding_keeps_only_the_codings_the_net_reads(
        asked: str, seen: bytes | None) -> None:
    app = RawApp([PAGE])
    await fetch(guarded(app), headers={"Accept-Encoding": asked})
    assert app.seen_headers.get(b"accept-encoding") == seen


@pytest.mark.parametrize("asked", ["gzip, br", "identity", None])
async def test_the_app_compresses_for_the_client_it_serves(asked: str | None) -> None:
    """An app that compresses as the request asks (Starlette's GZip): a restricted visitor
    gets the page in the coding it accepted, or none, never one it did not ask for."""
    from starlette.middleware.gzip import GZipMiddleware

    page = PAGE + b"<!-- padding -->" * 100
    app = GZipMiddleware(RawApp([page]), minimum_size=100)
    start, body = await exchange(app, headers=[(b"accept-encoding", asked.encode())]
                                 if asked else [])
    headers = {name.lower(): value for name, value in start["headers"]}
    kept = page.replace(b'<div id="banner" data-promo>0% fees</div>', b"")
    if asked == "gzip, br":
        assert headers[b"content-encoding"] == b"gzip"
        assert gzip.decompress(body) == kept
    else:
        assert b"content-encoding" not in headers
        assert body == kept


async def test_file_sending_extension_is_hidden_from_restricted_requests() -> None:
    app = RawApp([PAGE])
    extensions = {"http.response.pathsend": {}, "http.response.trailers": {}}

    async def with_extensions(scope: Any, receive: Any, send: Any) -> None:
        await guarded(app)({**scope, "extensions": extensions}, receive, send)

    await fetch(with_extensions)
    assert "http.response.pathsend" not in app.seen_extensions
    assert "http.response.trailers" in app.seen_extensions


async def test_headers_of_a_rewritten_page() -> None:
    app = RawApp([PAGE], headers=[
        (b"etag", b'"v1"'), (b"content-length", str(len(PAGE)).encode()),
        (b"accept-ranges", b"bytes"), (b"content-digest", b"sha-256=:x:"),
        (b"last-modified", b"Sat, 01 Jan 2000 00:00:00 GMT"), (b"x-app", b"kept"),
    ])
    response = await fetch(guarded(app))
    for gone in ("etag", "accept-ranges", "content-digest"):
        assert gone not in response.headers
    assert response.headers["x-app"] == "kept"
    assert int(response.headers["content-length"]) == len(response.content) < len(PAGE)
    assert response.headers["cache-control"] == "private"


async def test_each_page_gets_its_own_headers_and_length() -> None:
    # The page headers an app sends are remembered per header set: what one page carries
    # (its cookie, its length, the cookie micafence adds) never reaches another.
    app = guarded(RawApp([PAGE], headers=[(b"set-cookie", b"s=1")]))
    other = guarded(RawApp([PAGE + b"<p>more</p>"], headers=[(b"set-cookie", b"s=2")]))
    for _ in range(2):
        first, second = await fetch(app), await fetch(other)
        assert first.headers.get_list("set-cookie")[0] == "s=1"
        assert second.headers.get_list("set-cookie")[0] == "s=2"
        assert int(first.headers["content-length"]) == len(first.content)
        assert int(second.headers["content-length"]) == len(second.content) \
            == len(first.content) + len(b"<p>more</p>")


async def test_streamed_chunks_are_joined_before_parsing() -> None:
    # The promotion's tag is split across chunks: a chunk-by-chunk filter would miss it.
    cut = PAGE.index(b"data-promo") + 4
    chunks = [PAGE[:20], PAGE[20:cut], PAGE[cut:], b""]
    response = await fetch(guarded(RawApp(chunks)))
    assert ids(response) == {"prices"}


async def test_head_gets_headers_without_a_stale_length() -> None:
    app = RawApp([], headers=[(b"content-length", str(len(PAGE)).encode()), (b"etag", b'"v"')])
    response = await fetch(guarded(app), method="HEAD")
    assert response.status_code == 200
    assert response.content == b""
    assert "content-length" not in response.headers
    assert "etag" not in response.headers
    assert response.headers["cache-control"] == "private"


async def test_empty_html_body_passes_as_empty() -> None:
    response = await fetch(guarded(RawApp([b""])))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


@pytest.mark.parametrize("status", [404, 500])
async def test_error_pages_are_rewritten_too(status: int) -> None:
    response = await fetch(guarded(RawApp([PAGE], status=status)))
    assert response.status_code == status
    assert ids(response) == {"prices"}


async def test_non_html_passes_untouched_and_unbuffered() -> None:
    body = b'{"data-promo": "<div data-promo>not HTML</div>"}'
    app = RawApp([body[:5], body[5:]], content_type=b"application/json",
                 headers=[(b"etag", b'"j"')])
    response = await fetch(guarded(app))
    assert response.content == body
    assert response.headers["etag"] == '"j"'
    assert "cache-control" not in response.headers  # a neutral route: not zone-dependent


# -- pages that cannot be rewritten --------------------------------------------------------------

def _policy(old: str, new: str) -> str:
    text = DEFAULT_POLICY.read_text()
    assert old in text
    return text.replace(old, new)


SMALL = _policy("max_rewrite_bytes: 4194304", "max_rewrite_bytes: 2048")
BIG_PAGE = b"<html><body>" + b"<p>" + b"x" * 4000 + b"</p></body></html>"


@pytest.mark.parametrize(("app", "why"), [
    pytest.param(RawApp([BIG_PAGE]), "streamed-over-limit", id="over-limit"),
    pytest.param(RawApp([BIG_PAGE[:100]], headers=[(b"content-length", b"5000")]),
                 "declared-over-limit", id="declared-over-limit"),
    # (Undeclared charset: held to the limit. Typed with its charset, it would start streaming
    # after 1445 bytes and be aborted: test_a_page_over_the_limit_after_its_first_byte...)
    pytest.param(RawApp([BIG_PAGE[i:i + 512] for i in range(0, len(BIG_PAGE), 512)],
                        content_type=b"text/html"), "chunks-over-limit", id="chunks-over-limit"),
    pytest.param(RawApp([gzip.compress(b"<p>" + b"a" * 100000)],
                        headers=[(b"content-encoding", b"gzip")]), "bomb", id="gzip-bomb"),
    pytest.param(RawApp([brotli.compress(b"<p>" + b"a" * 100000)],
                        headers=[(b"content-encoding", b"br")]), "bomb", id="br-bomb"),
    pytest.param(RawApp([gzip.compress(PAGE)[:-20]], headers=[(b"content-encoding", b"gzip")]),
                 "truncated", id="truncated-gzip"),
    pytest.param(RawApp([b"not gzip at all"], headers=[(b"content-encoding", b"gzip")]),
                 "bad-gzip", id="bad-gzip"),
    pytest.param(RawApp([PAGE], headers=[(b"content-encoding", b"compress")]),
                 "unknown-coding", id="unknown-coding"),
    pytest.param(RawApp([PAGE], content_type=b"text/html; charset=utf-16"),
                 "utf-16", id="charset-not-ascii-compatible"),
    pytest.param(RawApp([PAGE[:40]], status=206), "partial", id="partial-206"),
    # 2 MiB of NUL padding after a short undeclared page's member: too little decoded to settle
    # the charset, too much to hold (RAW_HOLD_BYTES).
    pytest.param(RawApp([gzip.compress(PAGE.replace(b'<meta charset="utf-8">', b"")),
                         bytes(1 << 20), bytes(1 << 20), bytes(1 << 20)],
                        content_type=b"text/html", headers=[(b"content-encoding", b"gzip")]),
                 "padding", id="gzip-padding-undeclared"),
])
async def test_unrewritable_page_gets_451_never_the_original(app: RawApp, why: str) -> None:
    response = await fetch(guarded(app, SMALL), headers={"Accept": "application/json"})
    assert response.status_code == 451
    assert response.json()["reason"] == "eu.promotion.unrewritable"
    assert response.headers["cache-control"] == "no-store"
    assert b"0% fees" not in response.content and b"xxxx" not in response.content


@pytest.mark.parametrize(("outcome", "status", "body"), [
    ("empty", 200, b"<!doctype html>"),
    ("no_content", 204, b""),
])
async def test_on_unrewritable_outcome_is_a_policy_setting(
    outcome: str, status: int, body: bytes
) -> None:
    policy = SMALL.replace("on_unrewritable: block", f"on_unrewritable: {outcome}")
    response = await fetch(guarded(RawApp([BIG_PAGE]), policy))
    assert response.status_code == status
    assert response.content.startswith(body)
    assert b"xxxx" not in response.content
    assert response.headers["micafence-reason"] == "eu.promotion.unrewritable"


async def test_a_typed_page_followed_by_padding_is_rewritten_not_held() -> None:
    """Typed with its charset, a few decoded bytes settle it: past RAW_HOLD_BYTES of padding
    the page streams (the padding is skipped, never held)."""
    app = RawApp([gzip.compress(PAGE), *[bytes(1 << 20)] * 3],
                 headers=[(b"content-encoding", b"gzip")])
    response = await fetch(guarded(app))
    assert response.status_code == 200
    assert response.content == PAGE.replace(b'<div id="banner" data-promo>0% fees</div>', b"")


async def test_swiss_visitor_gets_a_large_page_unchanged() -> None:
    response = await fetch(guarded(RawApp([BIG_PAGE]), SMALL), CH)
    assert response.content == BIG_PAGE


# -- a real server, a real chunked response ---------------------------------------------------

@pytest.mark.server
def test_chunked_page_through_uvicorn_is_rewritten_whole() -> None:
    cut = PAGE.index(b"0% fees")
    app = guarded(RawApp([PAGE[:cut], PAGE[cut:]]))
    with ServerThread(app) as server:
        eu = httpx.get(server.url + "/", headers={"X-Forwarded-For": SE})
        swiss = httpx.get(server.url + "/", headers={"X-Forwarded-For": CH})
    assert eu.status_code == swiss.status_code == 200
    assert "0% fees" not in eu.text and '<p id="prices">' in eu.text
    assert eu.headers["content-length"] == str(len(eu.content))
    assert swiss.headers.get("transfer-encoding") == "chunked"  # passed through as streamed
    assert swiss.content == PAGE


# -- streaming (issue 19) -----------------------------------------------------------------------

def big_page(promotions: int = 40, rows: int = 4000) -> tuple[bytes, bytes]:
    """A page of a few hundred KB with ``promotions`` promotions, and the same without them."""
    parts, kept = [b"<!doctype html><html><body><table>"], [b"<!doctype html><html><body><table>"]
    for n in range(rows):
        row = b'<tr class="market"><td>BTC-%d</td><td>61250.%02d</td></tr>\n' % (n, n % 100)
        parts.append(row)
        kept.append(row)
        if n % (rows // promotions) == 0:
            parts.append(b'<div class="promo" data-promo id="promo-%d"><p>Zero fees</p></div>' % n)
    parts.append(b"</table></body></html>")
    kept.append(b"</table></body></html>")
    return b"".join(parts), b"".join(kept)


def chunked(data: bytes, size: int = 16384) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def test_a_large_page_streams_byte_for_byte_without_its_promotions() -> None:
    page, kept = big_page()
    response = await fetch(guarded(RawApp(chunked(page),
                                          headers=[(b"content-length", b"%d" % len(page))])))
    assert response.status_code == 200
    assert response.content == kept
    assert "content-length" not in response.headers  # streamed: the length is not known
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "private"


class Visitor:
    """A server's ``send`` keeping the body, ``received`` set once a body byte has arrived."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.got: list[bytes] = []

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.body":
            self.got.append(message.get("body", b""))
            if message.get("body"):
                self.received.set()


async def test_output_starts_before_the_app_has_sent_its_page() -> None:
    """The app sends half its page and waits until the visitor has received bytes: a safety
    net that held the page would never let it finish."""
    page, kept = big_page()
    half = len(page) // 2
    visitor = Visitor()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", HTML)]})
        await send({"type": "http.response.body", "body": page[:half], "more_body": True})
        await asyncio.wait_for(visitor.received.wait(), timeout=10)
        await send({"type": "http.response.body", "body": page[half:], "more_body": False})

    await call_in_process(app, visitor.send)
    assert b"".join(visitor.got) == kept


HEAD = (b"<!doctype html><html><head><meta charset=utf-8><title>Markets</title>"
        + b"<link rel=stylesheet href=/s.css>" * 60 + b"</head>")
TRICKLE = [
    pytest.param(HTML, b"", HEAD + b"<body><div data-promo>0% fees</div><p id=prices>",
                 id="charset-in-header"),
    pytest.param(b"text/html", b"", HEAD + b"<body><div data-promo>0% fees</div><p id=prices>",
                 id="meta-then-body"),
    pytest.param(b"text/html", b"", HEAD.replace(b"</head>", b"") + b"<div data-promo>0%</div>",
                 id="meta-then-a-body-tag-without-body"),
    pytest.param(HTML, b"gzip", HEAD + b"<body><div data-promo>0% fees</div><p id=prices>",
                 id="gzip"),
]


@pytest.mark.parametrize(("content_type", "coding", "first"), TRICKLE)
async def test_a_page_that_waits_after_its_head_gets_its_first_bytes_out(
        content_type: bytes, coding: bytes, first: bytes) -> None:
    """The app sends about 2 KB (its head and the start of its body) and then waits until the
    visitor has received bytes (an app waiting on data): the safety net must not hold them
    until 64 KB or the end, once the charset is settled."""
    assert 1445 < len(first) < 4096
    visitor = Visitor()
    waited: list[bool] = []
    rest = b"<p>late data</p><div data-promo>x</div></body></html>"

    def coded(data: bytes, last: bool) -> bytes:
        if not coding:
            return data
        out = packer.compress(data) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
        return out

    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    headers = [(b"content-type", content_type)]
    if coding:
        headers.append((b"content-encoding", coding))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": coded(first, False),
                    "more_body": True})
        try:
            await asyncio.wait_for(visitor.received.wait(), timeout=5)
            waited.append(True)
        except TimeoutError:
            waited.append(False)
        await send({"type": "http.response.body", "body": coded(rest, True),
                    "more_body": False})

    await call_in_process(app, visitor.send)
    assert waited == [True], "the first bytes never reached the visitor while the app waited"
    body = b"".join(visitor.got)
    page = gzip.decompress(body) if coding else body
    assert b"data-promo" not in page and b"late data" in page


async def test_an_undeclared_page_is_held_until_its_charset_is_settled() -> None:
    """No charset in the header or the page: Chromium's detector may read beyond the head, so
    the net holds on (here: the whole short page, sent with its length)."""
    first = HEAD.replace(b"<meta charset=utf-8>", b"") + b"<body><p>x</p>"
    chunks = [first, b"<p>" + b"y" * 2000 + b"</p>", b"<div data-promo>z</div></body></html>"]
    response = await fetch(guarded(RawApp(chunks, content_type=b"text/html")))
    assert response.headers["content-length"] == str(len(response.content))
    assert b"data-promo" not in response.content


@pytest.mark.parametrize(("content_type", "page"), [
    pytest.param(None, b"\x0b<html><body><div data-promo>0% fees</div><p id=prices>1</p>",
                 id="untyped-vertical-tab"),
    pytest.param(b"text/plain, text/html", b"<div data-promo>0% fees</div><p id=prices>1</p>",
                 id="two-types-html-last"),
    pytest.param(b"unknown/unknown", b"<p id=prices>1</p><div data-promo>0% fees</div>",
                 id="unknown-unknown"),
    pytest.param(b"application/xhtml+xml",
                 b'<html xmlns="http://www.w3.org/1999/xhtml"><body><div data-promo="">0% fees'
                 b"</div><p id='prices'>1</p></body></html>", id="xhtml"),
    pytest.param(b"image/svg+xml",
                 b'<svg xmlns="http://www.w3.org/2000/svg"><g data-promo="">'
                 b"<text>0% fees</text></g><text id='prices'>1</text></svg>", id="svg"),
])
async def test_whatever_a_browser_renders_as_a_page_is_rewritten(
    content_type: bytes | None, page: bytes
) -> None:
    response = await fetch(guarded(RawApp([page], content_type=content_type)))
    assert response.status_code == 200
    assert b"0% fees" not in response.content and b"prices" in response.content
    assert response.headers["x-content-type-options"] == "nosniff"
    if content_type is None:
        assert response.headers["content-type"] == "text/html"  # the type it was judged as


async def test_an_svg_icon_passes_byte_for_byte() -> None:
    icon = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8">'
            b'<path d="M0 0h8v8z"/></svg>')
    response = await fetch(guarded(RawApp([icon], content_type=b"image/svg+xml")))
    assert response.status_code == 200
    assert response.content == icon


async def test_untyped_text_passes_byte_for_byte_and_is_not_sniffed_later() -> None:
    body = b"plain words, data-promo and all"
    response = await fetch(guarded(RawApp([body], content_type=None)))
    assert response.content == body
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-type" not in response.headers


LARGE_LIMIT = _policy("max_rewrite_bytes: 4194304", "max_rewrite_bytes: 200000")


async def test_a_page_over_the_limit_after_its_first_byte_is_aborted() -> None:
    page, _ = big_page(rows=8000)
    assert len(page) > 200000
    before = ABORTS["too_large"]
    with pytest.raises(RewriteAborted):
        await fetch(guarded(RawApp(chunked(page)), LARGE_LIMIT))
    assert ABORTS["too_large"] == before + 1


@pytest.mark.server
def test_a_failure_after_the_first_byte_drops_the_connection_under_uvicorn() -> None:
    """A gzip page that turns corrupt after 64 KB: the visitor gets an incomplete response
    (the server drops the connection), never a completed page, and the abort is counted."""
    page, _ = big_page()
    compressed = gzip.compress(page)
    cut = len(compressed) // 2
    app = guarded(RawApp([compressed[:cut], b"not gzip any more" * 10],
                         headers=[(b"content-encoding", b"gzip")]))
    before = ABORTS["coding"]
    with ServerThread(app) as server, httpx.stream(
            "GET", server.url + "/", headers={"X-Forwarded-For": SE}) as response:
        assert response.status_code == 200
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_bytes():
                received += chunk
    assert 0 < len(received) < len(page)
    assert b"Zero fees" not in received
    assert ABORTS["coding"] == before + 1


async def test_head_of_an_untyped_response_is_judged_as_a_page() -> None:
    app = RawApp([], content_type=None, headers=[(b"etag", b'"v"')])
    response = await fetch(guarded(app), method="HEAD")
    assert response.headers["cache-control"] == "private"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "etag" not in response.headers


LATE_META = (b"<!DOCTYPE html><html><head><title>t</title><script>/*" + b"x" * 70_000
             + b"*/</script><meta @></head><body>" + PAGE + b"</body></html>")


async def test_a_late_meta_charset_that_is_not_ascii_compatible_aborts_a_streaming_page() -> None:
    """Past the 64 KB hold of an undeclared page, Blink still obeys a <meta charset> in <head>:
    ISO-2022-JP there fails the page (aborted: its first bytes are out), counted."""
    page = LATE_META.replace(b"@", b'charset="iso-2022-jp"')
    before = ABORTS["engine"]
    with pytest.raises(RewriteAborted):
        await fetch(guarded(RawApp(chunked(page), content_type=b"text/html")))
    assert ABORTS["engine"] == before + 1


async def test_a_late_meta_in_the_last_message_is_refused_not_aborted() -> None:
    for meta in (b'charset="ISO-2022-JP"', b'charset="&#105;so-2022-jp"',
                 b'http-equiv=Content-Type content="text/html; charset=csISO2022JP"'):
        app = RawApp([LATE_META.replace(b"@", meta)], content_type=b"text/html")
        response = await fetch(guarded(app))
        assert response.status_code == 451, meta
        assert b"0% fees" not in response.content


@pytest.mark.parametrize(("content_type", "meta"), [
    pytest.param(b"text/html", b"charset=windows-1251", id="ascii-compatible"),
    pytest.param(b"text/html", b"charset=utf-16", id="utf-16-means-utf-8"),
    pytest.param(b"text/html", b'charset=x http-equiv=content-type content="charset=iso-2022-jp"',
                 id="charset-attribute-first"),
    pytest.param(b"text/html", b'content="charset=iso-2022-jp"', id="no-pragma"),
    pytest.param(b"text/html; charset=utf-8", b"charset=iso-2022-jp", id="header-decides"),
])
async def test_a_late_meta_the_browser_reads_as_ascii_is_no_problem(
        content_type: bytes, meta: bytes) -> None:
    page = LATE_META.replace(b"@", meta)
    response = await fetch(guarded(RawApp(chunked(page), content_type=content_type)))
    assert response.status_code == 200
    assert response.content == page.replace(b'<div id="banner" data-promo>0% fees</div>', b"")


async def test_head_request_never_carries_the_page_an_app_sends_anyway() -> None:
    # Some apps (Starlette's HTMLResponse among them) send the body to a HEAD request too and
    # leave it to the server to drop: the safety net judges no body for HEAD, so it sends none.
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await call_in_process(RawApp([PAGE[:100], PAGE[100:]]), send, method="HEAD")
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert [m["type"] for m in sent[1:]] == ["http.response.body"] * 2
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b""
    assert sent[-1].get("more_body", False) is False


@pytest.mark.parametrize(("content_type", "page"), [
    (HTML, PAGE),
    (None, PAGE),  # untyped: sniffed, sent as text/html
    (b"application/xhtml+xml", b'<html xmlns="http://www.w3.org/1999/xhtml"><body>'
     b'<p data-promo="">0% fees</p><p>BTC</p></body></html>'),
    (b"text/html", b'<html><head><meta charset="utf-8"></head><body><div data-promo>x</div>'
     b"<noscript><div data-promo>y</div></noscript><p>z</p></body></html>"),
    (None, b'{"price": 61250}'),  # untyped, not markup: as it came
])
async def test_a_page_in_one_message_is_answered_as_the_same_page_in_pieces(
    content_type: bytes | None, page: bytes
) -> None:
    """A small page the app sends whole (as ``Response`` does) and the same page sent in
    pieces reach the visitor as the same body and headers, the whole one with its length."""
    whole = await fetch(guarded(RawApp([page], content_type=content_type)))
    pieces = await fetch(guarded(RawApp([page[:7], page[7:20], page[20:]],
                                        content_type=content_type)))
    assert whole.status_code == pieces.status_code == 200
    assert whole.content == pieces.content
    assert b"data-promo" not in whole.content or (content_type is None and page.startswith(b"{"))
    assert whole.headers.get("content-type") == pieces.headers.get("content-type")
    assert whole.headers.get("x-content-type-options") == "nosniff"
    if page.startswith(b"{"):  # passed as the app sent it: no length added
        assert whole.headers.get("content-length") == pieces.headers.get("content-length")
    else:
        assert whole.headers["content-length"] == str(len(whole.content))

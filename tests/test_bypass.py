"""The bypass suite (issue 9.2): every trick a restricted visitor might try, and the block they see.

Each case is one test (parametrized tables; every row counts) asserting what the visitor gets:
HTTP 451 with the expected ``Micafence-Reason``, or the promotion absent from the page. The app
is the demo exchange (``micafence_tools.demo.app``) behind :class:`MicafenceMiddleware` with the
default policy and MaxMind's Country test database. A Swedish address is the EU visitor; a
Swiss one the visitor no rule applies to. ``alice`` holds one grant: exchange for funds, BTC.

In-process cases fake the peer with ``httpx.ASGITransport(client=...)`` or call the ASGI app
with a hand-built scope (for bytes no HTTP client sends). Cases where the server matters
(websocket upgrades, duplicate header lines, raw request targets, ``root_path`` and mounted
sub-apps) run against a real uvicorn (``ServerThread``) on 127.0.0.1, the trusted proxy, with
``X-Forwarded-For`` naming the visitor as a load balancer would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import socket
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from micafence import MicafenceMiddleware, load_policy_text
from micafence.grants.book import GrantBook
from micafence.identity import ClientIdentity
from micafence.location.geo import GeoIPDatabase
from micafence.policy.loader import load_policy
from micafence.policy.model import Policy
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

SE = "89.160.20.112"  # Sweden (registered DE): the EU visitor
CH = "2a02:d000::1"  # Switzerland: no rule applies
PROXY = "127.0.0.1"  # the default policy's trusted proxy (loopback)
PROMO = "ZERO-FEES-PROMO"
BTC_ORDER = {"pair": "BTC-EUR", "side": "buy", "amount": "1"}

POLICY_TEXT = DEFAULT_POLICY.read_text(encoding="utf-8")
POLICY: Policy = load_policy(DEFAULT_POLICY)
GEOIP = GeoIPDatabase(COUNTRY_DB)


def variant(*edits: tuple[str, str]) -> Policy:
    """The default policy with pieces replaced (each must be there)."""
    text = POLICY_TEXT
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_policy_text(text, "bypass-variant.yaml")


EDGE = ("  setup: private   #", "  setup: edge\n  edge_country_header: cf-ipcountry\n  #")
WS_IS_A_SERVICE = ("  - {id: neutral.price-stream, class: neutral, path: /ws/prices}",
                   "  - {id: stream.prices, class: service, path: /ws/**}")
IDENTITY_HEADER = (
    "  source: header\n  header: x-client-id\n  residence_header: x-client-residence\n"
)


async def alice_grant(store: MemoryStore, policy: Policy = POLICY) -> None:
    """Record alice's grant: exchange for funds on BTC, initiated an hour ago."""
    now = dt.datetime.now(dt.UTC)
    await GrantBook(store, policy).add(
        client_id="alice", service="exchange_for_funds", asset="BTC",
        initiated_at=now - dt.timedelta(hours=1), channel="email", evidence="ticket CS-42",
        verified_by="compliance", country="FR",
    )


async def exchange(policy: Policy = POLICY, **kwargs: Any) -> MicafenceMiddleware:
    """A fresh demo exchange behind micafence, with alice's grant in its memory store."""
    store = MemoryStore()
    await alice_grant(store, policy)
    return MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=GEOIP, store=store,
                               watch=False, **kwargs)


async def send(
    app: Any, method: str, path: str, *, peer: str = SE,
    headers: list[tuple[str, str]] | None = None, json_body: Any = None,
    content: bytes | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange.test") as http:
        return await http.request(method, path, headers=headers or [], json=json_body,
                                  content=content)


class Answer:
    """What a hand-built ASGI request got back."""

    def __init__(self, sent: list[Message]) -> None:
        start = next(m for m in sent if m["type"].endswith("response.start"))
        self.status = int(start["status"])
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in start.get("headers") or ()}
        self.body = b"".join(m.get("body", b"") for m in sent if m["type"].endswith(".body"))
        self.reason = self.headers.get("micafence-reason")


async def asgi(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], *, peer: str = PROXY,
    body: bytes = b"", query: bytes = b"", root_path: str = "",
) -> Answer:
    """Call ``app`` with a scope as a server builds it, raw header bytes and all."""
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": root_path, "headers": headers, "client": (peer, 40000),
        "server": ("exchange.test", 80),
    }
    inbox: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def collect(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, collect)
    return Answer(sent)


def blocked(response: httpx.Response | Answer, reason: str) -> None:
    """The visitor got the 451 answer with ``reason``."""
    status = response.status_code if isinstance(response, httpx.Response) else response.status
    found = response.headers.get("micafence-reason")
    assert (status, found) == (451, reason)


# -- real uvicorn ---------------------------------------------------------------------------------


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send exact request bytes; the status, headers (last of each) and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def http_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: exchange.test", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """The demo exchange behind micafence under uvicorn (``/ws/**`` classed as a service)."""
    store = MemoryStore()
    policy = variant(WS_IS_A_SERVICE)
    asyncio.run(alice_grant(store, policy))
    app = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=GEOIP, store=store,
                              watch=False)
    with ServerThread(app, ws="websockets-sansio") as running:
        yield running


# == 1. Spoofed location headers from an untrusted peer ===========================================

SPOOFED_LOCATION = [
    pytest.param([("X-Forwarded-For", CH)], id="x-forwarded-for"),
    pytest.param([("X-Forwarded-For", f"{CH}, {PROXY}")], id="x-forwarded-for-via-proxy"),
    pytest.param([("X-Forwarded-For", PROXY)], id="x-forwarded-for-loopback"),
    pytest.param([("Forwarded", f'for="[{CH}]"')], id="forwarded"),
    pytest.param([("Forwarded", f"for={PROXY};proto=https")], id="forwarded-loopback"),
    pytest.param([("X-Real-IP", CH)], id="x-real-ip"),
    pytest.param([("True-Client-IP", CH)], id="true-client-ip"),
    pytest.param([("CF-Connecting-IP", CH)], id="cf-connecting-ip"),
    pytest.param([("CF-IPCountry", "CH")], id="cf-ipcountry"),
    pytest.param([("CloudFront-Viewer-Country", "CH")], id="cloudfront-viewer-country"),
    pytest.param([("Fastly-Client-IP", CH)], id="fastly-client-ip"),
    pytest.param([("X-Client-IP", CH), ("X-Cluster-Client-IP", CH)], id="x-client-ip"),
    pytest.param([("X-AppEngine-Country", "CH"), ("X-Country-Code", "CH")], id="country-codes"),
    pytest.param([("X-Client-Residence", "CH")], id="residence-header"),
    pytest.param([("X-Forwarded-For", CH), ("Forwarded", f'for="[{CH}]"'), ("X-Real-IP", CH),
                  ("True-Client-IP", CH), ("CF-IPCountry", "CH"), ("X-Client-Residence", "CH")],
                 id="all-at-once"),
]


@pytest.mark.parametrize("headers", SPOOFED_LOCATION)
async def test_spoofed_location_header_from_untrusted_peer(headers: list[tuple[str, str]]) -> None:
    response = await send(await exchange(), "POST", "/api/accounts", headers=headers,
                          json_body={"email": "a@b.se"})
    blocked(response, "eu.account_creation")


@pytest.mark.parametrize("peer", [SE, CH], ids=["eu-peer", "swiss-peer"])
async def test_cdn_country_header_from_untrusted_peer_is_unknown_country(peer: str) -> None:
    # With `setup: edge` the CDN's country header decides, but only from trusted proxies.
    response = await send(await exchange(variant(EDGE)), "POST", "/api/accounts", peer=peer,
                          headers=[("CF-IPCountry", "CH")], json_body={"email": "a@b.se"})
    blocked(response, "unknown_country.account_creation")


FORWARDED_THROUGH_PROXY = [
    # (X-Forwarded-For as the proxy passes it on, expected reason)
    pytest.param(f"{CH}, {SE}", "eu.account_creation", id="client-prepends-a-swiss-hop"),
    pytest.param(f"{CH},{SE}", "eu.account_creation", id="no-space"),
    pytest.param(f"{CH}, unknown", "unknown_country.account_creation", id="obfuscated-hop"),
    pytest.param(f"{CH}, {SE}, garbage", "unknown_country.account_creation", id="junk-hop"),
    pytest.param(f"{CH}, , {SE}", "eu.account_creation", id="empty-hop-left-of-client"),
    pytest.param(f"{SE}, ", "unknown_country.account_creation", id="empty-last-hop"),
    pytest.param(f"[{CH}]:443%eth0", "unknown_country.account_creation", id="zone-id"),
]


@pytest.mark.parametrize(("chain", "reason"), FORWARDED_THROUGH_PROXY)
async def test_forged_chain_through_the_trusted_proxy(chain: str, reason: str) -> None:
    response = await send(await exchange(), "POST", "/api/accounts", peer=PROXY,
                          headers=[("X-Forwarded-For", chain)], json_body={"email": "a@b.se"})
    blocked(response, reason)


async def test_forwarded_header_when_the_policy_reads_x_forwarded_for() -> None:
    # The proxy's RFC 7239 header is not the configured one: the proxy itself is the client,
    # whose country is unknown, and unknown fails closed for account creation.
    response = await send(await exchange(), "POST", "/api/accounts", peer=PROXY,
                          headers=[("Forwarded", f'for="[{CH}]"')], json_body={"email": "a@b"})
    blocked(response, "unknown_country.account_creation")


# == 2. Duplicate and oversized headers ==========================================================

LONG_CHAIN = ", ".join(["10.9.8.7"] * 1200) + f", {CH}"  # > 8 KiB: no honest chain is that long

DUPLICATE_AND_OVERSIZED = [
    # (peer, headers, method, path, body, expected reason)
    pytest.param(PROXY, [(b"x-forwarded-for", CH.encode()), (b"x-forwarded-for", SE.encode())],
                 "POST", "/api/accounts", b"{}", "eu.account_creation",
                 id="x-forwarded-for-two-lines"),
    pytest.param(PROXY, [(b"x-forwarded-for", LONG_CHAIN.encode())], "POST", "/api/accounts",
                 b"{}", "unknown_country.account_creation", id="oversized-chain-from-proxy"),
    pytest.param(SE, [(b"x-forwarded-for", LONG_CHAIN.encode())], "POST", "/api/accounts",
                 b"{}", "eu.account_creation", id="oversized-chain-from-client"),
    pytest.param(SE, [(b"x-forwarded-for", CH.encode())] * 50, "POST", "/api/accounts", b"{}",
                 "eu.account_creation", id="fifty-spoofed-lines"),
    pytest.param(SE, [(b"x-http-method-override", b"GET"), (b"x-http-method-override", b"POST")],
                 "GET", "/api/accounts", b"", "eu.account_creation",
                 id="method-override-two-lines"),
    pytest.param(PROXY, [(b"x-forwarded-for", SE.encode()),
                         (b"x-client-id", b"alice" + b"x" * 10_000)],
                 "POST", "/api/orders", json.dumps(BTC_ORDER).encode(), "eu.no_grant",
                 id="oversized-client-id"),
    pytest.param(PROXY, [(b"x-forwarded-for", SE.encode()), (b"x-client-residence", b"C" * 9000)],
                 "POST", "/api/accounts", b"{}", "eu.account_creation",
                 id="oversized-residence"),
    # Two identity lines: the app reads the first, so micafence may not decide on the last.
    pytest.param(PROXY, [(b"x-forwarded-for", SE.encode()), (b"x-client-id", b"mallory"),
                         (b"x-client-id", b"alice")],
                 "POST", "/api/orders", json.dumps(BTC_ORDER).encode(), "eu.no_grant",
                 id="two-client-ids-grant-holder-last"),
    pytest.param(PROXY, [(b"x-forwarded-for", SE.encode()), (b"x-client-id", b"alice"),
                         (b"x-client-id", b"mallory")],
                 "POST", "/api/orders", json.dumps(BTC_ORDER).encode(), "eu.no_grant",
                 id="two-client-ids-grant-holder-first"),
    # A client is EU if any trusted signal says so: one French residence line is enough.
    pytest.param(PROXY, [(b"x-forwarded-for", CH.encode()), (b"x-client-residence", b"FR"),
                         (b"x-client-residence", b"CH")],
                 "POST", "/api/accounts", b"{}", "eu.account_creation",
                 id="two-residences-eu-first"),
    pytest.param(PROXY, [(b"x-forwarded-for", CH.encode()), (b"x-client-residence", b"CH"),
                         (b"x-client-residence", b"FR")],
                 "POST", "/api/accounts", b"{}", "eu.account_creation",
                 id="two-residences-eu-last"),
]


@pytest.mark.parametrize(("peer", "headers", "method", "path", "body", "reason"),
                         DUPLICATE_AND_OVERSIZED)
async def test_duplicate_and_oversized_headers(
    peer: str, headers: list[tuple[bytes, bytes]], method: str, path: str, body: bytes,
    reason: str,
) -> None:
    headers = [*headers, (b"content-type", b"application/json")]
    answer = await asgi(await exchange(), method, path, headers, peer=peer, body=body)
    blocked(answer, reason)


@pytest.mark.parametrize(("peer", "headers", "method", "path", "body", "reason"),
                         DUPLICATE_AND_OVERSIZED)
async def test_header_pairs_as_lists_are_blocked_alike(
    peer: str, headers: list[tuple[bytes, bytes]], method: str, path: str, body: bytes,
    reason: str,
) -> None:
    # ASGI allows each header as a [name, value] list: the same answer as with tuples.
    pairs: Any = [[n, v] for n, v in [*headers, (b"content-type", b"application/json")]]
    answer = await asgi(await exchange(), method, path, pairs, peer=peer, body=body)
    blocked(answer, reason)


WITHDRAWAL = {"asset": "BTC", "amount": "1", "address": "bc1qexample"}


@pytest.mark.parametrize(("headers", "path", "body", "status"), [
    pytest.param([[b"x-forwarded-for", SE.encode()], [b"x-client-id", b"alice"]], "/api/orders",
                 BTC_ORDER, 201, id="grant-holder-order"),
    pytest.param([[b"x-forwarded-for", SE.encode()], [b"x-client-id", b"zzz"]],
                 "/api/withdrawals", WITHDRAWAL, 201, id="identified-withdrawal"),
    pytest.param([[b"x-forwarded-for", CH.encode()], [b"x-http-method-override", b"POST"]],
                 "/api/accounts", {"email": "a@b.ch"}, 201, id="swiss-sign-up"),
])
async def test_header_pairs_as_lists_that_pass(
    headers: list[list[bytes]], path: str, body: Any, status: int
) -> None:
    pairs: Any = [*headers, [b"content-type", b"application/json"]]
    answer = await asgi(await exchange(), "POST", path, pairs, body=json.dumps(body).encode())
    assert (answer.status, answer.reason) == (status, None)


@pytest.mark.parametrize("countries", [("FR", "CH"), ("CH", "FR")], ids=["eu-first", "eu-last"])
async def test_two_cdn_country_lines_are_not_resolved_to_the_swiss_one(
    countries: tuple[str, str],
) -> None:
    app = await exchange(variant(EDGE))
    headers = [(b"cf-ipcountry", c.encode()) for c in countries]
    answer = await asgi(app, "POST", "/api/accounts", headers, body=b'{"email": "a@b"}')
    assert answer.status == 451
    assert answer.reason in ("eu.account_creation", "unknown_country.account_creation")


SERVER_DUPLICATES = [
    # (header lines exactly as sent, method, target, body, expected reason)
    pytest.param([("X-Forwarded-For", CH), ("X-Forwarded-For", SE)], "POST", "/api/accounts",
                 b'{"email": "a@b"}', "eu.account_creation", id="two-forwarded-lines"),
    pytest.param([("X-Forwarded-For", SE), ("x-client-id", "mallory"), ("X-Client-Id", "alice"),
                  ("Content-Type", "application/json")], "POST", "/api/orders",
                 json.dumps(BTC_ORDER).encode(), "eu.no_grant", id="two-client-id-lines"),
    pytest.param([("X-FORWARDED-FOR", CH), ("x-forwarded-for", SE)], "POST", "/api/accounts",
                 b'{"email": "a@b"}', "eu.account_creation", id="case-differing-names"),
    pytest.param([("X-Forwarded-For", SE), ("X-Http-Method-Override", "POST")], "GET",
                 "/api/accounts", b"", "eu.account_creation", id="override-under-uvicorn"),
]


@pytest.mark.server
@pytest.mark.parametrize(("headers", "method", "target", "body", "reason"), SERVER_DUPLICATES)
def test_duplicate_header_lines_as_uvicorn_delivers_them(
    server: ServerThread, headers: list[tuple[str, str]], method: str, target: str,
    body: bytes, reason: str,
) -> None:
    status, answer, _ = raw_http(server.port, http_request(method, target, headers, body))
    assert (status, answer.get("micafence-reason")) == (451, reason)


@pytest.mark.server
def test_oversized_forwarded_header_under_uvicorn_fails_closed(server: ServerThread) -> None:
    # 110 KB of Swiss hops: too long to be an honest chain. httptools hands it over (micafence
    # answers unknown_country); h11 refuses it itself (400/431). No account either way.
    headers = [("X-Forwarded-For", ", ".join([CH] * 8000))]
    status, answer, body = raw_http(server.port, http_request("POST", "/api/accounts", headers,
                                                              b'{"email": "a@b"}'))
    assert b"account_id" not in body
    assert (status, answer.get("micafence-reason")) in (
        (451, "unknown_country.account_creation"), (400, None), (431, None))


# == 3. Method override =========================================================================

METHOD_OVERRIDES = [
    # (method, path, query, headers, expected reason)
    pytest.param("GET", "/api/accounts", "", [("X-HTTP-Method-Override", "POST")],
                 "eu.account_creation", id="x-http-method-override"),
    pytest.param("GET", "/api/accounts", "", [("X-HTTP-Method", "PUT")],
                 "eu.account_creation", id="x-http-method"),
    pytest.param("GET", "/api/accounts", "", [("X-Method-Override", " post ")],
                 "eu.account_creation", id="x-method-override-lower-padded"),
    pytest.param("GET", "/api/accounts", "_method=POST", [], "eu.account_creation",
                 id="query-method"),
    pytest.param("GET", "/api/accounts", "_METHOD=put", [], "eu.account_creation",
                 id="query-method-upper-key"),
    pytest.param("GET", "/api/accounts", "%5Fmethod=POST", [], "eu.account_creation",
                 id="query-encoded-underscore"),
    pytest.param("GET", "/api/accounts", "_method=%50%4f%53%54", [], "eu.account_creation",
                 id="query-encoded-value"),
    pytest.param("GET", "/api/accounts", "_%6Dethod=post", [], "eu.account_creation",
                 id="query-encoded-key-letter"),
    pytest.param("GET", "/api/accounts", "a=1&_method=POST&b=2", [], "eu.account_creation",
                 id="query-method-among-others"),
    pytest.param("HEAD", "/api/accounts", "", [("X-HTTP-Method-Override", "POST")],
                 "eu.account_creation", id="head-overridden"),
    pytest.param("OPTIONS", "/api/accounts", "_method=PUT", [], "eu.account_creation",
                 id="options-overridden"),
    pytest.param("DELETE", "/api/accounts", "", [("X-HTTP-Method-Override", "PUT")],
                 "eu.account_creation", id="delete-overridden"),
    pytest.param("GET", "/api/orders", "_method=POST", [], "eu.no_grant",
                 id="service-query-method"),
    pytest.param("GET", "/api/swaps", "", [("X-HTTP-Method-Override", "POST")], "eu.no_grant",
                 id="service-header-override"),
]


@pytest.mark.parametrize(("method", "path", "query", "headers", "reason"), METHOD_OVERRIDES)
async def test_method_override(
    method: str, path: str, query: str, headers: list[tuple[str, str]], reason: str
) -> None:
    target = f"{path}?{query}" if query else path
    response = await send(await exchange(), method, target, headers=headers)
    blocked(response, reason)


# == 4. Websocket upgrades ======================================================================

WEBSOCKETS = [
    # (path and query, extra headers, expected reason)
    pytest.param("/earn", [], "eu.no_grant", id="service-any-method"),
    pytest.param("/earn/eth", [], "eu.no_grant", id="service-subpath"),
    pytest.param("/%65arn", [], "eu.no_grant", id="service-encoded"),
    pytest.param("/ws/prices", [], "eu.no_grant", id="stream-classed-as-service"),
    pytest.param("/WS/./prices", [], "eu.no_grant", id="stream-case-and-dot"),
    pytest.param("/api/orders", [("X-HTTP-Method-Override", "POST")], "eu.no_grant",
                 id="service-with-override"),
    pytest.param("/signup", [], "eu.account_creation", id="account-creation"),
    pytest.param("/api/accounts?_method=POST", [], "eu.account_creation",
                 id="account-creation-query-override"),
    pytest.param("/r/FRIEND10", [], "eu.promotion", id="referral"),
    pytest.param("/api/promotions", [], "eu.promotion", id="promotion-feed"),
]


@pytest.mark.server
@pytest.mark.parametrize(("target", "headers", "reason"), WEBSOCKETS)
def test_websocket_upgrade(
    server: ServerThread, target: str, headers: list[tuple[str, str]], reason: str
) -> None:
    url = server.url.replace("http", "ws") + target
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=[("X-Forwarded-For", SE), *headers], open_timeout=5)
    response = refused.value.response
    assert (response.status_code, response.headers["micafence-reason"]) == (451, reason)


@pytest.mark.server
def test_websocket_upgrade_control_swiss_visitor_gets_the_stream(server: ServerThread) -> None:
    url = server.url.replace("http", "ws") + "/ws/prices"
    with connect(url, additional_headers={"X-Forwarded-For": CH}, open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["BTC"]


# == 5. HEAD and OPTIONS ========================================================================

HEAD_AND_OPTIONS = [
    pytest.param("HEAD", "/signup", "eu.account_creation", id="head-signup"),
    pytest.param("OPTIONS", "/signup", "eu.account_creation", id="options-signup"),
    pytest.param("TRACE", "/signup", "eu.account_creation", id="trace-signup"),
    pytest.param("HEAD", "/earn", "eu.no_grant", id="head-service"),
    pytest.param("OPTIONS", "/earn", "eu.no_grant", id="options-service"),
    pytest.param("HEAD", "/r/FRIEND10", "eu.promotion", id="head-referral"),
    pytest.param("OPTIONS", "/r/FRIEND10", "eu.promotion", id="options-referral"),
]


@pytest.mark.parametrize(("method", "path", "reason"), HEAD_AND_OPTIONS)
async def test_head_and_options(method: str, path: str, reason: str) -> None:
    response = await send(await exchange(), method, path)
    blocked(response, reason)
    if method == "HEAD":
        assert response.content == b""


# == 6. Paths spelled to dodge the route table (as uvicorn decodes them) =========================

ACCOUNT_PATHS = [
    "/api/%61ccounts", "/api/%2561ccounts", "/api/x/../accounts", "/api/./accounts",
    "/API/Accounts", "/api/accounts/", "//api//accounts", "/api/accounts;x=1",
    "/api;v=2/accounts", "/api/accounts%3Bjsessionid=1", "/%EF%BD%81pi/accounts",
    "/api/%EF%BD%81%EF%BD%83counts", "/%EF%BC%A1PI/ACCOUNTS", "/api%2faccounts",
    "/api%5caccounts", "/api%EF%BC%8Faccounts", "/api/accounts%20", "/api/accounts%09",
    "/api/accounts/.", "/api/%2e/accounts", "/api/%2e%2e/api/accounts", "/./api/accounts",
    "/api/%252e%252e/api/accounts", "/api/accounts%2F",
]
OTHER_PATHS = [
    pytest.param("GET", "/EARN", "eu.no_grant", id="service-upper"),
    pytest.param("GET", "/%65arn/x", "eu.no_grant", id="service-encoded-subpath"),
    pytest.param("GET", "/%EF%BD%85arn", "eu.no_grant", id="service-fullwidth"),
    pytest.param("GET", "/r/FRIEND10/", "eu.promotion", id="referral-trailing-slash"),
    pytest.param("GET", "/R/%46RIEND10", "eu.promotion", id="referral-encoded"),
    pytest.param("GET", "/promo/../promo/x", "eu.promotion", id="promo-dot-dot"),
    pytest.param("GET", "/aff;x/partner", "eu.promotion", id="affiliate-matrix"),
]


@pytest.mark.server
@pytest.mark.parametrize("target", ACCOUNT_PATHS)
def test_encoded_account_creation_path(server: ServerThread, target: str) -> None:
    status, headers, _ = raw_http(server.port, http_request(
        "POST", target, [("X-Forwarded-For", SE), ("Content-Type", "application/json")],
        b'{"email": "a@b.se"}'))
    assert (status, headers.get("micafence-reason")) == (451, "eu.account_creation")


@pytest.mark.server
@pytest.mark.parametrize(("method", "target", "reason"), OTHER_PATHS)
def test_encoded_service_and_promotion_path(
    server: ServerThread, method: str, target: str, reason: str
) -> None:
    status, headers, _ = raw_http(server.port, http_request(method, target,
                                                            [("X-Forwarded-For", SE)]))
    assert (status, headers.get("micafence-reason")) == (451, reason)


# == 7. Mounted sub-apps and root_path ==========================================================


@pytest.mark.server
def test_root_path_under_uvicorn() -> None:
    # uvicorn --root-path /v2 (behind a proxy that strips /v2): the app routes /api/accounts.
    app = MicafenceMiddleware(build_demo_app(), policy=POLICY, geoip_db=GEOIP, watch=False)
    with ServerThread(app, root_path="/v2") as running:
        status, headers, body = raw_http(running.port, http_request(
            "POST", "/api/accounts",
            [("X-Forwarded-For", SE), ("Content-Type", "application/json")],
            b'{"email": "a@b.se"}'))
    assert b"account_id" not in body
    assert (status, headers.get("micafence-reason")) == (451, "eu.account_creation")


@pytest.mark.server
def test_micafence_inside_a_mounted_sub_app_under_uvicorn() -> None:
    guarded = MicafenceMiddleware(build_demo_app(), policy=POLICY, geoip_db=GEOIP, watch=False)
    site = Starlette(routes=[Mount("/v2", app=guarded)])
    with ServerThread(site) as running:
        status, headers, body = raw_http(running.port, http_request(
            "POST", "/v2/api/accounts",
            [("X-Forwarded-For", SE), ("Content-Type", "application/json")],
            b'{"email": "a@b.se"}'))
    assert b"account_id" not in body
    assert (status, headers.get("micafence-reason")) == (451, "eu.account_creation")


@pytest.mark.server
def test_sub_app_mounted_behind_micafence_with_the_policy_naming_the_mount() -> None:
    policy = variant(("path: /api/accounts,", "path: /v2/api/accounts,"))
    site = Starlette(routes=[Mount("/v2", app=build_demo_app())])
    guarded = MicafenceMiddleware(site, policy=policy, geoip_db=GEOIP, watch=False)
    with ServerThread(guarded) as running:
        status, headers, _ = raw_http(running.port, http_request(
            "POST", "/v2/./API/accounts",
            [("X-Forwarded-For", SE), ("Content-Type", "application/json")], b"{}"))
    assert (status, headers.get("micafence-reason")) == (451, "eu.account_creation")


async def test_root_path_in_process_path_with_root() -> None:
    # What httpx, uvicorn >= 0.26 and Starlette's Mount do: path includes root_path.
    answer = await asgi(await exchange(), "POST", "/v2/api/accounts",
                        [(b"x-forwarded-for", SE.encode())], body=b'{"email": "a@b"}',
                        root_path="/v2")
    assert b"account_id" not in answer.body
    blocked(answer, "eu.account_creation")


async def test_root_path_in_process_path_without_root() -> None:
    # What older servers did: path relative to root_path.
    answer = await asgi(await exchange(), "POST", "/api/accounts",
                        [(b"x-forwarded-for", SE.encode())], body=b'{"email": "a@b"}',
                        root_path="/v2")
    blocked(answer, "eu.account_creation")


# == 8. Smuggling an asset past alice's BTC grant ===============================================

ORDER_HEADERS = [(b"x-forwarded-for", SE.encode()), (b"x-client-id", b"alice")]
JSON = (b"content-type", b"application/json")

SMUGGLED_BODIES = [
    # (content type, body, expected reason)
    pytest.param(JSON, b'{"pair": "BTC-EUR", "side": "buy", "amount": "1", "pair": "ETH-EUR"}',
                 "eu.scope_unreadable", id="duplicate-key-eth-last"),
    pytest.param(JSON, b'{"pair": "ETH-EUR", "pair": "BTC-EUR", "side": "buy", "amount": "1"}',
                 "eu.scope_unreadable", id="duplicate-key-eth-first"),
    pytest.param(JSON, b'{"p\\u0061ir": "ETH-EUR", "pair": "BTC-EUR", "side": "buy"}',
                 "eu.scope_unreadable", id="duplicate-key-escaped"),
    pytest.param((b"content-type", b"text/plain"), b'{"pair": "ETH-EUR", "side": "buy"}',
                 "eu.out_of_scope.asset_type", id="lying-content-type-text"),
    pytest.param((b"content-type", b"application/x-www-form-urlencoded"),
                 b'{"pair": "ETH-EUR", "side": "buy"}', "eu.out_of_scope.asset_type",
                 id="lying-content-type-form"),
    pytest.param(JSON, b"pair=BTC-EUR&side=buy&amount=1", "eu.scope_unreadable",
                 id="form-body-as-json"),
    pytest.param(JSON, json.dumps({"pair": "ETH-EUR", "side": "buy"}).encode("utf-16"),
                 "eu.out_of_scope.asset_type", id="utf-16-body"),
    pytest.param(JSON, b'\xef\xbb\xbf{"pair": "ETH-EUR", "side": "buy"}',
                 "eu.out_of_scope.asset_type", id="utf-8-bom"),
    pytest.param((b"content-encoding", b"gzip"), gzip.compress(b'{"pair": "ETH-EUR"}'),
                 "eu.scope_unreadable", id="gzip-body"),
    pytest.param(JSON, b'{"pair": "BTC-EUR", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 "eu.scope_unreadable", id="deeply-nested"),
    pytest.param(JSON, b'{"pair": "BTC-EUR", "amount": 1' + b"0" * 5000 + b"}",
                 "eu.scope_unreadable", id="huge-number"),
    pytest.param(JSON, b'{"pair": "BTC-EUR", "pad": "' + b"x" * 70_000 + b'"}',
                 "eu.scope_unreadable", id="over-max-body-bytes"),
    pytest.param(JSON, b'{"pair": ["BTC-EUR", "ETH-EUR"], "side": "buy"}',
                 "eu.scope_unreadable", id="pair-as-list"),
    pytest.param(JSON, b'{"pair": {"base": "BTC", "quote": "EUR"}}', "eu.scope_unreadable",
                 id="pair-as-object"),
    pytest.param(JSON, b'[{"pair": "BTC-EUR"}]', "eu.scope_unreadable", id="top-level-array"),
    pytest.param(JSON, b'{"pair": "eth-eur", "side": "buy"}', "eu.out_of_scope.asset_type",
                 id="lower-case-eth"),
    pytest.param(JSON, b'{"pair": "ETH/EUR", "side": "buy"}', "eu.out_of_scope.asset_type",
                 id="slash-separated-eth"),
    pytest.param(JSON, '{"pair": "\uff25\uff34\uff28-EUR"}'.encode(), "eu.scope_unreadable",
                 id="fullwidth-eth"),
    pytest.param(JSON, '{"pair": "\u0412\u0422\u0421-EUR"}'.encode(), "eu.scope_unreadable",
                 id="cyrillic-lookalike-btc"),
    pytest.param(JSON, b'{"pair": "BTC-EUR\\u0000ETH"}', "eu.scope_unreadable",
                 id="nul-inside-pair"),
    pytest.param(JSON, b'{"pair": "BTC-ETH", "side": "buy", "amount": "1"}',
                 "eu.out_of_scope.service", id="crypto-quote-other-service"),
    pytest.param(JSON, b'{"pair": "ETH-EUR", "amount": NaN}', "eu.out_of_scope.asset_type",
                 id="nan-amount"),
]


@pytest.mark.parametrize(("extra", "body", "reason"), SMUGGLED_BODIES)
async def test_asset_smuggled_past_a_btc_grant(
    extra: tuple[bytes, bytes], body: bytes, reason: str
) -> None:
    answer = await asgi(await exchange(), "POST", "/api/orders", [*ORDER_HEADERS, extra],
                        body=body)
    assert b"order_id" not in answer.body
    blocked(answer, reason)


async def test_query_pair_does_not_override_the_body() -> None:
    answer = await asgi(await exchange(), "POST", "/api/orders", [*ORDER_HEADERS, JSON],
                        body=b'{"pair": "ETH-EUR", "side": "buy", "amount": "1"}',
                        query=b"pair=BTC-EUR")
    blocked(answer, "eu.out_of_scope.asset_type")


async def test_smuggling_control_btc_order_passes() -> None:
    answer = await asgi(await exchange(), "POST", "/api/orders", [*ORDER_HEADERS, JSON],
                        body=json.dumps(BTC_ORDER).encode())
    assert answer.status == 201 and b"order_id" in answer.body


# == 9. Client ids that would break store keys ==================================================

BAD_CLIENT_IDS = [
    pytest.param(b"alice}", id="closing-brace"),
    pytest.param(b"{alice}", id="hash-tag"),
    pytest.param(b"{alice}:grants", id="hash-tag-key"),
    pytest.param(b"alice\r\nX-Client-Id: bob", id="crlf"),
    pytest.param(b"alice\nbob", id="newline"),
    pytest.param(b"alice\x00", id="nul"),
    pytest.param(b"a" * 129, id="just-too-long"),
    pytest.param(b"alice" + b"x" * 300, id="very-long"),
    pytest.param("\u0430lice".encode(), id="cyrillic-a"),
    pytest.param("\uff41\uff4c\uff49\uff43\uff45".encode(), id="fullwidth"),
    pytest.param("alice\u200b".encode(), id="zero-width-space"),
    pytest.param(b"alice*", id="glob-star"),
    pytest.param(b"alice?", id="glob-question"),
    pytest.param(b"*", id="star"),
    pytest.param(b"alice/../bob", id="path-traversal"),
    pytest.param(b"alice%7D", id="percent-encoded"),
    pytest.param(b"alice bob", id="inner-space"),
    pytest.param(b".alice", id="leading-dot"),
    pytest.param(b"ALICE", id="other-case-is-another-client"),
]


@pytest.mark.parametrize("client_id", BAD_CLIENT_IDS)
async def test_client_id_that_would_break_store_keys(client_id: bytes) -> None:
    headers = [(b"x-forwarded-for", SE.encode()), (b"x-client-id", client_id), JSON]
    answer = await asgi(await exchange(), "POST", "/api/orders", headers,
                        body=json.dumps(BTC_ORDER).encode())
    blocked(answer, "eu.no_grant")


@pytest.mark.parametrize("client_id", [b"{alice}", b"alice\r\nX: y", b"a" * 500, b"alice}"])
async def test_client_id_that_would_break_store_keys_is_unidentified_for_wind_down(
    client_id: bytes,
) -> None:
    headers = [(b"x-forwarded-for", SE.encode()), (b"x-client-id", client_id), JSON]
    answer = await asgi(await exchange(), "POST", "/api/withdrawals", headers,
                        body=b'{"asset": "BTC", "amount": "1", "address": "bc1q"}')
    blocked(answer, "eu.wind_down.unidentified")


@pytest.mark.parametrize("client_id", ["{alice}", "alice}", "alice\n", "\u0430lice", ""])
async def test_client_id_from_a_python_identity_source(client_id: str) -> None:
    policy = variant((IDENTITY_HEADER, "  source: callable\n"))
    app = await exchange(policy, identify=lambda scope: ClientIdentity(client_id, None))
    answer = await asgi(app, "POST", "/api/orders", [(b"x-forwarded-for", SE.encode()), JSON],
                        body=json.dumps(BTC_ORDER).encode())
    blocked(answer, "eu.no_grant")


class HeaderUser(AuthenticationBackend):
    """A stand-in auth layer: the user named by ``X-User`` (as a session would)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        return AuthCredentials(["authenticated"]), SimpleUser(conn.headers.get("x-user", ""))


@pytest.mark.parametrize("username", ["alice}", "{alice}", "alice\t", "a" * 200])
async def test_client_id_from_scope_user(username: str) -> None:
    policy = variant((IDENTITY_HEADER, "  source: scope_user\n"))
    app = AuthenticationMiddleware(await exchange(policy), backend=HeaderUser())
    answer = await asgi(app, "POST", "/api/orders",
                        [(b"x-forwarded-for", SE.encode()), (b"x-user", username.encode()), JSON],
                        body=json.dumps(BTC_ORDER).encode())
    blocked(answer, "eu.no_grant")


# == 10. Promotion markup in odd places =========================================================

HIDDEN_PROMOTIONS = {
    "attribute": f'<a data-promo href="/r/FRIEND10" title="{PROMO}">Invite</a>',
    "image-alt": f'<img data-promo alt="{PROMO}" src="/banner.png">',
    "template": f"<template><div data-promo>{PROMO}</div></template>",
    "nested-template": f"<template><template><div data-promo>{PROMO}</div></template></template>",
    "noscript": f"<noscript><div data-promo>{PROMO}</div></noscript>",
    "uppercase-tags": f"<DIV DATA-PROMO>{PROMO}</DIV>",
    "mixed-case-attribute": f'<Div Data-Promo="yes">{PROMO}</Div>',
    "unquoted-value": f"<div data-promo=1>{PROMO}</div>",
    "comment-opens-before": f"<!--<div>--><div data-promo>{PROMO}</div>",
    "comment-inside": f"<div data-promo>{PROMO}<!-- </div> -->{PROMO}</div>",
    "nested-promotions": f"<div data-promo><section><div data-promo><b>{PROMO}</b></div>"
                         "</section></div>",
    "svg-text": f'<svg><text data-promo x="0" y="10">{PROMO}</text></svg>',
    "svg-foreign-object": f"<svg><foreignObject><div data-promo>{PROMO}</div></foreignObject>"
                          "</svg>",
    "svg-title": f"<svg data-promo><title>{PROMO}</title></svg>",
    "svg-cdata": f"<svg><text data-promo><![CDATA[{PROMO}]]></text></svg>",
    "mathml": f"<math><mtext><div data-promo>{PROMO}</div></mtext></math>",
    "table-foster-parent": f"<table><tr><td>x</td></tr><div data-promo>{PROMO}</div></table>",
    "incentive-only": f'<div data-promo-kind="incentive">{PROMO}</div>',
    "json-script": f'<script type="application/json" data-promo>{{"t": "{PROMO}"}}</script>',
    "select-option": f"<select><option data-promo>{PROMO}</option></select>",
    "unclosed": f"<div data-promo><p>{PROMO}",
    "plaintext": f"<div data-promo><plaintext>{PROMO}",
    "nul-byte": f"<div data-promo>\x00{PROMO}</div>",
}


def _page(markup: str) -> str:
    return f"<!doctype html><html><body><h1>Markets</h1>{markup}<p>prices</p></body></html>"


def _promo_site(answers: dict[str, tuple[bytes, dict[str, str], int]]) -> Starlette:
    """A tiny site answering ``/<name>`` with the given body, headers and status."""

    def endpoint(body: bytes, headers: dict[str, str], status: int) -> Any:
        async def answer(request: Request) -> Response:
            return Response(body, status_code=status, headers=headers)
        return answer

    async def streamed(request: Request) -> StreamingResponse:
        page = _page(f"<div data-promo>{PROMO}</div>").encode()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(page), 7):  # the promotion split across chunks
                yield page[start:start + 7]
        return StreamingResponse(chunks(), media_type="text/html")

    routes = [Route(f"/{name}", endpoint(*spec)) for name, spec in answers.items()]
    return Starlette(routes=[*routes, Route("/streamed", streamed)])


HTML = {"content-type": "text/html; charset=utf-8"}
PROMO_PAGE = _page(f"<div data-promo>{PROMO}</div>")
ODD_ANSWERS: dict[str, tuple[bytes, dict[str, str], int]] = {
    **{name: (_page(markup).encode(), HTML, 200) for name, markup in HIDDEN_PROMOTIONS.items()},
    "fragment": (f"<div data-promo>{PROMO}</div>".encode(), HTML, 200),
    "noscript-in-head": (f"<!doctype html><html><head><noscript><style data-promo>/* {PROMO} */"
                         "</style></noscript></head><body><p>prices</p></body></html>".encode(),
                         HTML, 200),
    "not-found-page": (PROMO_PAGE.encode(), HTML, 404),
    "upper-case-content-type": (PROMO_PAGE.encode(), {"content-type": "TEXT/HTML"}, 200),
    "xhtml": (PROMO_PAGE.encode(), {"content-type": "application/xhtml+xml"}, 200),
    "latin-1": (PROMO_PAGE.replace("prices", "pr\xefces").encode("latin-1"),
                {"content-type": "text/html; charset=iso-8859-1"}, 200),
    "utf-16-bom": (PROMO_PAGE.encode("utf-16"), {"content-type": "text/html"}, 200),
    "gzip-unasked": (gzip.compress(PROMO_PAGE.encode()),
                     {**HTML, "content-encoding": "gzip"}, 200),
    "gzip-twice": (gzip.compress(gzip.compress(PROMO_PAGE.encode())),
                   {**HTML, "content-encoding": "gzip, gzip"}, 200),
    "meta-charset-utf-16": (('<meta charset="utf-16">' + PROMO_PAGE).encode(),
                            {"content-type": "text/html"}, 200),
    "charset-utf-32-label": (PROMO_PAGE.encode(), {"content-type": "text/html; charset=utf-32"},
                             200),
    "charset-ebcdic-label": (PROMO_PAGE.encode(), {"content-type": "text/html; charset=cp037"},
                             200),
    "charset-hex-label": (PROMO_PAGE.encode(), {"content-type": "text/html; charset=hex"}, 200),
    "charset-u16-label": (PROMO_PAGE.encode(), {"content-type": "text/html; charset=u16"}, 200),
    # No Content-Type at all: browsers sniff "<!doctype html" and render the page.
    "no-content-type": (PROMO_PAGE.encode(), {}, 200),
}


def _readable(response: httpx.Response) -> str:
    """The page as a browser shows it (httpx undoes gzip once; the rest is done here)."""
    body = response.content
    while body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return body.decode("utf-16")
    return body.decode("latin-1")


@pytest.mark.parametrize("name", [*ODD_ANSWERS, "streamed"])
async def test_promotion_hidden_in_an_odd_place(name: str) -> None:
    site = MicafenceMiddleware(_promo_site(ODD_ANSWERS), policy=POLICY, geoip_db=GEOIP,
                               watch=False)
    swiss = await send(site, "GET", f"/{name}", peer=CH)
    assert PROMO in _readable(swiss)  # the page does carry it ...
    eu = await send(site, "GET", f"/{name}", peer=SE)
    assert PROMO not in _readable(eu)  # ... and an EU visitor never gets it
    assert eu.status_code in (swiss.status_code, 451)

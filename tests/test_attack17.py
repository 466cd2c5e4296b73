"""Issue 17 attacked from outside: ways an EU-established client might be served as a non-EU
one, each through the real middleware (the demo exchange behind it, under uvicorn where the
server's handling of the request matters).

Requests come from 127.0.0.1, the default policy's trusted proxy and auth gateway, with the
visitor's address in X-Forwarded-For. ``50.114.0.1`` is a US address in MaxMind's test data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from micafence import MicafenceMiddleware
from micafence.decision import STATE_KEY
from micafence.errors import GrantError
from micafence.grants.book import GrantBook
from micafence.grants.signing import GrantKey
from micafence.identity import ClientIdentity
from micafence.policy.model import Policy
from micafence.store.memory import MemoryStore
from micafence.store.opener import open_store
from micafence_tools.demo.app import build_demo_app
from tests.audit_support import policy_with as policy_of
from tests.conftest import COUNTRY_DB, ServerThread
from tests.redis_server import RedisServer

US = "50.114.0.1"
KEY = GrantKey(b"k" * 40)


def order(pair: str) -> dict[str, str]:
    return {"pair": pair, "side": "buy", "amount": "1"}


class Site:
    """The demo exchange behind micafence under uvicorn, on a file store holding bob's FR
    grant (USDC, exchange for funds)."""

    def __init__(self, tmp_path: Path, policy: Policy | None = None, **options: Any) -> None:
        self.store_url = f"file://{tmp_path / 'store.jsonl'}"
        self.policy = policy or policy_of()
        asyncio.run(self.grant("bob"))  # before the middleware opens the store
        self.seen: list[Any] = []
        demo = build_demo_app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.seen.append(scope["state"][STATE_KEY])
            await demo(scope, receive, send)

        self.app = app
        self.fence = MicafenceMiddleware(app, policy=self.policy, geoip_db=COUNTRY_DB,
                                         store=self.store_url, grant_key=KEY, watch=False,
                                         **options)
        self.server = ServerThread(self.fence)

    async def grant(self, client: str, asset: str = "USDC", country: str = "FR") -> None:
        store = open_store(self.store_url, grant_key=KEY)
        try:
            await GrantBook(store, self.policy).add(
                client_id=client, service="exchange_for_funds", asset=asset,
                initiated_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), channel="email",
                evidence=f"ticket {client}", verified_by="a.lind", country=country)
        finally:
            await store.close()

    def __enter__(self) -> httpx.Client:
        self.server.__enter__()
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        return self.http

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.server.__exit__(*exc)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def as_bob(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", US), ("Accept", "application/json"), ("X-Client-Id", "bob"),
            *extra]


# -- identity headers: a second, different X-Client-Id ---------------------------------------


def test_a_second_client_id_header_does_not_turn_a_known_eu_client_into_a_us_visitor(
    site: Site,
) -> None:
    """bob (FR grant) on a US address sends a second X-Client-Id: the app reads the first
    (bob), so micafence must not decide him as an anonymous US visitor."""
    with site as http:
        assert http.get("/r/FRIEND10", headers=as_bob()).status_code == 451
        forged = as_bob(("X-Client-Id", "mallory"))
        referral = http.get("/r/FRIEND10", headers=forged)
        assert referral.status_code == 451
        outside = http.post("/api/orders", json=order("ETH-USD"), headers=forged)
        assert outside.status_code == 451
        assert http.get("/api/promotions", headers=forged).json() == []


@pytest.mark.parametrize("value", ["bob,mallory", "bob mallory", "b" * 200, "{bob}"])
def test_a_client_id_header_that_cannot_be_read_is_the_unknown_country(
    site: Site, value: str,
) -> None:
    """An identity the gateway sent but micafence cannot use cannot place the client: the
    failure posture (unknown country), never an anonymous visitor of the address's country."""
    with site as http:
        headers = [("X-Forwarded-For", US), ("Accept", "application/json"),
                   ("X-Client-Id", value)]
        referral = http.get("/r/FRIEND10", headers=headers)
        assert (referral.status_code, referral.json()["reason"]) == (
            451, "unknown_country.promotion")
        # A blank header is no identity: the US visitor it is.
        blank = [("X-Forwarded-For", US), ("X-Client-Id", "")]
        assert http.get("/r/FRIEND10", headers=blank).status_code == 200
        # The same value twice is one identity.
        twice = as_bob(("X-Client-Id", "bob"))
        assert http.get("/", headers=twice).status_code == 200
        assert site.seen[-1].client_id == "bob"


# -- identities from the host (scope["user"], identify=) --------------------------------------


class _DatabaseUser:
    """A signed-in user as ORMs hand it: an integer primary key."""

    is_authenticated = True

    def __init__(self, key: int) -> None:
        self.id = key


async def test_an_integer_user_id_is_the_client_the_registry_knows() -> None:
    """``source: scope_user`` with an ORM user (``user.id == 42``): client 42's FR residence
    must place it, not leave it an anonymous US visitor."""
    policy = policy_of(("  source: header\n", "  source: scope_user\n"))
    store = MemoryStore()
    demo = build_demo_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await demo(scope, receive, send)

    async def signed_in(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["user"] = _DatabaseUser(42)
        await fence(scope, receive, send)

    fence = MicafenceMiddleware(app, policy=policy, geoip_db=COUNTRY_DB, store=store,
                                watch=False)
    await fence.clients.record_residence("42", "FR", evidence="kyc/42", by="app:kyc")
    transport = httpx.ASGITransport(app=signed_in, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        referral = await http.get("/r/FRIEND10", headers={"X-Forwarded-For": US})
    assert (referral.status_code, referral.headers["micafence-reason"]) == (451, "eu.promotion")


async def test_an_identity_source_that_fails_is_the_unknown_country() -> None:
    """The host's ``identify=`` raising (its session backend is down): the client may be a
    known EU client; it is decided as the unknown country, never as a US visitor."""
    policy = policy_of(("  source: header\n", "  source: callable\n"))

    def identify(scope: Any) -> ClientIdentity:
        raise RuntimeError("session backend down")

    fence = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                identify=identify, watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        referral = await http.get("/r/FRIEND10", headers={"X-Forwarded-For": US})
        order_ = await http.post("/api/orders", json=order("ETH-USD"),
                                 headers={"X-Forwarded-For": US})
    assert (referral.status_code, referral.headers["micafence-reason"]) == (
        451, "unknown_country.promotion")
    assert order_.status_code == 451


# -- sign-up declarations: method overrides ----------------------------------------------------


def _method_override(app: Any) -> Any:
    """The host's method-override middleware (as in many frameworks): the app routes the
    request by ``X-HTTP-Method-Override``."""

    async def overridden(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    scope = {**scope, "method": value.decode("latin-1").upper()}
        await app(scope, receive, send)

    return overridden


@pytest.mark.parametrize(("methods", "sent", "override"), [
    ("[PUT]", "POST", "PUT"),   # the route names PUT only; the request is a POST overridden
    ("[POST, PUT]", "GET", "POST"),  # a GET with a body, overridden to POST
])
async def test_a_sign_up_declaring_france_through_a_method_override_is_blocked(
    methods: str, sent: str, override: str,
) -> None:
    """A route that an EU address is refused on through a method override declares a
    residence through it too."""
    policy = policy_of(("methods: [POST, PUT], path: /api/accounts,",
                        f"methods: {methods}, path: /api/accounts,"))
    opened: list[str] = []

    async def accounts(scope: Any, receive: Any, send: Any) -> None:
        opened.append(scope["method"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"opened"})

    fence = MicafenceMiddleware(_method_override(accounts), policy=policy, geoip_db=COUNTRY_DB,
                                watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        async def sign_up(ip: str, country: str) -> httpx.Response:
            content = json.dumps({"email": "a@b.c", "country": country}).encode()
            return await http.request(sent, "/api/accounts", content=content, headers={
                "X-Forwarded-For": ip, "X-HTTP-Method-Override": override,
                "Content-Type": "application/json", "Accept": "application/json"})

        assert (await sign_up("89.160.20.112", "SE")).status_code == 451  # an EU address
        declared = await sign_up(US, "FR")
        assert (declared.status_code, declared.headers["micafence-reason"]) == (
            451, "eu.account_creation")
        assert (await sign_up(US, "US")).status_code == 201
    assert opened == [override]


# -- sign-up declarations: a form route sent another kind of body ------------------------------


def _form_sign_up(country: str, kind: str) -> tuple[bytes, dict[str, str]]:
    if kind == "multipart":  # what a browser sends for <form enctype="multipart/form-data">
        request = httpx.Request("POST", "http://x/", data={"email": "a@b.c"},
                                files={"country": (None, country)})
        return request.read(), {"Content-Type": request.headers["content-type"]}
    # JSON whose urlencoded reading names no country: {"x":"a" = "b","country":"FR"}
    return (json.dumps({"x": "a=b", "email": "a@b.c", "country": country}).encode(),
            {"Content-Type": "application/json"})


@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_a_form_route_sent_a_body_it_cannot_read_is_not_let_through(kind: str) -> None:
    """A sign-up form route (``residence: {from: form}``) whose app reads the form as its
    framework does (Starlette's ``request.form()`` reads multipart too; an app may read JSON):
    a body micafence cannot read as a form must not pass as one that declares nothing."""
    policy = policy_of(("residence: {from: body, name: country}",
                        "residence: {from: form, name: country}"))
    opened: list[bytes] = []

    async def accounts(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        opened.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"opened"})

    fence = MicafenceMiddleware(accounts, policy=policy, geoip_db=COUNTRY_DB, watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        content, headers = _form_sign_up("FR", kind)
        answer = await http.post("/api/accounts", content=content, headers={
            "X-Forwarded-For": US, "Accept": "application/json", **headers})
        assert answer.status_code == 451
        # A urlencoded form is read as before: US passes, replayed unchanged.
        plain = await http.post("/api/accounts", content=b"email=a%40b.c&country=US",
                                headers={"X-Forwarded-For": US,
                                         "Content-Type": "application/x-www-form-urlencoded"})
        assert plain.status_code == 201
    assert opened == [b"email=a%40b.c&country=US"]


# -- the grant commands: renewals and overrides --------------------------------------------------

MICAFENCE = str(Path(sys.executable).with_name("micafence"))
KEY_TEXT = "k" * 40


def cli(tmp_path: Path, *args: str, officer: str = "a.lind") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MICAFENCE_STORE": f"file://{tmp_path / 'store.jsonl'}",
           "MICAFENCE_GRANT_KEY": KEY_TEXT, "MICAFENCE_OFFICER": officer}
    return subprocess.run([MICAFENCE, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def grant_args(evidence: str, *extra: str) -> tuple[str, ...]:
    initiated = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    return ("grant", "add", "--client", "carol", "--service", "exchange_for_funds",
            "--asset", "BTC", "--initiated-at", initiated, "--channel", "email",
            "--evidence", evidence, "--country", "FR", *extra)


@pytest.mark.parametrize("evidence", [
    "ticket CS\u20111001",     # a non-breaking hyphen
    "ticket CS-1001\u200b",    # a zero-width space at the end
    "\uff54icket CS-1001",     # a fullwidth t
    "ticket: CS-1001.",        # punctuation around it
    "ticket CS 1001",
])
def test_a_renewal_cannot_reuse_evidence_spelled_another_way(
    tmp_path: Path, evidence: str,
) -> None:
    """carol's 30-day grant ended yesterday; a renewal citing the same ticket, spelled with a
    look-alike character or other punctuation, is the same evidence reference."""
    now = dt.datetime.now(dt.UTC)

    async def first_grant() -> None:
        store = open_store(f"file://{tmp_path / 'store.jsonl'}", grant_key=KEY)
        book = GrantBook(store, policy_of(), lambda: now - dt.timedelta(days=31))
        await book.add(client_id="carol", service="exchange_for_funds", asset="BTC",
                       initiated_at=now - dt.timedelta(days=31, hours=1), channel="email",
                       evidence="ticket CS-1001", verified_by="a.lind", country="FR")
        await store.close()

    asyncio.run(first_grant())
    reused = cli(tmp_path, *grant_args(evidence))
    assert reused.returncode != 0, reused.stdout
    assert "already used" in reused.stderr
    renewal = cli(tmp_path, *grant_args("ticket CS-1002"))
    assert renewal.returncode == 0, renewal.stderr
    assert "renews" in renewal.stderr


@pytest.mark.parametrize("approver", ["a.lind", "A.LIND", "a .lind", "a.\u200blind", "\uff41.lind"])
def test_the_officer_who_recorded_an_override_cannot_approve_it_under_another_spelling(
    tmp_path: Path, approver: str,
) -> None:
    async def solicit() -> None:
        from micafence.records import SolicitationEvidence

        store = open_store(f"file://{tmp_path / 'store.jsonl'}", grant_key=KEY)
        await store.record_solicitation(SolicitationEvidence(
            "carol", dt.datetime.now(dt.UTC) - dt.timedelta(days=3), "eu", "FR",
            "promotions.referral", None))
        await store.close()

    asyncio.run(solicit())
    assert cli(tmp_path, *grant_args("ticket CS-7")).returncode != 0  # solicited: refused
    added = cli(tmp_path, *grant_args("ticket CS-7", "--override-reason", "wrote first"))
    assert added.returncode == 0, added.stderr
    grant_id = added.stdout.split()[0]
    own = cli(tmp_path, "grant", "approve", grant_id, officer=approver)
    assert own.returncode != 0 and "second, different officer" in own.stderr, own.stdout
    other = cli(tmp_path, "grant", "approve", grant_id, officer="b.berg")
    assert other.returncode == 0, other.stderr


# -- a Redis store that comes back without its records ---------------------------------------


def test_a_redis_that_comes_back_empty_never_lets_a_known_eu_client_out(tmp_path: Path) -> None:
    """bob (FR grant) browses from a US address while Redis is killed and restarted at random
    moments, coming back empty each time (no persistence: the production check warned). This
    worker read bob's grant before: it must keep him EU, never serve him as a US visitor."""
    redis = RedisServer(tmp_path)
    port = redis.port
    policy = policy_of()

    async def seed() -> None:
        store = open_store(redis.url, grant_key=KEY)
        await GrantBook(store, policy).add(
            client_id="bob", service="exchange_for_funds", asset="USDC",
            initiated_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), channel="email",
            evidence="ticket bob", verified_by="a.lind", country="FR")
        await store.close()

    asyncio.run(seed())
    fence = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                store=redis.url, grant_key=KEY, watch=False)
    let_out: list[tuple[str, int]] = []
    answered: dict[int, int] = {}
    stop = threading.Event()
    rounds = random.Random(17)  # seeded: the moments vary, the run repeats

    def browse(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                referral = http.get("/r/FRIEND10", headers=as_bob())
                outside = http.post("/api/orders", json=order("ETH-USD"), headers=as_bob())
                feed = http.get("/api/promotions", headers=as_bob())
                for path, status in (("/r/FRIEND10", referral.status_code),
                                     ("/api/orders", outside.status_code)):
                    answered[status] = answered.get(status, 0) + 1
                    if status != 451:
                        let_out.append((path, status))
                if feed.json() != []:
                    let_out.append(("/api/promotions", feed.status_code))

    try:
        with ServerThread(fence) as server:
            browser = threading.Thread(target=browse, args=(server.url,))
            browser.start()
            try:
                time.sleep(0.5)
                for _ in range(3):
                    time.sleep(rounds.uniform(0.05, 0.5))
                    redis.stop()
                    time.sleep(rounds.uniform(0.05, 0.8))
                    redis = RedisServer(tmp_path, port=port)  # back, and empty
                    time.sleep(rounds.uniform(0.3, 1.0))
            finally:
                stop.set()
                browser.join(timeout=30)
    finally:
        redis.stop()
    assert answered.get(451, 0) > 10
    assert let_out == []


# -- an onboarded client: its grants follow its account id -----------------------------------


async def test_a_renewal_under_the_account_id_an_onboarding_token_opened_needs_new_evidence(
) -> None:
    """carol's grant opened account ``acc_1`` with its onboarding token; the app names her by
    that account from then on, so her next grant is recorded for ``acc_1``. The day after the
    first one ends, that grant renews it: last month's ticket is refused, and a new one makes
    a renewal the report can chain."""
    from micafence.grants.onboarding import issue_token

    policy = policy_of()
    store = MemoryStore()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    clock = [start + dt.timedelta(hours=1)]
    book = GrantBook(store, policy, lambda: clock[0])
    first = await book.add(client_id="carol", service="exchange_for_funds", asset="BTC",
                           initiated_at=start, channel="email", evidence="ticket CS-1",
                           verified_by="a.lind", country="FR")
    token, _ = await issue_token(book, first.id, issued_by="a.lind",
                                 ttl=dt.timedelta(minutes=30))
    fence = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                store=store, clock=lambda: clock[0], watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        opened = await http.post("/api/accounts", json={"email": "carol@example.fr"}, headers={
            "X-Forwarded-For": "89.160.20.112", "X-Micafence-Onboarding": token})
    assert opened.status_code == 201 and opened.json()["account_id"] == "acc_1"

    clock[0] = start + dt.timedelta(days=31, hours=1)  # the day after carol's grant ended
    with pytest.raises(GrantError, match="already used"):
        await book.add(client_id="acc_1", service="exchange_for_funds", asset="BTC",
                       initiated_at=clock[0] - dt.timedelta(hours=1), channel="email",
                       evidence="Ticket CS-1", verified_by="a.lind", country="FR")
    renewal = await book.add(client_id="acc_1", service="exchange_for_funds", asset="BTC",
                             initiated_at=clock[0] - dt.timedelta(hours=1), channel="email",
                             evidence="ticket CS-2", verified_by="a.lind", country="FR")
    assert renewal.renewal_of == first.id


async def test_solicitation_linked_to_an_onboarded_client_counts_under_its_account_id() -> None:
    """carol arrived through a referral link, so her onboarding needed an override approved
    by a second officer. The app names her ``acc_1`` from then on: a grant for ``acc_1``
    inside the look-back window is hers, and needs an override too."""
    from micafence.grants.onboarding import issue_token
    from micafence.promotions.solicitation import visitor_id

    policy = policy_of()
    store = MemoryStore()
    start = dt.datetime.now(dt.UTC)  # solicitation evidence is stamped with the real time
    clock = [start]
    book = GrantBook(store, policy, lambda: clock[0])
    fence = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                store=store, clock=lambda: clock[0], watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    sweden = {"X-Forwarded-For": "89.160.20.112", "Accept": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        arrival = await http.get("/r/FRIEND10", headers=sweden)
        cookie = visitor_id([(b"cookie", arrival.headers["set-cookie"].encode())],
                            "micafence_visitor")
        assert arrival.status_code == 451 and cookie is not None
        await asyncio.sleep(0.3)  # the evidence is written in the background

        clock[0] = start + dt.timedelta(hours=2)
        fields: dict[str, Any] = dict(
            client_id="carol", service="exchange_for_funds", asset="BTC",
            initiated_at=start - dt.timedelta(hours=1), channel="email",
            evidence="ticket CS-1", country="FR")
        plain = await book.add(**fields, verified_by="a.lind")
        token, _ = await issue_token(book, plain.id, issued_by="a.lind",
                                     ttl=dt.timedelta(minutes=30))
        refused = await http.post("/api/accounts", json={"email": "c@example.fr"}, headers={
            **sweden, "X-Micafence-Onboarding": token, "Cookie": f"micafence_visitor={cookie}"})
        assert refused.headers["micafence-reason"] == "eu.onboarding.solicited"  # and linked
        await book.revoke(plain.id, revoked_by="a.lind", reason="solicited")
        override = await book.add(**{**fields, "evidence": "ticket CS-1 (call back)"},
                                  verified_by="a.lind", override_solicitation="wrote first")
        await book.approve(override.id, approved_by="b.berg")
        token, _ = await issue_token(book, override.id, issued_by="b.berg",
                                     ttl=dt.timedelta(minutes=30))
        opened = await http.post("/api/accounts", json={"email": "c@example.fr"}, headers={
            **sweden, "X-Micafence-Onboarding": token, "Cookie": f"micafence_visitor={cookie}"})
        assert opened.status_code == 201 and opened.json()["account_id"] == "acc_1"

    clock[0] = start + dt.timedelta(days=31, hours=2)
    with pytest.raises(GrantError, match="was solicited within the look-back window"):
        await book.add(client_id="acc_1", service="exchange_for_funds", asset="BTC",
                       initiated_at=clock[0] - dt.timedelta(hours=1), channel="email",
                       evidence="ticket CS-2", verified_by="a.lind", country="FR")


# -- micafence explain --client against the live middleware ----------------------------------


def test_explain_without_the_grant_key_says_it_cannot_verify_what_the_middleware_ignores(
    tmp_path: Path,
) -> None:
    """zoe's signed registry record says FR; a writer to the file appends an unsigned "US"
    record. The middleware (with the key) ignores it and keeps zoe EU. ``explain --client``
    run without the key must not quietly say she passes."""
    store = tmp_path / "store.jsonl"
    assert cli(tmp_path, "client", "set", "--client", "zoe", "--residence", "FR",
               "--evidence", "kyc/1").returncode == 0
    forged = {"event": "residence", "client_id": "zoe", "country": "US", "evidence": "x",
              "recorded_by": "x", "recorded_at": "2999-01-01T00:00:00+00:00"}
    with store.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(forged) + "\n")
    site = Site(tmp_path)
    with site as http:
        live = http.get("/r/FRIEND10", headers=[("X-Forwarded-For", US), ("X-Client-Id", "zoe")])
    assert live.status_code == 451

    env = {k: v for k, v in os.environ.items() if not k.startswith("MICAFENCE_GRANT_KEY")}
    explained = subprocess.run(
        [MICAFENCE, "explain", "--ip", US, "--path", "/r/FRIEND10", "--client", "zoe",
         "--store", f"file://{store}"], capture_output=True, text=True, env=env, timeout=60,
        check=False)
    says_pass = "decision   PASS" in explained.stdout
    warned = "not verified" in explained.stderr
    assert not says_pass or warned, explained.stdout + explained.stderr
    with_key = subprocess.run(
        [MICAFENCE, "explain", "--ip", US, "--path", "/r/FRIEND10", "--client", "zoe",
         "--store", f"file://{store}"], capture_output=True, text=True,
        env={**env, "MICAFENCE_GRANT_KEY": KEY_TEXT}, timeout=60, check=False)
    assert "decision   BLOCK" in with_key.stdout and "registry:FR" in with_key.stdout


# -- websockets ----------------------------------------------------------------------------------


def _websocket_sign_up_app() -> Starlette:
    async def sign_up(websocket: WebSocket) -> None:  # an account opened over a websocket
        await websocket.accept()
        await websocket.send_text("opened")
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/api/accounts", sign_up)])


@pytest.mark.parametrize(("residence", "target"), [
    ("{from: query, name: cc}", "/api/accounts?cc=FR"),  # declared in the query
    ("{from: body, name: country}", "/api/accounts"),     # a handshake has no body to read
])
def test_a_websocket_to_a_declaring_sign_up_route_is_not_an_undeclared_sign_up(
    residence: str, target: str,
) -> None:
    policy = policy_of(("residence: {from: body, name: country}", f"residence: {residence}"))
    fence = MicafenceMiddleware(_websocket_sign_up_app(), policy=policy, geoip_db=COUNTRY_DB,
                                watch=False)
    with ServerThread(fence) as server:
        url = server.url.replace("http", "ws") + target
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, additional_headers={"X-Forwarded-For": US}, open_timeout=5)
        assert refused.value.response.status_code == 451
        if "cc=" in target:  # declaring the US: a US visitor's handshake completes
            with ws_connect(url.replace("cc=FR", "cc=US"),
                            additional_headers={"X-Forwarded-For": US}, open_timeout=5) as ws:
                assert ws.recv(timeout=5) == "opened"


# -- an onboarding token presented from a non-EU address ------------------------------------


async def test_an_onboarding_token_used_from_a_us_address_still_binds_the_account() -> None:
    """carol (FR grant) signs up with her onboarding token while travelling: a US address, no
    residence declared. Her sign-up is not blocked, but the token says who she is: the account
    must be bound to her grant, so that it is a known EU client from then on."""
    from micafence.grants.onboarding import issue_token

    policy = policy_of()
    store = MemoryStore()
    book = GrantBook(store, policy)
    grant = await book.add(client_id="carol", service="exchange_for_funds", asset="BTC",
                           initiated_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
                           channel="email", evidence="ticket CS-1", verified_by="a.lind",
                           country="FR")
    token, _ = await issue_token(book, grant.id, issued_by="a.lind",
                                 ttl=dt.timedelta(minutes=30))
    fence = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                store=store, watch=False)
    transport = httpx.ASGITransport(app=fence, client=("127.0.0.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
        opened = await http.post("/api/accounts", json={"email": "carol@example.fr"}, headers={
            "X-Forwarded-For": US, "X-Micafence-Onboarding": token})
        assert opened.status_code == 201
        account = opened.json()["account_id"]
        referral = await http.get("/r/FRIEND10", headers={"X-Forwarded-For": US,
                                                          "X-Client-Id": account})
        assert referral.status_code == 451
        again = await http.post("/api/accounts", json={"email": "carol@example.fr"}, headers={
            "X-Forwarded-For": US, "X-Micafence-Onboarding": token})
        assert again.status_code == 201  # a used token on a US sign-up: as if none was given
    assert (await GrantBook(store, None).get(grant.id)).accounts[0].account_id == account


@pytest.mark.parametrize("value", ["France", "FRA", "F R", "250"])
def test_a_residence_header_that_cannot_be_read_is_the_unknown_country(
    site: Site, value: str,
) -> None:
    """The gateway says where the client lives, in a form micafence cannot read (a name, an
    alpha-3 or numeric code): it may be an EU country, so the unknown country's rules apply."""
    with site as http:
        headers = [("X-Forwarded-For", US), ("X-Client-Residence", value)]
        referral = http.get("/r/FRIEND10", headers=headers)
        assert (referral.status_code, referral.headers.get("micafence-reason")) == (
            451, "unknown_country.promotion")
        readable = [("X-Forwarded-For", US), ("X-Client-Residence", "us")]
        assert http.get("/r/FRIEND10", headers=readable).status_code == 200

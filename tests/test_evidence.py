"""Solicitation evidence that counts (issue 17, items 4 and 5): where a client is established,
the look-back window, arrivals linked to the client, overrides by two officers, solicited
sign-ups, signed evidence, renewals and the report's renewal chains.

The HTTP tests run the demo exchange behind micafence on a memory store (ASGI in-process: no
behaviour here depends on the server); the command-line ones are in
``tests/test_evidence_cli.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, PolicyError
from micafence.audit.log import AuditLog
from micafence.audit.report import GrantFacts, build_report, grants_from_log, renewal_chains
from micafence.errors import GrantError, StoreError
from micafence.grants.arrivals import arrival_cookie, solicitations_of
from micafence.grants.book import GrantBook
from micafence.grants.onboarding import issue_token
from micafence.grants.signing import GrantKey
from micafence.pipeline import dry_pipeline, trial
from micafence.policy.audit import ReportingThresholds
from micafence.policy.lookback import Lookback, parse_lookback
from micafence.policy.model import Policy
from micafence.policy.probe import build_scope
from micafence.promotions.solicitation import visitor_id
from micafence.records import (
    ArrivalLink,
    Grant,
    GrantEvent,
    GrantStatus,
    SolicitationEvidence,
    event_from_json,
    event_to_json,
)
from micafence.store.base import Store
from micafence.store.file_store import FileStore
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.audit_support import policy_with as policy_of
from tests.conftest import COUNTRY_DB
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (a fixture)

SE, CH, US = "89.160.20.112", "2a02:d000::1", "216.160.83.56"
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
COOKIE = "micafence_visitor"
KEY = GrantKey.from_text("evidence-test-key-" + "0" * 32)


POLICY = policy_of()


class Clock:
    """Real time by default (evidence is stamped with the wall clock), moved by tests."""

    def __init__(self, offset: dt.timedelta = dt.timedelta(0)) -> None:
        self.offset = offset

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


def grant_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "client_id": "carol", "service": "exchange_for_funds", "asset": "BTC",
        "initiated_at": dt.datetime.now(dt.UTC) - HOUR, "channel": "email",
        "evidence": "ticket CS-3003", "verified_by": "a.lind", "country": "FR",
    }
    fields.update(changes)
    return fields


def evidence(subject: str, at: dt.datetime, route: str | None = "referral") -> SolicitationEvidence:
    return SolicitationEvidence(subject, at, "eu", "SE", route, None)


class Exchange:
    """The demo exchange behind micafence, with a grant book on the same store."""

    def __init__(self, store: Store | None = None, policy: Policy = POLICY,
                 audit: AuditLog | None = None) -> None:
        self.store = store or MemoryStore()
        self.clock = Clock()
        self.app = MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=COUNTRY_DB,
                                       store=self.store, clock=self.clock, audit=audit)
        self.book = GrantBook(self.store, policy, self.clock)

    async def request(self, method: str, path: str, ip: str = SE, body: Any = None,
                      cookie: str | None = None, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 4000))
        sent = {"X-Forwarded-For": ip, "Accept": "application/json",
                **{k.replace("_", "-"): v for k, v in headers.items()}}
        if cookie is not None:
            sent["Cookie"] = f"{COOKIE}={cookie}"
        async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
            return await http.request(method, path, json=body, headers=sent)

    async def referral_arrival(self) -> str:
        """An anonymous Swedish visitor follows a referral link: the cookie it is given."""
        answer = await self.request("GET", "/r/FRIEND10")
        assert answer.status_code == 451
        cookie = visitor_id([(b"cookie", answer.headers["set-cookie"].encode())], COOKIE)
        assert cookie is not None
        return cookie

    async def sign_up(self, token: str, cookie: str | None) -> tuple[int, str]:
        answer = await self.request("POST", "/api/accounts", body={"email": "c@example.fr"},
                                    cookie=cookie, X_Micafence_Onboarding=token)
        data = answer.json()
        return answer.status_code, data.get("reason") or data.get("account_id")

    async def links(self, client: str) -> list[ArrivalLink]:
        return [e for e in await self.store.grant_events(client) if isinstance(e, ArrivalLink)]


# -- where the client is established ----------------------------------------------------------


@pytest.mark.parametrize(("country", "message"), [
    pytest.param(None, "the country where the client is established is required", id="missing"),
    pytest.param(" ", "the country where the client is established is required", id="blank"),
    pytest.param("France", "'France' is not an ISO 3166-1 alpha-2 code", id="a-name"),
    pytest.param("XX", "'XX' is not an ISO 3166-1 alpha-2 code", id="not-a-country"),
])
async def test_a_new_grant_names_where_the_client_is_established(
    country: str | None, message: str
) -> None:
    book = GrantBook(MemoryStore(), POLICY)
    with pytest.raises(GrantError, match=message):
        await book.add(**grant_fields(country=country))
    assert (await book.add(**grant_fields(country="fr"))).country == "FR"


def test_a_grant_recorded_before_countries_still_reads() -> None:
    grant = Grant("grt_old", "carol", "exchange_for_funds", "BTC",
                  dt.datetime(2025, 1, 1, tzinfo=dt.UTC), "email", "CS-1", "a.lind",
                  dt.datetime(2025, 1, 1, 1, tzinfo=dt.UTC), 30 * DAY, DAY, "sha256:x")
    record = event_to_json(grant)
    del record["country"], record["solicitation_override"], record["solicitations_seen"]
    assert event_from_json(record) == grant
    assert "renewal_of" not in record  # a first grant's record is as it always was


# -- the look-back window -----------------------------------------------------------------------


def test_lookback_counts_calendar_months() -> None:
    end = dt.datetime(2025, 3, 31, 12, tzinfo=dt.UTC)
    assert parse_lookback("P12M").start(end) == dt.datetime(2024, 3, 31, 12, tzinfo=dt.UTC)
    assert parse_lookback("P1M").start(end) == dt.datetime(2025, 2, 28, 12, tzinfo=dt.UTC)
    assert parse_lookback("P1Y6M").start(end) == dt.datetime(2023, 9, 30, 12, tzinfo=dt.UTC)
    assert parse_lookback("P90D").start(end) == end - 90 * DAY
    assert parse_lookback("PT12M").start(end) == end - dt.timedelta(minutes=12)  # minutes
    assert str(parse_lookback("P1Y")) == "P12M" and POLICY.promotions.solicitation_lookback == \
        Lookback(months=12)


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("12M", "is not an ISO 8601 period", id="no-P"),
    pytest.param("P0M", "must be longer than zero", id="zero"),
    pytest.param("P200Y", "at most 100 years", id="too-long"),
    pytest.param("[P12M]", "expected a non-empty string", id="not-text"),
])
def test_a_bad_lookback_names_the_key_and_line(value: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(("promotions:\n", f"promotions:\n  solicitation_lookback: {value}\n"))
    assert caught.value.key_path == "promotions.solicitation_lookback"
    assert caught.value.line is not None and message in str(caught.value)


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("P1M", "years and months are not allowed", id="months"),
    pytest.param("soon", "is not an ISO 8601 duration", id="words"),
])
def test_a_bad_renewal_window_names_the_key_and_line(value: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_of(("scopes:\n", f"scopes:\n  renewal_window: {value}\n"))
    assert caught.value.key_path == "scopes.renewal_window"
    assert message in str(caught.value)
    assert policy_of().grant_store.renewal_window == 90 * DAY  # the documented default


async def test_evidence_counts_only_inside_the_lookback_window() -> None:
    """Evidence 13 months before the client's approach no longer refuses; 11 months does."""
    store = MemoryStore()
    initiated = dt.datetime.now(dt.UTC) - HOUR
    book = GrantBook(store, POLICY)
    await store.record_solicitation(evidence("carol", initiated - 400 * DAY))
    first = await book.add(**grant_fields(initiated_at=initiated))
    assert (first.solicitation_override, first.solicitations_seen) == (None, 0)
    await store.record_solicitation(evidence("dave", initiated - 330 * DAY))
    with pytest.raises(GrantError, match=r"dave was solicited within the look-back window "
                                         r"\(promotions.solicitation_lookback P12M"):
        await book.add(**grant_fields(client_id="dave", initiated_at=initiated))
    # A shorter window (policy) lets dave's approach count as his own.
    short = GrantBook(store, policy_of(("promotions:\n",
                                        "promotions:\n  solicitation_lookback: P6M\n")))
    assert (await short.add(**grant_fields(client_id="dave", initiated_at=initiated))).id


async def test_an_override_needs_something_to_override() -> None:
    book = GrantBook(MemoryStore(), POLICY)
    with pytest.raises(GrantError, match="nothing to override"):
        await book.add(**grant_fields(), override_solicitation="client called first")


# -- linked arrivals, overrides and the second officer ------------------------------------------


async def test_a_linked_arrival_refuses_until_a_second_officer_approves_an_override() -> None:
    store = MemoryStore()
    now = dt.datetime.now(dt.UTC)
    await store.record_solicitation(evidence("cookie:" + "v" * 22, now - 3 * DAY))
    await store.append_grant_event(ArrivalLink("carol", "cookie:" + "v" * 22, now - 3 * DAY,
                                               now - 2 * DAY, "referral"))
    book = GrantBook(store, POLICY)
    with pytest.raises(GrantError, match=r"1 solicited arrival\(s\), first .* via referral "
                                         r"\(arrival cookie:v+, linked "):
        await book.add(**grant_fields())
    grant = await book.add(**grant_fields(), override_solicitation="phoned us first: CALL-9")
    assert (grant.approval_required, grant.solicitations_seen) == (True, 1)
    # Not in force, and no token, until another officer approves.
    with pytest.raises(GrantError, match="pending: approve it first"):
        await issue_token(book, grant.id, issued_by="a.lind", ttl=HOUR)
    with pytest.raises(GrantError, match="a second, different officer must approve it"):
        await book.approve(grant.id, approved_by="A.Lind")
    approval = await book.approve(grant.id, approved_by="b.ops")
    assert (approval.approved_by, (await book.get(grant.id)).status(book.clock())) == (
        "b.ops", GrantStatus.ACTIVE)
    token, ticket = await issue_token(book, grant.id, issued_by="b.ops", ttl=HOUR)
    assert token.startswith("mot_") and ticket.client_id == "carol"


async def test_a_token_is_refused_for_evidence_the_grant_did_not_override() -> None:
    store = MemoryStore()
    book = GrantBook(store, POLICY)
    plain = await book.add(**grant_fields())
    # Evidence arrives after the grant (the client's cookie is linked later).
    now = dt.datetime.now(dt.UTC)
    await store.record_solicitation(evidence("cookie:" + "w" * 22, now - DAY))
    await store.append_grant_event(ArrivalLink("carol", "cookie:" + "w" * 22, now - DAY,
                                               now, "referral"))
    with pytest.raises(GrantError, match=f"that grant {plain.id} did not override.*no "
                                         "onboarding token"):
        await issue_token(book, plain.id, issued_by="a.lind", ttl=HOUR)
    # An approved override covers what was known when it was recorded...
    book.clock = Clock(dt.timedelta(minutes=1))
    covering = await book.add(**grant_fields(evidence="ticket CS-3004"),
                              override_solicitation="called first")
    await book.approve(covering.id, approved_by="b.ops")
    assert (await issue_token(book, covering.id, issued_by="b.ops", ttl=HOUR))[0]
    # ... not a later solicitation.
    await store.record_solicitation(evidence("carol", book.clock() + dt.timedelta(minutes=1)))
    book.clock = Clock(dt.timedelta(minutes=2))
    with pytest.raises(GrantError, match="1 solicited arrival"):
        await issue_token(book, covering.id, issued_by="b.ops", ttl=HOUR)


def test_the_fast_cookie_reader_agrees_with_the_cookie_jar() -> None:
    good = "AbC_-" + "x" * 17
    for header in (f"{COOKIE}={good}", f"a=b; {COOKIE}={good}; c=d", f'{COOKIE}="{good}"',
                   f"x{COOKIE}={good}", f"{COOKIE}=short", f"{COOKIE}={good}!", "",
                   f"{COOKIE}={'y' * 65}", f"a=b;{COOKIE}={good}"):
        headers = [(b"cookie", header.encode())]
        assert arrival_cookie(headers, COOKIE.encode()) == visitor_id(headers, COOKIE), header


async def test_a_signed_in_arrival_cookie_is_linked_once() -> None:
    exchange = Exchange()
    cookie = await exchange.referral_arrival()
    # carol signs in later, from the US: the arrival is linked to her.
    page = await exchange.request("GET", "/", ip=US, cookie=cookie, X_Client_Id="carol")
    assert page.status_code == 200
    [link] = await exchange.links("carol")
    assert (link.subject, link.marker) == ("cookie:" + cookie, "promotions.referral")
    [recorded] = await exchange.store.solicitations("cookie:" + cookie)
    assert link.solicited_at == recorded.at
    # The same pair again, in this process or another (a fresh middleware): no second link.
    await exchange.request("GET", "/", ip=US, cookie=cookie, X_Client_Id="carol")
    other = Exchange(exchange.store)
    await other.request("GET", "/markets", ip=CH, cookie=cookie, X_Client_Id="carol")
    assert len(await exchange.links("carol")) == 1
    # Its evidence now counts against carol.
    [found] = await solicitations_of(exchange.store, "carol", link.solicited_at - DAY)
    assert found.link == link
    with pytest.raises(GrantError, match="carol was solicited"):
        await exchange.book.add(**grant_fields())


async def test_no_link_without_evidence_or_identity_and_none_from_a_dry_run() -> None:
    exchange = Exchange()
    quiet = "q" * 22  # a cookie with no evidence under it
    await exchange.request("GET", "/", ip=US, cookie=quiet, X_Client_Id="dave")
    cookie = await exchange.referral_arrival()
    await exchange.request("GET", "/", ip=US, cookie=cookie)  # anonymous: nobody to link
    scope = build_scope(US, "GET", "/", [("X-Client-Id", "erin"),
                                         ("Cookie", f"{COOKIE}={cookie}")])
    await trial(exchange.app.enforcer, dry_pipeline(exchange.store), scope)  # explain
    for client in ("dave", "erin"):
        assert await exchange.links(client) == []
    assert len(await exchange.store.grant_events()) == 0


class LinkFailingStore(MemoryStore):
    async def append_grant_event(self, event: GrantEvent) -> int:
        if isinstance(event, ArrivalLink):
            raise StoreError("store down")
        return await super().append_grant_event(event)


async def test_a_failing_store_never_fails_a_signed_in_request(
    caplog: pytest.LogCaptureFixture
) -> None:
    exchange = Exchange(LinkFailingStore())
    cookie = await exchange.referral_arrival()
    with caplog.at_level(logging.ERROR, logger="micafence.grants.arrivals"):
        page = await exchange.request("GET", "/", ip=US, cookie=cookie, X_Client_Id="carol")
    assert page.status_code == 200
    assert f"could not link arrival cookie:{cookie} to client carol" in caplog.text


# -- sign-ups with a token and a solicited cookie ------------------------------------------------


async def test_a_token_with_a_solicited_cookie_gets_451_and_links_the_arrival() -> None:
    exchange = Exchange()
    cookie = await exchange.referral_arrival()
    grant = await exchange.book.add(**grant_fields())  # carol's cookie is not linked yet
    token, _ = await issue_token(exchange.book, grant.id, issued_by="a.lind", ttl=HOUR)
    assert await exchange.sign_up(token, cookie) == (451, "eu.onboarding.solicited")
    answer = await exchange.request("POST", "/api/accounts", body={"email": "c@example.fr"},
                                    cookie=cookie, X_Micafence_Onboarding=token)
    assert answer.json()["reason"] == "eu.onboarding.invalid_token"  # the token was spent
    assert [link.subject for link in await exchange.links("carol")] == ["cookie:" + cookie]
    # From now on carol's grants and tokens need an approved override.
    with pytest.raises(GrantError, match="carol was solicited"):
        await exchange.book.add(**grant_fields(evidence="ticket CS-3005"))
    with pytest.raises(GrantError, match="did not override"):
        await issue_token(exchange.book, grant.id, issued_by="a.lind", ttl=HOUR)
    exchange.book.clock = exchange.clock = Clock(dt.timedelta(seconds=1))
    override = await exchange.book.add(**grant_fields(evidence="ticket CS-3005"),
                                       override_solicitation="called first: CALL-9")
    await exchange.book.approve(override.id, approved_by="b.ops")
    token, _ = await issue_token(exchange.book, override.id, issued_by="b.ops", ttl=HOUR)
    assert await exchange.sign_up(token, cookie) == (201, "acc_1")


async def test_the_decision_log_records_the_solicited_sign_up(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, key="audit-key-" + "0" * 30)
    exchange = Exchange(audit=log)
    cookie = await exchange.referral_arrival()
    grant = await exchange.book.add(**grant_fields())
    token, _ = await issue_token(exchange.book, grant.id, issued_by="a.lind", ttl=HOUR)
    assert await exchange.sign_up(token, cookie) == (451, "eu.onboarding.solicited")
    await log.aclose()
    records = [json.loads(line) for path in sorted(tmp_path.glob("audit.*.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines()]
    refused = [r["data"] for r in records if r.get("event") == "solicitation.onboarding_refused"]
    assert [(r["grant_id"], r["client_id"], r["subject"]) for r in refused] == [
        (grant.id, "carol", "cookie:" + cookie)]
    blocked = [r for r in records if r.get("reason") == "eu.onboarding.solicited"]
    assert [(r["route_class"], r["blocked"]) for r in blocked] == [("account_creation", True)]
    assert not [r for r in records if r.get("event") == "onboarding.token_used"]


async def test_a_token_without_a_solicited_cookie_opens_the_account() -> None:
    store = MemoryStore()
    exchange = Exchange(store)
    old = "o" * 22
    await store.record_solicitation(evidence("cookie:" + old, dt.datetime.now(dt.UTC) - 400 * DAY))
    for cookie in (None, "n" * 22, old):  # none, one with no evidence, evidence out of window
        grant = await exchange.book.add(**grant_fields(evidence=f"ticket {cookie}"))
        token, _ = await issue_token(exchange.book, grant.id, issued_by="a.lind", ttl=HOUR)
        status, _ = await exchange.sign_up(token, cookie)
        assert status == 201, cookie
    assert await exchange.links("carol") == []


class EvidenceFailingStore(MemoryStore):
    failing = False

    async def solicitations(self, subject: str) -> list[SolicitationEvidence]:
        if self.failing:
            raise StoreError("store down")
        return await super().solicitations(subject)


async def test_a_store_failing_on_the_cookie_fails_closed_and_leaves_the_token() -> None:
    store = EvidenceFailingStore()
    exchange = Exchange(store)
    grant = await exchange.book.add(**grant_fields())
    token, _ = await issue_token(exchange.book, grant.id, issued_by="a.lind", ttl=HOUR)
    store.failing = True
    assert await exchange.sign_up(token, "c" * 22) == (451, "eu.store_unavailable")
    store.failing = False
    assert await exchange.sign_up(token, "c" * 22) == (201, "acc_1")  # not spent


# -- signed evidence ------------------------------------------------------------------------------


async def test_evidence_is_signed_and_unverified_evidence_still_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "grants.jsonl"
    at = dt.datetime.now(dt.UTC) - DAY
    await FileStore(path, key=KEY).record_solicitation(evidence("carol", at))
    [line] = path.read_text().splitlines()
    signed = json.loads(line)
    assert signed["key_id"] == KEY.key_id and len(signed["mac"]) == 64
    # Written before evidence was signed, or altered: logged, and it still refuses.
    legacy = {k: v for k, v in signed.items() if k not in ("key_id", "mac")} | {
        "subject": "dave"}
    altered = signed | {"subject": "erin"}
    with path.open("a") as handle:
        handle.write(json.dumps(legacy) + "\n" + json.dumps(altered) + "\n")
    with caplog.at_level(logging.WARNING, logger="micafence"):
        store = FileStore(path, key=KEY)
    assert f"{path}:2" in caplog.text and "(unsigned); it still counts" in caplog.text
    assert f"{path}:3" in caplog.text and "the record was altered" in caplog.text
    assert f"{path}:1" not in caplog.text
    book = GrantBook(store, POLICY)
    for client in ("carol", "dave", "erin"):
        with pytest.raises(GrantError, match=f"{client} was solicited"):
            await book.add(**grant_fields(client_id=client))


@pytest.mark.redis
async def test_redis_evidence_is_signed(request: pytest.FixtureRequest) -> None:
    import redis.asyncio as aioredis

    from micafence.store.opener import open_store

    server: RedisServer = request.getfixturevalue("redis_server")
    store = open_store(server.url, grant_key=KEY)
    item = evidence("cookie:" + "r" * 22, dt.datetime.now(dt.UTC) - HOUR)
    await store.record_solicitation(item)
    client = aioredis.Redis.from_url(server.url)
    [key] = await client.keys("*solicitations*")
    [raw] = await client.lrange(key, 0, -1)
    await client.aclose()
    assert KEY.problem(json.loads(raw)) is None
    assert await store.solicitations(item.subject) == [item]
    await store.close()


# -- renewals -------------------------------------------------------------------------------------


class Timeline:
    """A grant book whose clock an officer sets to the day it records each grant."""

    def __init__(self, store: Store | None = None, policy: Policy = POLICY) -> None:
        self.store = store or MemoryStore()
        self.now = dt.datetime.now(dt.UTC) - 200 * DAY
        self.book = GrantBook(self.store, policy, lambda: self.now)

    async def record(self, at: dt.datetime, evidence_ref: str, **changes: Any) -> Grant:
        """A client approach at ``at``, recorded an hour later."""
        self.now = at + HOUR
        return await self.book.add(**grant_fields(initiated_at=at, evidence=evidence_ref,
                                                  **changes))


async def test_a_renewal_the_day_after_expiry_needs_new_evidence() -> None:
    line = Timeline()
    start = line.now
    first = await line.record(start, "ticket CS-1")
    assert first.renewal_of is None
    with pytest.raises(GrantError, match=f"this grant renews {first.id} .* a renewal needs "
                                         "evidence of the client's new approach, but evidence "
                                         f"'Ticket  CS-1' was already used by grant {first.id}"):
        await line.record(start + 31 * DAY, "Ticket  CS-1")
    renewal = await line.record(start + 31 * DAY, "ticket CS-2")
    assert renewal.renewal_of == first.id
    # Another asset asked for in the same new approach shares its evidence.
    sibling = await line.record(start + 31 * DAY, "ticket CS-2", asset="ETH")
    assert sibling.renewal_of == first.id
    # Another service is another relationship.
    other = await line.record(start + 32 * DAY, "ticket CS-2", service="custody")
    assert other.renewal_of is None
    # Past the renewal window (P90D after the last one ended), the old evidence may be cited.
    late = await line.record(start + 31 * DAY + 30 * DAY + 91 * DAY, "ticket CS-1")
    assert late.renewal_of is None


async def test_a_renewal_while_the_previous_grant_runs_or_after_its_revocation() -> None:
    line = Timeline()
    first = await line.record(line.now, "ticket CS-1")
    with pytest.raises(GrantError, match="already used"):  # a day later, still running
        await line.record(line.now + DAY, "ticket CS-1")
    await line.book.revoke(first.id, revoked_by="b.ops", reason="closed")
    renewal = await line.record(line.now + 60 * DAY, "ticket CS-9")  # 60 d after revocation
    assert renewal.renewal_of == first.id


async def test_a_renewal_is_flagged_in_its_signed_record(tmp_path: Path) -> None:
    line = Timeline(FileStore(tmp_path / "grants.jsonl", key=KEY))
    first = await line.record(line.now, "ticket CS-1")
    renewal = await line.record(line.now + 31 * DAY, "ticket CS-2")
    reread = FileStore(tmp_path / "grants.jsonl", key=KEY)
    states = await GrantBook(reread, None).list("carol")
    assert [s.grant.renewal_of for s in states] == [None, first.id]
    assert states[1].as_dict(line.now)["renewal_of"] == first.id
    records = [json.loads(x) for x in (tmp_path / "grants.jsonl").read_text().splitlines()]
    assert "renewal_of" not in records[0] and records[1]["renewal_of"] == first.id
    assert renewal.id == records[1]["id"]


# -- the report counts renewal chains as one relationship ----------------------------------------


def facts(grant: Grant, revoked: bool = False) -> GrantFacts:
    return GrantFacts(grant.id, grant.recorded_at, grant.initiated_at, grant.expires_at,
                      revoked, grant.client_id, grant.service, grant.renewal_of)


async def test_a_client_renewed_three_times_is_long_running() -> None:
    line = Timeline()
    start = line.now
    chain = [await line.record(start + n * 31 * DAY, f"ticket CS-{n}") for n in range(4)]
    assert [g.renewal_of for g in chain] == [None] + [g.id for g in chain[:3]]
    # Four other clients, one 30-day grant each, recorded at the same time as carol's last.
    others = [await line.record(start + 93 * DAY, "ticket", client_id=f"c-{n}")
              for n in range(4)]
    now = line.now + DAY
    thresholds = ReportingThresholds(long_running_grant=90 * DAY, max_long_running_grants=0)
    report = build_report([], [facts(g) for g in chain + others], thresholds, now=now)
    assert (report.active_grants, report.active_relationships, report.renewals,
            report.long_running_grants) == (5, 5, 3, 1)
    assert report.warnings == [
        "1 long-running client relationships: active grants that, with the grants they renew, "
        "began more than 90 days ago (threshold 0)"]
    # Without the chain, no 30-day grant is ever older than 90 days.
    unchained = [GrantFacts(g.id, g.recorded_at, g.initiated_at, g.expires_at, False)
                 for g in chain]
    assert build_report([], unchained, thresholds, now=now).long_running_grants == 0


def test_grants_recorded_before_renewals_were_flagged_are_chained_too() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    old = [GrantFacts(f"g{n}", start + n * 31 * DAY + HOUR, start + n * 31 * DAY,
                      start + n * 31 * DAY + 30 * DAY, False, "carol", "exchange_for_funds")
           for n in range(4)]
    later = GrantFacts("g9", start + 400 * DAY, start + 399 * DAY, start + 429 * DAY, False,
                       "carol", "exchange_for_funds")  # back after a long pause: a new one
    chains = renewal_chains([*old, later], 90 * DAY)
    assert [[g.grant_id for g in chain] for chain in chains] == [
        ["g0", "g1", "g2", "g3"], ["g9"]]
    assert [len(c) for c in renewal_chains(old, 10 * DAY)] == [4]  # a day after each expiry
    assert [len(c) for c in renewal_chains(old, HOUR)] == [1, 1, 1, 1]


def test_the_log_carries_renewals_and_revocation_times() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    grants = [Grant(f"g{n}", "carol", "exchange_for_funds", "BTC", start + n * 31 * DAY,
                    "email", f"CS-{n}", "a.lind", start + n * 31 * DAY + HOUR, 30 * DAY, DAY,
                    "sha256:x", "FR", renewal_of=f"g{n - 1}" if n else None)
             for n in range(2)]
    entries: list[dict[str, Any]] = [
        {"kind": "event", "event": "grant.recorded", "data": event_to_json(g)} for g in grants]
    entries.append({"kind": "event", "event": "grant.revoked", "data": {
        "grant_id": "g1", "client_id": "carol", "revoked_at": (start + 40 * DAY).isoformat(),
        "revoked_by": "b.ops", "reason": "closed"}})
    read = grants_from_log(entries)
    assert [(g.client_id, g.renewal_of, g.revoked) for g in read] == [
        ("carol", None, False), ("carol", "g0", True)]
    assert read[1].ended_at == start + 40 * DAY

"""Onboarding: a verified EU client opens its account exactly once, with a grant's token.

The demo exchange (its ``POST /api/accounts`` answers 201 with ``X-Account-Id`` and a JSON
``account_id``) behind micafence with a memory store and a clock the test moves. A Swedish
visitor comes through the trusted local proxy. The race between two app instances on one Redis
is in ``tests/test_redis_instances.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence import MicafenceMiddleware, load_policy_text
from micafence.audit.log import AuditLog
from micafence.errors import GrantError, PolicyError, StoreError
from micafence.grants.book import GrantBook
from micafence.grants.onboarding import issue_token
from micafence.policy.model import Policy
from micafence.records import AccountBinding, OnboardingTicket
from micafence.store.base import Store
from micafence.store.memory import MemoryStore
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY

SE, CH = "89.160.20.112", "2a02:d000::1"
T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
MINUTE, HOUR = dt.timedelta(minutes=1), dt.timedelta(hours=1)
TTL = 30 * MINUTE


class Clock:
    def __init__(self) -> None:
        self.now = T0 + HOUR

    def __call__(self) -> dt.datetime:
        return self.now


def policy_of(*edits: tuple[str, str]) -> Policy:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return load_policy_text(text, "test-policy.yaml")


class Exchange:
    """The demo exchange behind micafence, a grant book on its store, and a moving clock."""

    def __init__(self, policy: Policy | None = None, store: Store | None = None) -> None:
        self.clock = Clock()
        self.store = store or MemoryStore()
        self.policy = policy or policy_of()
        self.app = MicafenceMiddleware(build_demo_app(), policy=self.policy, geoip_db=COUNTRY_DB,
                                       store=self.store, clock=self.clock)
        self.book = GrantBook(self.store, self.policy, self.clock)

    async def grant(self, client: str = "carol", asset: str = "BTC") -> str:
        grant = await self.book.add(
            client_id=client, service="exchange_for_funds", asset=asset, initiated_at=T0,
            channel="email", evidence="ticket CS-3003", verified_by="a.lind", country="FR")
        return grant.id

    async def token(self, grant_id: str) -> str:
        token, _ = await issue_token(self.book, grant_id, issued_by="a.lind", ttl=TTL)
        return token

    async def post(self, path: str, body: Any, ip: str = SE, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as http:
            return await http.post(path, json=body, headers={
                "X-Forwarded-For": ip, "Accept": "application/json",
                **{k.replace("_", "-"): v for k, v in headers.items()}})

    async def sign_up(self, token: str | None, ip: str = SE, email: str = "c@example.fr"
                      ) -> tuple[int, str]:
        extra = {"X_Micafence_Onboarding": token} if token is not None else {}
        answer = await self.post("/api/accounts", {"email": email}, ip, **extra)
        return answer.status_code, answer.json().get("reason") or answer.json().get("account_id")

    async def order(self, client: str, pair: str) -> tuple[int, str]:
        answer = await self.post("/api/orders", {"pair": pair, "side": "buy", "amount": "1"},
                                 X_Client_Id=client)
        return answer.status_code, answer.json().get("reason", "")


async def test_a_token_opens_one_account_which_then_holds_the_grant() -> None:
    exchange = Exchange()
    grant_id = await exchange.grant()
    token = await exchange.token(grant_id)
    assert await exchange.sign_up(None) == (451, "eu.account_creation")
    assert await exchange.sign_up(token) == (201, "acc_1")
    again = await exchange.post("/api/accounts", {"email": "c@example.fr"},
                                X_Micafence_Onboarding=token)
    assert (again.status_code, again.json()["reason"], again.json()["detail"]) == (
        451, "eu.onboarding.invalid_token",
        "This onboarding token is not valid: it is unknown, used or expired.")
    # The new account is bound to the grant with a record, and holds exactly that scope.
    history = await exchange.store.grant_events("carol")
    assert history[-1] == AccountBinding(grant_id, "carol", "acc_1", exchange.clock.now)
    assert await exchange.order("acc_1", "BTC-EUR") == (201, "")
    assert await exchange.order("acc_1", "ETH-EUR") == (451, "eu.out_of_scope.asset_type")
    assert await exchange.order("acc_2", "BTC-EUR") == (451, "eu.no_grant")
    # Revoking the grant ends the account's scope as well.
    await exchange.book.revoke(grant_id, revoked_by="b.ops", reason="test")
    assert await exchange.order("acc_1", "BTC-EUR") == (451, "eu.no_grant")


@pytest.mark.parametrize(("setup", "token", "reason"), [
    pytest.param("none", "mot_never-issued", "eu.onboarding.invalid_token", id="unknown"),
    pytest.param("none", " ", "eu.onboarding.invalid_token", id="blank"),
    pytest.param("none", "x" * 300, "eu.onboarding.invalid_token", id="too-long"),
    pytest.param("expired", None, "eu.onboarding.invalid_token", id="expired"),
    pytest.param("revoked", None, "eu.onboarding.invalid_token", id="grant-revoked"),
    pytest.param("grant-expired", None, "eu.onboarding.invalid_token", id="grant-expired"),
])
async def test_refused_tokens(setup: str, token: str | None, reason: str) -> None:
    exchange = Exchange()
    grant_id = await exchange.grant()
    issued = await exchange.token(grant_id)
    if setup == "expired":
        exchange.clock.now += TTL
    elif setup == "revoked":
        await exchange.book.revoke(grant_id, revoked_by="b.ops", reason="evidence failed")
    elif setup == "grant-expired":  # the token never outlives the grant's term
        exchange.clock.now = T0 + dt.timedelta(days=30)
    assert await exchange.sign_up(token if token is not None else issued) == (451, reason)
    assert await exchange.store.grant_events("acc_1") == []


async def test_a_token_used_from_an_unrestricted_address_binds_the_account_too() -> None:
    # The token's client (FR) signing up while in Switzerland: not blocked, but it is who the
    # token says, so the account it opens holds the grant (tests/test_attack17.py).
    exchange = Exchange()
    token = await exchange.token(await exchange.grant())
    assert await exchange.sign_up(token, ip=CH) == (201, "acc_1")
    assert await exchange.sign_up(token) == (451, "eu.onboarding.invalid_token")  # used
    assert await exchange.sign_up(None, ip=CH) == (201, "acc_2")  # no token: a Swiss sign-up
    assert [e.account_id for e in await exchange.store.grant_events("carol")
            if isinstance(e, AccountBinding)] == ["acc_1"]


async def test_the_account_id_can_come_from_a_json_field() -> None:
    exchange = Exchange(policy_of(("account_id: {header: x-account-id}",
                                   "account_id: {json: account_id}")))
    token = await exchange.token(await exchange.grant())
    answer = await exchange.post("/api/accounts", {"email": "c@example.fr"},
                                 X_Micafence_Onboarding=token)
    assert (answer.status_code, answer.json()) == (201, {"account_id": "acc_1",
                                                         "email": "c@example.fr"})
    assert answer.headers["content-length"] == str(len(answer.content))
    assert await exchange.order("acc_1", "BTC-EUR") == (201, "")


async def test_a_refused_sign_up_spends_the_token_and_binds_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange = Exchange(policy_of(("account_id: {header: x-account-id}",
                                   "account_id: {header: x-new-account}")))
    token = await exchange.token(await exchange.grant())
    answer = await exchange.post("/api/accounts", {"email": "not-an-address"},
                                 X_Micafence_Onboarding=token)
    assert answer.status_code == 400  # the app said no: nothing to bind
    assert await exchange.sign_up(token) == (451, "eu.onboarding.invalid_token")
    # An app that opens the account without naming it where the policy says is logged.
    caplog.set_level(logging.ERROR, logger="micafence")
    assert await exchange.sign_up(await exchange.token(await exchange.grant("dave"))) == (
        201, "acc_1")
    assert [r.fields["grant_id"] for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "event", None) == "onboarding.unbound"] != []
    assert [e for e in await exchange.store.grant_events() if isinstance(e, AccountBinding)] == []


async def test_the_decision_log_records_the_token_used_and_the_pass(tmp_path: Path) -> None:
    exchange = Exchange()
    log = AuditLog(tmp_path, key="audit-key-" + "0" * 30)
    exchange.app = MicafenceMiddleware(build_demo_app(), policy=exchange.policy,
                                       geoip_db=COUNTRY_DB, store=exchange.store,
                                       clock=exchange.clock, audit=log)
    grant_id = await exchange.grant()
    assert await exchange.sign_up(await exchange.token(grant_id)) == (201, "acc_1")
    await log.aclose()
    records = [json.loads(line) for path in sorted(tmp_path.glob("audit.*.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines()]
    used = [r for r in records if r.get("event") == "onboarding.token_used"]
    passed = [r for r in records if r.get("reason") == "eu.onboarding"]
    assert [(u["data"]["grant_id"], u["data"]["client_id"]) for u in used] == [(grant_id, "carol")]
    assert [(p["grant_id"], p["class"]) for p in passed] == [(grant_id, "evidence")]


class FailingStore(MemoryStore):
    async def take_onboarding_ticket(
        self, token_hash: str, now: dt.datetime
    ) -> OnboardingTicket | None:
        raise StoreError("redis://10.0.0.9:6379/0: connection refused")


async def test_an_unreachable_store_fails_closed() -> None:
    exchange = Exchange(store=FailingStore())
    token = await exchange.token(await exchange.grant())
    assert await exchange.sign_up(token) == (451, "eu.store_unavailable")


async def test_tokens_only_for_active_grants() -> None:
    checked = Exchange(policy_of(("maker_checker: false", "maker_checker: true")))
    pending = await checked.grant()
    with pytest.raises(GrantError, match="is pending: approve it first"):
        await checked.token(pending)
    await checked.book.approve(pending, approved_by="b.ops")
    assert (await checked.token(pending)).startswith("mot_")
    exchange = Exchange()
    revoked = await exchange.grant()
    await exchange.book.revoke(revoked, revoked_by="b.ops", reason="x")
    with pytest.raises(GrantError, match="is revoked"):
        await exchange.token(revoked)
    late = await exchange.grant()
    exchange.clock.now = T0 + dt.timedelta(days=29)
    _, ticket = await issue_token(exchange.book, late, issued_by="a.lind",
                                  ttl=dt.timedelta(days=7))
    assert ticket.expires_at == T0 + dt.timedelta(days=30)  # never after the grant's term


@pytest.mark.parametrize(("section", "message"), [
    pytest.param("onboarding: {token_ttl: P1M}", "years and months are not allowed",
                 id="ttl-months"),
    pytest.param("onboarding: {token_ttl: P8D}", "at most P7D", id="ttl-too-long"),
    pytest.param("onboarding: {account_id: {header: x-a, json: b}}", "exactly one of",
                 id="two-sources"),
    pytest.param("onboarding: {account_id: {cookie: a}}", "unknown key 'cookie'",
                 id="unknown-source"),
    pytest.param("onboarding: {header: 'bad header'}", "is not an HTTP header name",
                 id="bad-header"),
    pytest.param("onboarding: {tokens: 1}", "unknown key 'tokens'", id="unknown-key"),
])
def test_onboarding_policy_errors_name_the_line(section: str, message: str) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    start = text.index("onboarding:\n")
    end = text.index("\n\n", start)
    bad = text[:start] + section + text[end:]
    with pytest.raises(PolicyError) as caught:
        load_policy_text(bad, "exchange.yaml")
    assert message in str(caught.value)
    assert caught.value.line == bad[:start].count("\n") + 1
    assert caught.value.key_path.startswith("onboarding")


@pytest.mark.parametrize(("old", "new", "key_path", "message"), [
    pytest.param("redis_checks: warn", "redis_checks: maybe", "scopes.redis_checks",
                 "'maybe' is not one of: warn, refuse", id="redis-checks"),
    pytest.param("maker_checker: false", "maker_checker: 'yes'", "scopes.maker_checker",
                 "expected true or false", id="maker-checker"),
])
def test_store_policy_keys_are_validated(old: str, new: str, key_path: str, message: str) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.replace(old, new), "exchange.yaml")
    assert (caught.value.key_path, caught.value.line) == (
        key_path, text[:text.index(old)].count("\n") + 1)
    assert message in caught.value.problem

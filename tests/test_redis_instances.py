"""Two app instances on one Redis, under real uvicorn servers, as an exchange runs them.

What a user of the exchange sees: a revocation recorded anywhere is enforced by every instance
within a second (measured), an approval likewise, an onboarding token used twice at once opens
exactly one account, and a Redis outage blocks only what needs a grant, then heals by itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from micafence import MicafenceMiddleware, load_policy_text
from micafence.grants.book import GrantBook
from micafence.grants.onboarding import issue_token
from micafence.grants.signing import GrantKey
from micafence.policy.model import Policy
from micafence.records import AccountBinding
from micafence.store.opener import open_store
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, ServerThread
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.redis, pytest.mark.server]

KEY = GrantKey.from_text("two-instances-test-key-" + "0" * 20)
SE, CH = "89.160.20.112", "2a02:d000::1"


def policy(maker_checker: bool = False) -> Policy:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    if maker_checker:
        text = text.replace("maker_checker: false", "maker_checker: true")
    return load_policy_text(text, "exchange.yaml")


def instance(url: str, checked: bool = False) -> MicafenceMiddleware:
    return MicafenceMiddleware(build_demo_app(), policy=policy(checked), geoip_db=COUNTRY_DB,
                               store=url, grant_key=KEY)


def officer(url: str, action: Callable[[GrantBook], Any], checked: bool = False) -> Any:
    """What a compliance officer does with ``micafence grant``: its own process, own store."""

    async def run() -> Any:
        store = open_store(url, grant_key=KEY)
        try:
            return await action(GrantBook(store, policy(checked)))
        finally:
            await store.close()

    return asyncio.run(run())


def add_grant(client: str = "alice", evidence: str = "ticket CS-1001"
              ) -> Callable[[GrantBook], Any]:
    async def add(book: GrantBook) -> str:
        grant = await book.add(
            client_id=client, service="exchange_for_funds", asset="BTC",
            initiated_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), channel="email",
            evidence=evidence, verified_by="a.lind", country="FR")
        return grant.id

    return add


def order(url: str, client: str) -> tuple[int, str]:
    answer = httpx.post(url + "/api/orders", json={"pair": "BTC-EUR", "side": "buy", "amount": "1"},
                        headers={"X-Forwarded-For": SE, "X-Client-Id": client,
                                 "Accept": "application/json"}, timeout=5)
    return answer.status_code, answer.json().get("reason", "")


def wait_until(check: Callable[[], bool], within: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - started


def test_revocation_is_enforced_by_the_other_instance_within_a_second(redis_url: str) -> None:  # noqa: F811
    grant_id = officer(redis_url, add_grant())
    first, second = instance(redis_url), instance(redis_url)
    with ServerThread(first) as a, ServerThread(second) as b:
        wait_until(lambda: first.store.cache.live and second.store.cache.live)  # type: ignore[attr-defined]
        assert order(a.url, "alice") == (201, "") and order(b.url, "alice") == (201, "")
        assert second.store.cache.get("alice") is not None  # type: ignore[attr-defined]
        timings = []
        officer(redis_url, lambda book: book.revoke(grant_id, revoked_by="b.ops", reason="test"))
        revoked_at = time.monotonic()
        wait_until(lambda: order(b.url, "alice") == (451, "eu.no_grant"), within=2)
        timings.append(time.monotonic() - revoked_at)
        assert order(a.url, "alice") == (451, "eu.no_grant")
        # Again with a fresh grant (a renewal: new evidence), timing only the cache.
        grant_id = officer(redis_url, add_grant(evidence="ticket CS-1002"))
        wait_until(lambda: order(b.url, "alice") == (201, ""))
        officer(redis_url, lambda book: book.revoke(grant_id, revoked_by="b.ops", reason="test"))
        revoked_at = time.monotonic()
        wait_until(lambda: second.store.cache.get("alice") is None, within=2)  # type: ignore[attr-defined]
        timings.append(time.monotonic() - revoked_at)
        assert order(b.url, "alice") == (451, "eu.no_grant")
    print(f"revocation enforced by the other instance after {timings[0] * 1000:.1f} ms "
          f"(cache flushed after {timings[1] * 1000:.1f} ms)")
    assert max(timings) < 1.0


def test_approval_by_a_second_officer_reaches_both_instances(redis_url: str) -> None:  # noqa: F811
    first, second = instance(redis_url, checked=True), instance(redis_url, checked=True)
    with ServerThread(first) as a, ServerThread(second) as b:
        grant_id = officer(redis_url, add_grant(), checked=True)
        assert order(a.url, "alice") == (451, "eu.no_grant")  # pending
        assert order(b.url, "alice") == (451, "eu.no_grant")
        with pytest.raises(Exception, match="a second, different officer"):
            officer(redis_url, lambda book: book.approve(grant_id, approved_by="a.lind"))
        officer(redis_url, lambda book: book.approve(grant_id, approved_by="b.ops"))
        approved_at = time.monotonic()
        took = max(wait_until(lambda: order(b.url, "alice") == (201, ""), within=1),
                   wait_until(lambda: order(a.url, "alice") == (201, ""), within=1))
    assert time.monotonic() - approved_at < 2 and took < 1


def race_sign_ups(urls: list[str], token: str, email: str) -> list[httpx.Response]:
    """One sign-up per URL with the same token, released at the same instant."""
    barrier = threading.Barrier(len(urls))
    answers: list[httpx.Response] = []

    def sign_up(url: str) -> None:
        barrier.wait()
        answers.append(httpx.post(
            url + "/api/accounts", json={"email": email}, timeout=5,
            headers={"X-Forwarded-For": SE, "Accept": "application/json",
                     "X-Micafence-Onboarding": token}))

    threads = [threading.Thread(target=sign_up, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_one_onboarding_token_used_twice_at_once_opens_one_account(redis_url: str) -> None:  # noqa: F811
    grant_id = officer(redis_url, add_grant("carol"))
    first, second = instance(redis_url), instance(redis_url)
    with ServerThread(first) as a, ServerThread(second) as b:
        for round_ in range(5):
            token, _ = officer(redis_url, lambda book: issue_token(
                book, grant_id, issued_by="a.lind", ttl=dt.timedelta(minutes=30)))
            answers = race_sign_ups([a.url, b.url], token, f"c{round_}@example.fr")
            outcomes = sorted((r.status_code, r.json().get("reason", "")) for r in answers)
            assert outcomes == [(201, ""), (451, "eu.onboarding.invalid_token")]
        bound = officer(redis_url, lambda book: book.history(grant_id))
        accounts = [e.account_id for e in bound if isinstance(e, AccountBinding)]
        assert len(accounts) == 5
        # Each new account holds carol's scope on either instance.
        assert {order(url, account)[0] for url in (a.url, b.url) for account in accounts} == {201}


def test_redis_killed_mid_traffic_fails_closed_then_recovers_without_restart(
    redis_server: RedisServer, tmp_path: Path,  # noqa: F811
) -> None:
    url = redis_server.url
    officer(url, add_grant())

    async def persist() -> None:  # as a production Redis would have it on disk
        client = aioredis.Redis.from_url(url)
        await client.save()
        await client.aclose()

    asyncio.run(persist())
    app = instance(url)
    seen: list[tuple[float, str, int, str]] = []
    stop = threading.Event()

    def traffic(base: str) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            while not stop.is_set():
                for kind, method, path, headers, body in (
                    ("grant", "POST", "/api/orders",
                     {"X-Forwarded-For": SE, "X-Client-Id": "alice"},
                     {"pair": "BTC-EUR", "side": "buy", "amount": "1"}),
                    ("browse", "GET", "/", {"X-Forwarded-For": SE}, None),
                    ("swiss-signup", "POST", "/api/accounts", {"X-Forwarded-For": CH},
                     {"email": "s@example.ch"}),
                ):
                    answer = http.request(method, path, headers=headers, json=body)
                    seen.append((time.monotonic(), kind, answer.status_code,
                                 answer.headers.get("micafence-reason", "")))

    with ServerThread(app) as server:
        wait_until(lambda: app.store.cache.live)  # type: ignore[attr-defined]
        worker = threading.Thread(target=traffic, args=(server.url,))
        worker.start()
        try:
            time.sleep(0.5)
            killed_at = time.monotonic()
            redis_server.stop()  # SIGKILL
            time.sleep(1.5)
            restarting_at = time.monotonic()
            restarted = RedisServer(tmp_path, port=redis_server.port)
            restarted_at = time.monotonic()
            try:
                recovered = wait_until(
                    lambda: any(t > restarted_at and k == "grant" and s == 201
                                for t, k, s, _ in seen[-30:]), within=10)
            finally:
                stop.set()
                worker.join()
                restarted.stop()
        finally:
            stop.set()
    grant_answers = [(t, s, r) for t, k, s, r in seen if k == "grant"]
    before = [(s, r) for t, s, r in grant_answers if t < killed_at]
    down = [(s, r) for t, s, r in grant_answers if killed_at + 0.8 < t < restarting_at]
    assert before and set(before) == {(201, "")}
    # While Redis is away (after at most the cache's 0.75 s bound): closed, with its reason.
    assert down and set(down) == {(451, "eu.store_unavailable")}
    # Everything that needs no grant kept working throughout.
    assert {s for _, k, s, _ in seen if k == "browse"} == {200}
    assert {s for _, k, s, _ in seen if k == "swiss-signup"} == {201}
    print(f"grant checks passed again {recovered:.2f} s after Redis came back "
          f"({len(seen)} requests, {len(down)} refused while down)")
    assert recovered < 5

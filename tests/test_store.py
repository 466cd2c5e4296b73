"""The store interface: one test body, run on every backend (``BACKENDS``).

A new backend adds one ``pytest.param(factory, id=..., marks=...)`` row; its factory gets the
test's ``request`` (for fixtures such as a private server) and returns an open, empty store.
Backend-specific behaviour (a file shared between processes) is tested below the table; the
Redis store's own behaviour is in ``tests/test_store_redis.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from micafence.errors import StoreError
from micafence.grants.onboarding import hash_token
from micafence.grants.signing import GrantKey
from micafence.records import (
    AccountBinding,
    Approval,
    Grant,
    OnboardingTicket,
    Revocation,
    SolicitationEvidence,
)
from micafence.store.base import Store
from micafence.store.file_store import FileStore
from micafence.store.memory import MemoryStore
from micafence.store.opener import open_store
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (a fixture)

NOW = dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
MINUTE = dt.timedelta(minutes=1)
KEY = GrantKey.from_text("store-contract-test-key-" + "0" * 16)


def memory_store(request: pytest.FixtureRequest) -> Store:
    return open_store("memory://")


def file_store(request: pytest.FixtureRequest) -> Store:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return open_store(f"file://{tmp_path}/grants.jsonl")


def signed_file_store(request: pytest.FixtureRequest) -> Store:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return open_store(f"file://{tmp_path}/grants.jsonl", grant_key=KEY)


def redis_store(request: pytest.FixtureRequest) -> Store:
    server: RedisServer = request.getfixturevalue("redis_server")
    return open_store(server.url, grant_key=KEY)


BACKENDS = [
    pytest.param(memory_store, id="memory"),
    pytest.param(file_store, id="file"),
    pytest.param(signed_file_store, id="file-signed"),
    pytest.param(redis_store, id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    factory: Callable[[pytest.FixtureRequest], Store] = request.param
    opened = factory(request)
    yield opened
    await opened.close()


def grant(grant_id: str, client: str = "client-7", asset: str = "BTC") -> Grant:
    return Grant(
        id=grant_id, client_id=client, service="exchange_for_funds", asset=asset,
        initiated_at=NOW - DAY, channel="email", evidence="ticket CS-1", verified_by="ops",
        recorded_at=NOW, term=30 * DAY, same_type_window=DAY, policy_revision="sha256:1",
        country="FR", solicitation_override="phoned first", solicitations_seen=1,
    )


async def test_store_contract(store: Store) -> None:
    assert (await store.grant_events(), await store.grant_version()) == ([], 0)
    assert await store.grant_events("client-7") == []

    first, second, other = grant("grt_1"), grant("grt_2", asset="ETH"), grant("grt_3", "c-8")
    versions = [await store.append_grant_event(event) for event in (first, other, second)]
    assert versions == [1, 2, 3]
    revocation = Revocation("grt_1", "client-7", NOW + DAY, "ops", "client asked")
    assert await store.append_grant_event(revocation) == 4

    # Everything comes back equal, oldest first, per client and in all.
    assert await store.grant_events("client-7") == [first, second, revocation]
    assert await store.grant_events("c-8") == [other]
    assert await store.grant_events() == [first, other, second, revocation]
    assert await store.grant_version() == 4

    # Append-only: a grant id is recorded once; the refused append changes nothing.
    with pytest.raises(StoreError, match="grt_2 is already recorded"):
        await store.append_grant_event(grant("grt_2"))
    assert await store.grant_version() == 4

    evidence = SolicitationEvidence("client-7", NOW, "eu", "FR", "promotions.referral",
                                    "ref=FRIEND10")
    anonymous = SolicitationEvidence("cookie:abc", NOW, "eu", None, None, "utm_source=x")
    await store.record_solicitation(evidence)
    await store.record_solicitation(anonymous)
    assert await store.solicitations("client-7") == [evidence]
    assert await store.solicitations("cookie:abc") == [anonymous]
    assert await store.solicitations("c-8") == []
    assert await store.grant_version() == 4  # evidence is not grant history


async def test_approvals_and_bindings_are_history_and_bound_accounts_hold_the_grant(
    store: Store,
) -> None:
    first, other = grant("grt_1"), grant("grt_2", "c-8")
    approval = Approval("grt_1", "client-7", NOW, "b.ops")
    binding = AccountBinding("grt_1", "client-7", "acc_9", NOW + MINUTE)
    for event in (first, other, approval, binding):
        await store.append_grant_event(event)
    # A binding is filed under the grant's client and under the new account.
    assert await store.grant_events("client-7") == [first, approval, binding]
    assert await store.grant_events("acc_9") == [binding]
    assert await store.grant_events() == [first, other, approval, binding]
    # What service checks read: the account holds the grant bound to it, nothing else.
    assert await store.holdings("acc_9") == [binding, first, approval]
    assert await store.holdings("client-7") == [first, approval, binding]
    assert await store.holdings("c-8") == [other]
    assert await store.holdings("nobody") == []
    # A later revocation of the grant reaches the account too.
    revocation = Revocation("grt_1", "client-7", NOW + DAY, "ops", "closed")
    assert await store.append_grant_event(revocation) == 5
    assert await store.holdings("acc_9") == [binding, first, approval, revocation]


async def test_onboarding_tickets_are_taken_once_and_expire(store: Store) -> None:
    def ticket(token: str, lifetime: dt.timedelta = 30 * MINUTE) -> OnboardingTicket:
        return OnboardingTicket(hash_token(token), "grt_1", "client-7", NOW, NOW + lifetime,
                                "a.lind")

    issued, short, raced = ticket("mot_a"), ticket("mot_b", MINUTE), ticket("mot_c")
    for one in (issued, short, raced):
        await store.put_onboarding_ticket(one)
    assert await store.take_onboarding_ticket(hash_token("mot_unknown"), NOW) is None
    assert await store.take_onboarding_ticket(issued.token_hash, NOW + MINUTE) == issued
    assert await store.take_onboarding_ticket(issued.token_hash, NOW + MINUTE) is None
    assert await store.take_onboarding_ticket(short.token_hash, NOW + 2 * MINUTE) is None
    # Of concurrent takes of one ticket, exactly one gets it.
    taken = await asyncio.gather(
        *(store.take_onboarding_ticket(raced.token_hash, NOW) for _ in range(8)))
    assert [one for one in taken if one is not None] == [raced]
    assert await store.grant_version() == 0  # tickets are not grant history


def test_unsupported_store_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="supported: memory://, file://PATH"):
        open_store("ftp://x")
    with pytest.raises(StoreError, match="needs a path"):
        open_store("file://")
    assert isinstance(open_store("MEMORY://"), MemoryStore)


# -- file:// specifics: one file shared by the CLI and a running app ----------------------------


async def test_file_store_is_shared_between_handles_and_survives_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grants.jsonl"
    app_side, cli_side = FileStore(path, recheck=0.05), FileStore(path)
    assert await app_side.grant_events("client-7") == []
    await cli_side.append_grant_event(grant("grt_1"))
    # The app's handle notices within its re-check interval, without being told.
    await asyncio.sleep(0.06)
    assert await app_side.grant_events("client-7") == [grant("grt_1")]
    # An id the other handle recorded is refused here too.
    with pytest.raises(StoreError, match="already recorded"):
        await app_side.append_grant_event(grant("grt_1"))
    reopened = FileStore(path)
    assert await reopened.grant_events() == [grant("grt_1")]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["grant"]


async def test_file_store_reads_a_line_only_once_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "grants.jsonl"
    writer, reader = FileStore(path), FileStore(path, recheck=0)
    await writer.append_grant_event(grant("grt_1"))
    line = path.read_bytes()
    with path.open("ab") as handle:  # another process half-way through writing a record
        handle.write(line.replace(b"grt_1", b"grt_2")[:40])
    assert [e.id for e in await reader.grant_events() if isinstance(e, Grant)] == ["grt_1"]
    with path.open("ab") as handle:
        handle.write(line.replace(b"grt_1", b"grt_2")[40:])
    assert [e.id for e in await reader.grant_events() if isinstance(e, Grant)] == [
        "grt_1", "grt_2"]


async def test_file_store_with_a_bad_line_fails_closed_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "grants.jsonl"
    store = FileStore(path, recheck=0)
    await store.append_grant_event(grant("grt_1"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"event": "revocation", "grant_id": "grt_1"}\n')
    failures: list[str] = []
    store.report_failures_to(failures.append)  # what the middleware's Metrics listens with
    for _ in range(2):  # and keeps failing: it never serves what it read before
        with pytest.raises(StoreError, match=rf"{path}:2: not a micafence record"):
            await store.grant_events("client-7")
    with pytest.raises(StoreError, match=rf"{path}:2"):
        await store.record_solicitation(SolicitationEvidence(
            "cookie:v1", NOW, "eu", "SE", "promotions.referral", None))
    assert failures == ["grant_events", "grant_events", "record_solicitation"]
    with pytest.raises(StoreError, match=rf"{path}:2"):
        FileStore(path)


async def test_a_refused_duplicate_is_no_failure_of_the_store(store: Store) -> None:
    failures: list[str] = []
    store.report_failures_to(failures.append)
    await store.append_grant_event(grant("grt_1"))
    with pytest.raises(StoreError, match="already recorded"):
        await store.append_grant_event(grant("grt_1"))
    assert failures == []


async def test_file_store_ticket_is_taken_once_across_handles(tmp_path: Path) -> None:
    # Two handles stand for two worker processes: the file lock decides, not the asyncio lock.
    path = tmp_path / "grants.jsonl"
    cli, first, second = (FileStore(path, key=KEY, recheck=0) for _ in range(3))
    ticket = OnboardingTicket(hash_token("mot_x"), "grt_1", "client-7", NOW, NOW + DAY, "ops")
    await cli.put_onboarding_ticket(ticket)
    taken = await asyncio.gather(first.take_onboarding_ticket(ticket.token_hash, NOW),
                                 second.take_onboarding_ticket(ticket.token_hash, NOW))
    assert sorted(taken, key=lambda t: t is None) == [ticket, None]
    assert await FileStore(path, key=KEY).take_onboarding_ticket(ticket.token_hash, NOW) is None
    # Only the hash is on disk, never the token.
    assert "mot_x" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("backend", [
    pytest.param("file"), pytest.param("redis", marks=pytest.mark.redis)])
async def test_the_largest_evidence_record_stays_within_max_record_bytes(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The biggest record a visitor can cause (a 128-character client id, the longest marker
    the matcher keeps, in 4-byte characters, zone and route ids of 128 characters) takes at
    most ``MAX_RECORD_BYTES`` where it is kept."""
    from urllib.parse import quote

    import redis.asyncio as aioredis

    from micafence.promotions.solicitation import MAX_RECORD_BYTES, MarkerMatcher

    wide = quote("\U0001F600" * 10_000)
    marker = MarkerMatcher(["utm_*"]).find(f"utm_{wide}={wide}&ref=x".encode())
    assert marker is not None and len(marker) == 64 + 1 + 200
    item = SolicitationEvidence("c" * 128, NOW, "z" * 128, "FR", "r" * 128, marker)
    if backend == "file":
        path = tmp_path / "evidence.jsonl"
        store: Store = open_store(f"file://{path}")
        await store.record_solicitation(item)
        stored = path.stat().st_size
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = open_store(server.url, grant_key=KEY)
        await store.record_solicitation(item)
        client = aioredis.Redis.from_url(server.url)
        keys = await client.keys("*solicitations*")
        stored = sum([await client.strlen(key) if await client.type(key) == b"string"
                      else sum(len(v) for v in await client.lrange(key, 0, -1))
                      for key in keys])
        await client.aclose()
    assert await store.solicitations("c" * 128) == [item]
    await store.close()
    assert 1200 < stored <= MAX_RECORD_BYTES


async def test_every_store_answers_its_check(store: Store) -> None:
    """The readiness probe's question: memory has nothing outside the process to check."""
    assert await store.check() is (not isinstance(store, MemoryStore))


async def test_a_damaged_grant_file_fails_its_check(tmp_path: Path) -> None:
    path = tmp_path / "grants.jsonl"
    store = FileStore(path, recheck=0)
    await store.append_grant_event(grant("grt_1"))
    assert await store.check() is True
    with path.open("ab") as handle:
        handle.write(b"{not json\n")
    with pytest.raises(StoreError, match=f"{path}:2: not a micafence record"):
        await store.check()


def test_a_redis_url_without_the_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("redis", "redis.asyncio"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(StoreError, match=r"pip install 'micafence\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0", grant_key=KEY)

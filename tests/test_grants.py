"""GrantBook, the Python API: what a grant records, what it refuses, revocation and history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from micafence import load_policy
from micafence.errors import GrantError
from micafence.grants.book import GrantBook
from micafence.records import (
    Grant,
    GrantStatus,
    Revocation,
    SolicitationEvidence,
    event_from_json,
    event_to_json,
)
from micafence.store.memory import MemoryStore
from tests.conftest import DEFAULT_POLICY

POLICY = load_policy(DEFAULT_POLICY)
NOW = dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def valid(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "client_id": "client-7", "service": "exchange_for_funds", "asset": "BTC",
        "initiated_at": NOW - 2 * HOUR, "channel": "email", "evidence": "ticket CS-1042",
        "verified_by": "a.lind", "country": "FR",
    }
    fields.update(changes)
    return fields


async def test_a_grant_records_who_what_when_how_evidence_and_bounds() -> None:
    store = MemoryStore()
    book = GrantBook(store, POLICY, Clock(NOW))
    grant = await book.add(**valid(asset="btc", country="FR"))
    assert grant.id.startswith("grt_")
    assert (grant.client_id, grant.service, grant.asset) == ("client-7", "exchange_for_funds",
                                                             "BTC")
    assert (grant.initiated_at, grant.recorded_at) == (NOW - 2 * HOUR, NOW)
    assert (grant.channel, grant.evidence, grant.verified_by) == ("email", "ticket CS-1042",
                                                                  "a.lind")
    assert (grant.term, grant.same_type_window) == (30 * DAY, DAY)  # the policy's bounds
    assert grant.expires_at == NOW - 2 * HOUR + 30 * DAY
    assert grant.policy_revision == POLICY.revision
    assert grant.country == "FR"
    assert await store.grant_events("client-7") == [grant]
    assert (await book.get(grant.id)).status(NOW) is GrantStatus.ACTIVE


REFUSALS = [
    pytest.param({"evidence": ""}, "evidence is required", id="no-evidence"),
    pytest.param({"evidence": "   "}, "evidence is required", id="blank-evidence"),
    pytest.param({"channel": ""}, "channel is required", id="no-channel"),
    pytest.param({"verified_by": ""}, "verified_by is required", id="no-verifier"),
    pytest.param({"evidence": "a\nb"}, "one line", id="multi-line-evidence"),
    pytest.param({"initiated_at": NOW + dt.timedelta(seconds=1)}, "in the future",
                 id="initiated-in-the-future"),
    pytest.param({"initiated_at": NOW - 31 * DAY}, "would be expired",
                 id="initiated-before-the-term"),
    pytest.param({"initiated_at": dt.datetime(2025, 3, 3, 9, 0)}, "UTC offset",
                 id="initiated-without-offset"),
    pytest.param({"service": "lending"}, "unknown service 'lending'", id="unknown-service"),
    pytest.param({"asset": "DOGE"}, "unknown asset 'DOGE'", id="unknown-asset"),
    pytest.param({"client_id": "a b"}, "not a client id", id="bad-client-id"),
    pytest.param({"term": 31 * DAY}, "never lengthen", id="term-longer-than-policy"),
    pytest.param({"same_type_window": 2 * DAY}, "never lengthen", id="window-longer-than-policy"),
    pytest.param({"term": 12 * HOUR, "same_type_window": 20 * HOUR},
                 "cannot be longer than the scope term", id="window-longer-than-term"),
    pytest.param({"term": dt.timedelta(0)}, "longer than zero", id="zero-term"),
    pytest.param({"country": "UK"}, "not an ISO 3166-1", id="bad-country"),
]


@pytest.mark.parametrize(("changes", "problem"), REFUSALS)
async def test_refusals(changes: dict[str, Any], problem: str) -> None:
    store = MemoryStore()
    with pytest.raises(GrantError, match=problem):
        await GrantBook(store, POLICY, Clock(NOW)).add(**valid(**changes))
    assert await store.grant_events() == []  # nothing recorded


async def test_shorter_bounds_are_recorded() -> None:
    book = GrantBook(MemoryStore(), POLICY, Clock(NOW))
    grant = await book.add(**valid(term=7 * DAY, same_type_window=6 * HOUR))
    assert (grant.term, grant.same_type_window) == (7 * DAY, 6 * HOUR)
    assert grant.same_type_until == NOW - 2 * HOUR + 6 * HOUR


async def test_solicited_client_needs_a_recorded_override() -> None:
    store = MemoryStore()
    await store.record_solicitation(SolicitationEvidence(
        subject="client-7", at=NOW - DAY, zone="eu", country="FR",
        route_id="promotions.referral", marker="ref=FRIEND10",
    ))
    book = GrantBook(store, POLICY, Clock(NOW))
    with pytest.raises(GrantError, match=r"1 solicited arrival.*promotions\.referral"):
        await book.add(**valid())
    with pytest.raises(GrantError, match="override"):
        await book.add(**valid(), override_solicitation="   ")
    other = await book.add(**valid(client_id="client-8"))  # not solicited: no override needed
    grant = await book.add(**valid(), override_solicitation="client phoned first, see CALL-9")
    assert (grant.solicitation_override, grant.solicitations_seen) == (
        "client phoned first, see CALL-9", 1)
    assert (other.solicitation_override, other.solicitations_seen) == (None, 0)
    # One officer alone cannot override: the grant waits for a second one.
    assert (grant.approval_required, other.approval_required) == (True, False)
    assert (await book.get(grant.id)).status(NOW) is GrantStatus.PENDING


async def test_revocation_is_a_new_record_and_history_is_append_only() -> None:
    store, clock = MemoryStore(), Clock(NOW)
    book = GrantBook(store, POLICY, clock)
    grant = await book.add(**valid())
    clock.now = NOW + HOUR
    revocation = await book.revoke(grant.id, revoked_by="b.ops", reason="client asked")
    assert revocation == Revocation(grant.id, "client-7", NOW + HOUR, "b.ops", "client asked")
    state = await book.get(grant.id)
    assert (state.grant, state.revocation) == (grant, revocation)
    assert state.status(NOW + HOUR) is GrantStatus.REVOKED
    assert await book.history(grant.id) == [grant, revocation]
    assert await store.grant_version() == 2
    with pytest.raises(GrantError, match="already revoked"):
        await book.revoke(grant.id, revoked_by="b.ops", reason="again")
    with pytest.raises(GrantError, match="revoked_by is required"):
        await book.revoke((await book.add(**valid())).id, revoked_by=" ", reason="x")
    with pytest.raises(GrantError, match="no grant 'grt_nope'"):
        await book.revoke("grt_nope", revoked_by="b.ops", reason="x")
    with pytest.raises(GrantError, match="no grant 'grt_nope'"):
        await book.history("grt_nope")


async def test_status_follows_the_clock_and_list_filters() -> None:
    store, clock = MemoryStore(), Clock(NOW)
    book = GrantBook(store, POLICY, clock)
    first = await book.add(**valid())
    second = await book.add(**valid(client_id="client-8", asset="ETH", term=2 * DAY))
    third = await book.add(**valid(client_id="client-9"))
    await book.revoke(third.id, revoked_by="ops", reason="r")
    clock.now = NOW + 3 * DAY
    ids = {status: [s.grant.id for s in await book.list(status=status)] for status in GrantStatus}
    assert ids == {GrantStatus.ACTIVE: [first.id], GrantStatus.EXPIRED: [second.id],
                   GrantStatus.REVOKED: [third.id], GrantStatus.PENDING: []}
    assert [s.grant.id for s in await book.list(client_id="client-8")] == [second.id]
    view = (await book.get(second.id)).as_dict(clock.now)
    assert (view["status"], view["term"], view["revocation"]) == ("expired", "P2D", None)


async def test_reading_needs_no_policy() -> None:
    store = MemoryStore()
    grant = await GrantBook(store, POLICY, Clock(NOW)).add(**valid())
    reader = GrantBook(store, None, Clock(NOW))
    await reader.revoke(grant.id, revoked_by="ops", reason="incident")
    assert [s.grant for s in await reader.list()] == [grant]
    with pytest.raises(GrantError, match="needs the policy"):
        await reader.add(**valid())


async def test_records_round_trip_through_json() -> None:
    book = GrantBook(MemoryStore(), POLICY, Clock(NOW))
    grant = await book.add(**valid(override_solicitation=None, country="SE", term=10 * DAY))
    revocation = await book.revoke(grant.id, revoked_by="ops", reason="r")
    for event in (grant, revocation):
        assert event_from_json(event_to_json(event)) == event


@pytest.mark.parametrize("data", [
    [], {"event": "grant"}, {"event": "party"}, {"event": "revocation", "grant_id": "g"},
    {**event_to_json(Grant("g", "c", "s", "A", NOW, "e", "v", "w", NOW, DAY, DAY, "r")),
     "initiated_at": "2025-03-03T12:00:00"},
    {**event_to_json(Grant("g", "c", "s", "A", NOW, "e", "v", "w", NOW, DAY, DAY, "r")),
     "term": "P1M"},
])
def test_malformed_records_are_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        event_from_json(data)

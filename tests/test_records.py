"""Records read back exactly as written, and a damaged record is refused saying what is wrong."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from micafence.records import (
    Grant,
    OnboardingTicket,
    SolicitationEvidence,
    event_from_json,
    event_to_json,
    evidence_from_json,
    evidence_to_json,
    ticket_from_json,
    ticket_to_json,
)

AT = dt.datetime(2026, 3, 3, 9, 30, tzinfo=dt.UTC)
GRANT = Grant("grt_1", "client-7", "exchange_for_funds", "BTC", AT, "email", "CS-1042",
              "a.lind", AT, dt.timedelta(days=30), dt.timedelta(days=7), "rev-1")
TICKET = OnboardingTicket("ab" * 32, "grt_1", "client-7", AT, AT + dt.timedelta(hours=1), "a.lind")
EVIDENCE = SolicitationEvidence("cookie:v-1", AT, "eu", "DE", "campaign", "ref=FRIEND10")


@pytest.mark.parametrize(
    ("record", "write", "read"),
    [
        (GRANT, event_to_json, event_from_json),
        (TICKET, ticket_to_json, ticket_from_json),
        (EVIDENCE, evidence_to_json, evidence_from_json),
    ],
)
def test_a_record_reads_back_as_written(record: Any, write: Any, read: Any) -> None:
    assert read(json.loads(json.dumps(write(record)))) == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"at": "yesterday"}, "is not an ISO 8601 date and time"),
        ({"at": "2026-03-03T09:30:00"}, "has no timezone"),
        ({"at": "2026-03-03"}, "is a date"),
    ],
)
def test_damaged_evidence_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evidence_from_json({**evidence_to_json(EVIDENCE), **change})


def test_evidence_without_a_field_names_it() -> None:
    data = evidence_to_json(EVIDENCE)
    del data["zone"]
    with pytest.raises(ValueError, match="without 'zone'"):
        evidence_from_json(data)

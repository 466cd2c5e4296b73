"""One reading of an instant everywhere a person types one: commands agree on dates and offsets."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from micafence.cli import main
from micafence.instants import parse_instant

UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-01", dt.datetime(2026, 7, 1, tzinfo=UTC)),  # a date: midnight UTC
        ("2026-07-01T00:00:00+02:00", dt.datetime(2026, 6, 30, 22, tzinfo=UTC)),
        ("2026-07-01T09:30:00Z", dt.datetime(2026, 7, 1, 9, 30, tzinfo=UTC)),
        (" 2026-07-01T09:30:00.000123Z ", dt.datetime(2026, 7, 1, 9, 30, 0, 123, tzinfo=UTC)),
    ],
)
def test_an_instant_is_read_in_utc(text: str, expected: dt.datetime) -> None:
    value = parse_instant(text)
    assert value == expected
    assert value.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-07-01T09:30:00", "has no timezone"),
        ("1 July", "is not an ISO 8601 date and time"),
        ("", "is not an ISO 8601 date and time"),
    ],
)
def test_an_instant_that_names_no_instant_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_instant(text)


def test_a_policy_file_may_not_give_a_date_alone() -> None:
    with pytest.raises(ValueError, match="is a date: give a time and timezone"):
        parse_instant("2026-07-01", allow_date=False)


def test_explain_at_a_date_decides_at_midnight_utc(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`explain --at 2026-07-01` used to fail while `audit export --since 2026-07-01` meant
    midnight UTC: both now mean midnight UTC."""
    monkeypatch.delenv("MICAFENCE_ARCHIVE_DIR", raising=False)
    database = Path(__file__).parents[1] / "middleware/micafence/data/GeoLite2-Country-Test.mmdb"
    code = main(["explain", "--geoip-db", str(database), "--ip", "81.2.69.142", "--path", "/",
                 "--at", "2026-07-01", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["at"] == "2026-07-01T00:00:00+00:00"


def test_audit_export_refuses_a_time_without_timezone(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["audit", "export", str(tmp_path), "--out", str(tmp_path / "out"),
              "--since", "2026-07-01T09:00:00"])
    assert caught.value.code == 2
    assert "has no timezone" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_an_instant_out_of_range_in_utc_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_instant(text)

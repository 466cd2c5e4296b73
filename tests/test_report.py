"""``micafence report``: the EU-exposure figures and the "no longer occasional" warning."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from micafence.audit.log import AuditLog
from micafence.audit.report import DRIFT_WARNING, GrantFacts, build_report
from micafence.audit.sinks import FileSink
from micafence.cli import main
from micafence.grants.book import GrantBook
from micafence.policy.audit import ReportingThresholds
from micafence.records import Grant, Revocation
from micafence.store.opener import open_store
from tests.audit_support import KEY, KEY_TEXT, SE, client, guarded, policy_with
from tests.conftest import DEFAULT_POLICY

NOW = dt.datetime(2025, 6, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def grants_opened(per_month: dict[str, int], *, term_days: int = 30,
                  revoked: int = 0) -> list[GrantFacts]:
    """``per_month`` grants recorded mid-month (2025-MM), initiated two hours earlier."""
    facts = []
    for month, count in per_month.items():
        for n in range(count):
            at = dt.datetime.fromisoformat(f"{month}-15T10:00:00+00:00")
            facts.append(GrantFacts(f"g-{month}-{n}", at, at - dt.timedelta(hours=2),
                                    at + term_days * DAY, revoked > len(facts)))
    return facts


THRESHOLD_TABLE = [
    # (grants, thresholds, expected warnings (fragments); [] means within thresholds)
    pytest.param(grants_opened({"2025-06": 3}), ReportingThresholds(max_active_grants=3), [],
                 id="active-at-threshold"),
    pytest.param(grants_opened({"2025-06": 4}), ReportingThresholds(max_active_grants=3),
                 ["4 active grants (threshold 3)"], id="active-over-threshold"),
    pytest.param(grants_opened({"2025-06": 4}, revoked=2), ReportingThresholds(max_active_grants=3),
                 [], id="revoked-grants-are-not-active"),
    pytest.param(grants_opened({"2025-01": 9}), ReportingThresholds(max_active_grants=3), [],
                 id="expired-grants-are-not-active"),
    pytest.param(grants_opened({"2025-05": 4, "2025-06": 5}),
                 ReportingThresholds(max_monthly_growth_percent=25), [], id="growth-25pct"),
    pytest.param(grants_opened({"2025-05": 4, "2025-06": 6}),
                 ReportingThresholds(max_monthly_growth_percent=25),
                 ["grants opened grew 50% month on month (4 in 2025-05, 6 in 2025-06"],
                 id="growth-50pct"),
    pytest.param(grants_opened({"2025-03": 12, "2025-06": 2}),
                 ReportingThresholds(max_new_grants_per_month=10),
                 ["12 grants opened in 2025-03 (threshold 10 a month)"], id="busy-month"),
    pytest.param(grants_opened({"2025-02": 2, "2025-06": 1}, term_days=365),
                 ReportingThresholds(long_running_grant=90 * DAY, max_long_running_grants=1),
                 ["2 long-running client relationships: active grants that, with the grants they "
                  "renew, began more than 90 days ago (threshold 1)"], id="long-running"),
    pytest.param(grants_opened({"2025-05": 40, "2025-06": 60}), ReportingThresholds(), [],
                 id="no-thresholds-no-warnings"),
]


@pytest.mark.parametrize(("grants", "thresholds", "warnings"), THRESHOLD_TABLE)
def test_thresholds(grants: list[GrantFacts], thresholds: ReportingThresholds,
                    warnings: list[str]) -> None:
    report = build_report([], grants, thresholds, now=NOW)
    assert len(report.warnings) == len(warnings)
    for fragment, warning in zip(warnings, report.warnings, strict=True):
        assert fragment in warning


async def write_log(directory: Path, grants: int) -> None:
    """A month of EU traffic: blocks, a browsing visitor, a wind-down pass, onboarding, grants."""
    log = AuditLog(FileSink(directory), key=KEY)
    async with client(guarded(log, policy_with())) as http:
        for path in ("/signup", "/signup", "/r/FRIEND10", "/", "/markets"):
            await http.get(path, headers={"X-Forwarded-For": SE})
        await http.post("/api/withdrawals", headers={"X-Forwarded-For": SE, "X-Client-Id": "c-1"})
        await http.post("/api/orders", headers={"X-Forwarded-For": SE, "X-Client-Id": "c-1"})
    recorded = dt.datetime.now(dt.UTC) - DAY
    for n in range(grants):
        assert log.record_grant(Grant(
            id=f"g-{n}", client_id=f"c-{n}", service="exchange_for_funds", asset="BTC",
            initiated_at=recorded - dt.timedelta(hours=1), channel="email",
            evidence="ticket", verified_by="compliance", recorded_at=recorded,
            term=30 * DAY, same_type_window=DAY, policy_revision="sha256:x"))
    if grants:
        assert log.record_grant(Revocation("g-0", "c-0", recorded, "compliance", "left"))
    assert log.record_event("onboarding.token_used", {"token": "t-1", "client_id": "c-1"})
    await log.aclose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


async def test_report_counts_from_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    await write_log(tmp_path / "log", grants=3)
    code, out = run(capsys, "report", str(tmp_path / "log"), "--json")
    figures = json.loads(out)
    assert code == 0
    assert figures["blocks_by_reason"] == {"eu.account_creation": 2, "eu.no_grant": 1,
                                           "eu.promotion": 1}
    assert figures["suppressed_promotion_pages"] == 2
    assert figures["promotion_routes_refused"] == 1
    assert figures["wind_down_passes"] == 1
    assert figures["onboarding_tokens_used"] == 1
    assert figures["active_grants"] == 2  # g-0 was revoked
    month = (dt.datetime.now(dt.UTC) - DAY).strftime("%Y-%m")
    assert figures["grants_opened_per_month"] == {month: 3}
    assert figures["warnings"] == [] and figures["log_problems"] == []


async def test_report_warns_in_text_and_html_when_the_book_grows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    await write_log(tmp_path / "log", grants=4)
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("max_active_grants: 25",
                                                         "max_active_grants: 2"))
    page = tmp_path / "report.html"
    code, out = run(capsys, "report", str(tmp_path / "log"), "--policy", str(policy),
                    "--html", str(page), "--strict")
    assert code == 3
    assert "WARNING: 3 active grants (threshold 2)" in out
    assert DRIFT_WARNING in out
    html = page.read_text()
    assert "<svg" in html and html.count('<rect class="grants"') >= 1
    assert "3 active grants (threshold 2)" in html
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    code, _ = run(capsys, "report", str(tmp_path / "log"), "--policy", str(policy))
    assert code == 0  # without --strict, a warning is not a failure


async def test_report_takes_grants_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    await write_log(tmp_path / "log", grants=0)
    url = f"file://{tmp_path / 'grants.jsonl'}"
    store, now = open_store(url), dt.datetime.now(dt.UTC)
    book = GrantBook(store, policy_with(), lambda: now)
    for client_id in ("alice", "bob"):
        await book.add(client_id=client_id, service="exchange_for_funds", asset="BTC",
                       initiated_at=now - dt.timedelta(hours=1), channel="email",
                       evidence=f"ticket {client_id}", verified_by="compliance", country="FR")
    await store.close()
    code, out = await asyncio.to_thread(
        run, capsys, "report", str(tmp_path / "log"), "--store", url, "--json")
    figures = json.loads(out)
    assert code == 0
    assert figures["active_grants"] == 2
    assert figures["grant_source"] == f"store {url}"


async def test_report_says_when_the_log_does_not_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICAFENCE_AUDIT_KEY", KEY_TEXT)
    await write_log(tmp_path / "log", grants=1)
    [path] = (tmp_path / "log").glob("audit.*.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[4:]))
    code, out = run(capsys, "report", str(tmp_path / "log"))
    assert code == 0
    assert "WARNING: the audit log does not verify (1 problems)" in out

"""Issue 17's "done when" (d) and (e) through the real command: ``micafence grant`` and
``micafence report`` run as subprocesses on a signed ``file://`` store, next to the demo exchange
under uvicorn for (d).

(d) a referral arrival, then a sign-up with that cookie and an onboarding token: 451
    ``eu.onboarding.solicited``; ``grant add --onboarding`` for the linked client is refused
    until a second officer approves an override;
(e) a renewal the day after expiry reusing the evidence reference is refused; the report's
    long-running figure counts a client renewed three times (default 30-day term).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from micafence.cli import bundled_test_database
from micafence.grants.book import GrantBook
from micafence.grants.signing import GrantKey
from micafence.policy.loader import load_policy
from micafence.promotions.solicitation import visitor_id
from micafence.store.file_store import FileStore
from micafence_tools.demo.server import build_demo
from tests.audit_support import KEY as AUDIT_KEY
from tests.audit_support import KEY_TEXT as AUDIT_KEY_TEXT
from tests.conftest import DEFAULT_POLICY, ServerThread

MICAFENCE = str(Path(sys.executable).with_name("micafence"))
GRANT_ID = re.compile(r"grt_[0-9a-f]{12}")
TOKEN = re.compile(r"mot_[A-Za-z0-9_-]+")
SE = "89.160.20.112"
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


class Officers:
    """``micafence grant …`` as a subprocess, run by a given officer, on one store and key."""

    def __init__(self, store_url: str, key_file: Path) -> None:
        self.store_url = store_url
        self.env = {**os.environ, "MICAFENCE_GRANT_KEY_FILE": str(key_file),
                    "MICAFENCE_POLICY": str(DEFAULT_POLICY)}

    def run(self, officer: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MICAFENCE, "grant", *args, "--store", self.store_url],
            env={**self.env, "MICAFENCE_OFFICER": officer},
            capture_output=True, text=True, timeout=60, check=False)

    def add(self, officer: str, client: str, evidence: str, *extra: str,
            initiated: dt.datetime | None = None) -> subprocess.CompletedProcess[str]:
        when = initiated or dt.datetime.now(dt.UTC) - HOUR
        return self.run(officer, "add", "--client", client, "--service", "exchange_for_funds",
                        "--asset", "BTC", "--initiated-at", when.isoformat(timespec="seconds"),
                        "--channel", "email", "--evidence", evidence, "--country", "FR",
                        *extra)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "grants.key"
    made = subprocess.run([MICAFENCE, "grant", "keygen", str(path)], capture_output=True,
                          text=True, check=False)
    assert made.returncode == 0, made.stderr
    return path


def sign_up(url: str, token: str, cookie: str) -> tuple[int, str]:
    answer = httpx.post(url + "/api/accounts", json={"email": "carol@example.fr"}, headers={
        "X-Forwarded-For": SE, "Accept": "application/json",
        "X-Micafence-Onboarding": token, "Cookie": f"micafence_visitor={cookie}"})
    data = answer.json()
    return answer.status_code, data.get("reason") or data.get("account_id")


@pytest.mark.server
def test_d_a_solicited_sign_up_and_the_linked_clients_grant(
    tmp_path: Path, key_file: Path
) -> None:
    store_url = f"file://{tmp_path}/grants.jsonl"
    officers = Officers(store_url, key_file)
    app = build_demo(DEFAULT_POLICY, bundled_test_database(), store=store_url,
                     grant_key=GrantKey.from_file(key_file))
    with ServerThread(app) as server:
        # A Swedish visitor follows a referral link: 451, and a first-party arrival cookie.
        arrival = httpx.get(server.url + "/r/FRIEND10", headers={"X-Forwarded-For": SE})
        assert arrival.status_code == 451
        cookie = visitor_id([(b"cookie", arrival.headers["set-cookie"].encode())],
                            "micafence_visitor")
        assert cookie is not None
        # carol's approach is recorded (nothing links her to the cookie yet) with a token.
        added = officers.add("a.lind", "carol", "ticket CS-3003", "--onboarding")
        assert added.returncode == 0, added.stderr
        token = TOKEN.search(added.stdout)
        assert token is not None
        # She signs up with the token and the referral's cookie: refused, arrival linked.
        assert sign_up(server.url, token.group(), cookie) == (451, "eu.onboarding.solicited")

        refused = officers.add("a.lind", "carol", "ticket CS-3004", "--onboarding")
        assert refused.returncode == 1 and refused.stdout == ""
        assert "carol was solicited within the look-back window" in refused.stderr
        assert f"arrival cookie:{cookie}" in refused.stderr
        both = officers.add("a.lind", "carol", "ticket CS-3004", "--onboarding",
                            "--override-reason", "carol wrote first, see CS-3004")
        assert both.returncode == 1 and "pending until a second officer" in both.stderr

        pending = officers.add("a.lind", "carol", "ticket CS-3004",
                               "--override-reason", "carol wrote first, see CS-3004")
        assert pending.returncode == 0, pending.stderr
        grant_id = pending.stdout.strip()
        assert GRANT_ID.fullmatch(grant_id)
        assert f"`micafence grant approve {grant_id}`" in pending.stderr
        early = officers.run("a.lind", "token", grant_id)
        assert early.returncode == 1 and "is pending: approve it first" in early.stderr
        alone = officers.run("a.lind", "approve", grant_id)
        assert alone.returncode == 1 and "a second, different officer" in alone.stderr
        approved = officers.run("b.ops", "approve", grant_id)
        assert approved.returncode == 0, approved.stderr
        issued = officers.run("b.ops", "token", grant_id)
        assert issued.returncode == 0, issued.stderr
        token = TOKEN.search(issued.stdout)
        assert token is not None
        # The approved override covered that arrival: the same cookie may now sign up.
        assert sign_up(server.url, token.group(), cookie) == (201, "acc_1")

    shown = json.loads(officers.run("b.ops", "show", grant_id, "--json").stdout)
    assert (shown["solicitation_override"], shown["solicitations_seen"]) == (
        "carol wrote first, see CS-3004", 1)
    assert (shown["approval"]["approved_by"], shown["status"]) == ("b.ops", "active")
    history = json.loads(officers.run("b.ops", "history", "--client", "carol", "--json").stdout)
    assert [r["event"] for r in history].count("arrival_link") == 1


async def _decision_log(directory: Path) -> None:
    log = AuditLog(FileSink(directory), key=AUDIT_KEY)
    assert log.record_event("onboarding.token_used", {"token": "t-1", "client_id": "dave"})
    await log.aclose()


def _seed(store_url: str, key_file: Path, starts: list[dt.datetime]) -> list[str]:
    """carol's earlier grants, each recorded an hour after her approach (a grant book whose
    clock is set to that day), citing tickets CS-1, CS-2, …"""

    async def record() -> list[str]:
        store = FileStore(store_url.removeprefix("file://"), key=GrantKey.from_file(key_file))
        ids = []
        for n, start in enumerate(starts, 1):
            book = GrantBook(store, load_policy(DEFAULT_POLICY), lambda at=start: at + HOUR)
            grant = await book.add(client_id="carol", service="exchange_for_funds",
                                   asset="BTC", initiated_at=start, channel="email",
                                   evidence=f"ticket CS-{n}", verified_by="a.lind",
                                   country="FR")
            ids.append(grant.id)
        await store.close()
        return ids

    return asyncio.run(record())


def test_e_a_renewal_needs_new_evidence_and_the_report_counts_the_chain(
    tmp_path: Path, key_file: Path
) -> None:
    store_url = f"file://{tmp_path}/grants.jsonl"
    officers = Officers(store_url, key_file)
    now = dt.datetime.now(dt.UTC)
    # Three 30-day grants, each approach a day after the previous grant's term ended; the last
    # ended yesterday.
    starts = [now - HOUR - n * 31 * DAY for n in (3, 2, 1)]
    seeded = _seed(store_url, key_file, starts)

    reused = officers.add("a.lind", "carol", "ticket CS-3")
    assert reused.returncode == 1 and reused.stdout == ""
    assert f"this grant renews {seeded[2]}" in reused.stderr
    assert f"evidence 'ticket CS-3' was already used by grant {seeded[2]}" in reused.stderr
    renewed = officers.add("a.lind", "carol", "ticket CS-4")
    assert renewed.returncode == 0, renewed.stderr
    grant_id = renewed.stdout.strip()
    assert f"{grant_id} renews {seeded[2]}" in renewed.stderr
    shown = officers.run("a.lind", "show", grant_id)
    assert f"renewal of  {seeded[2]}" in shown.stdout

    # The exposure report: four 30-day grants, one relationship that began 93 days ago.
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("max_long_running_grants: 5",
                                                         "max_long_running_grants: 0"))
    asyncio.run(_decision_log(tmp_path / "audit"))  # the grant figures come from the store
    report = subprocess.run(
        [MICAFENCE, "report", str(tmp_path / "audit"), "--store", store_url, "--policy",
         str(policy), "--json"],
        env={**officers.env, "MICAFENCE_AUDIT_KEY": AUDIT_KEY_TEXT}, capture_output=True,
        text=True, timeout=60, check=False)
    assert report.returncode == 0, report.stderr
    figures: dict[str, Any] = json.loads(report.stdout)
    assert (figures["active_grants"], figures["active_relationships"], figures["renewals"],
            figures["long_running_grants"]) == (1, 1, 3, 1)
    assert any("1 long-running client relationships" in w for w in figures["warnings"])
    # The records say so too: each renewal names the grant it renews.
    lines = [json.loads(x) for x in (tmp_path / "grants.jsonl").read_text().splitlines()]
    grants = [r for r in lines if r["event"] == "grant"]
    assert [r.get("renewal_of") for r in grants] == [None, *seeded]


"""Issue 17's walkthrough through the real ``micafence demo``: a known EU client stays EU on a
US address, a sign-up's declared residence counts, and a US resident on an EU address stays
restricted. The demo runs on a signed file store seeded with ``policies/grants/demo.yaml`` (bob
holds a USDC grant and is established in France); the officer records residences with the real
``micafence client set`` on the same store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.demo_server import running_demo

pytestmark = pytest.mark.server

MICAFENCE = str(Path(sys.executable).with_name("micafence"))
SEEDS = Path(__file__).parents[1] / "policies" / "grants" / "demo.yaml"
US, SE = "50.114.0.1", "89.160.20.112"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MICAFENCE_GRANT_KEY": "d" * 40,
           "MICAFENCE_OFFICER": "a.lind", "MICAFENCE_STORE": f"file://{folder / 'store.jsonl'}"}
    with running_demo("--store", env["MICAFENCE_STORE"], "--grants", str(SEEDS),
                      "--audit-dir", str(folder / "audit"), env=env) as url:
        yield url, env


def headers(ip: str, client: str | None = None) -> dict[str, str]:
    sent = {"X-Forwarded-For": ip, "Accept": "application/json"}
    return {**sent, "X-Client-Id": client} if client else sent


def order(pair: str) -> dict[str, str]:
    return {"pair": pair, "side": "buy", "amount": "1"}


def test_a_the_seeded_grant_holder_on_a_us_address(demo: tuple[str, dict[str, str]]) -> None:
    url, _ = demo
    feed = httpx.get(url + "/api/promotions", headers=headers(US, "bob"))
    assert (feed.status_code, feed.json()) == (200, [])
    assert httpx.get(url + "/r/FRIEND10", headers=headers(US, "bob")).status_code == 451
    home = httpx.get(url + "/", headers={"X-Forwarded-For": US, "X-Client-Id": "bob"})
    assert 'id="promo-banner"' not in home.text
    outside = httpx.post(url + "/api/orders", json=order("ETH-USD"), headers=headers(US, "bob"))
    assert outside.status_code == 451
    inside = httpx.post(url + "/api/orders", json=order("USDC-USD"), headers=headers(US, "bob"))
    assert inside.status_code == 201
    # Without its identity the same address is a US visitor.
    assert httpx.get(url + "/r/FRIEND10", headers=headers(US)).status_code == 200


def test_b_a_us_address_signing_up_as_a_french_resident(
        demo: tuple[str, dict[str, str]]) -> None:
    url, _ = demo
    french = httpx.post(url + "/api/accounts", json={"email": "a@b.c", "country": "FR"},
                        headers=headers(US))
    assert (french.status_code, french.json()["reason"]) == (451, "eu.account_creation")
    american = httpx.post(url + "/api/accounts", json={"email": "a@b.c", "country": "US"},
                          headers=headers(US))
    assert american.status_code == 201


def test_c_a_us_resident_on_a_swedish_address(demo: tuple[str, dict[str, str]]) -> None:
    url, env = demo
    done = subprocess.run([MICAFENCE, "client", "set", "--client", "carl", "--residence", "US",
                           "--evidence", "kyc/US-77"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert httpx.get(url + "/", headers=headers(SE, "carl")).status_code == 200
    signup = httpx.post(url + "/api/accounts", json={"email": "c@x.se", "country": "US"},
                        headers=headers(SE, "carl"))
    assert (signup.status_code, signup.json()["reason"]) == (451, "eu.account_creation")
    no_grant = httpx.post(url + "/api/orders", json=order("BTC-EUR"), headers=headers(SE, "carl"))
    assert (no_grant.status_code, no_grant.json()["reason"]) == (451, "eu.no_grant")


def test_an_officer_s_residence_record_reaches_the_running_demo(
        demo: tuple[str, dict[str, str]]) -> None:
    url, env = demo
    assert httpx.get(url + "/r/X", headers=headers(US, "dana")).status_code == 200
    subprocess.run([MICAFENCE, "client", "set", "--client", "dana", "--residence", "IE",
                    "--evidence", "kyc/IE-3"], env=env, timeout=60, check=True,
                   capture_output=True)
    deadline = time.monotonic() + 1.0  # the file store and the registry: within a second
    while httpx.get(url + "/r/X", headers=headers(US, "dana")).status_code != 451:
        assert time.monotonic() < deadline, "the running demo did not see the record"
        time.sleep(0.05)

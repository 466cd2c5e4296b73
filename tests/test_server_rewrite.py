"""A server that rewrites the client address must not open the fence (issue 15.5).

uvicorn with ``--forwarded-allow-ips '*'`` (and gunicorn's ``UvicornWorker``, which passes
gunicorn's setting on) replaces the client address with the left-most ``X-Forwarded-For``
entry, which the client writes: ``2a02:d000::1, 89.160.20.112`` made a Swedish visitor (the
right-most entry, added by the real proxy) Swiss, and the sign-up got through. Each server runs
as a real process on 127.0.0.1 (:mod:`tests.rewrite_apps`); the proxy is the test itself,
connecting from loopback, a trusted proxy of the default policy.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from micafence import Enforcer, GeoIPDatabase, MicafenceMiddleware, load_policy
from micafence.policy.probe import build_scope
from micafence_tools.demo.app import build_demo_app
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY
from tests.rewrite_apps import Served, gunicorn_command, uvicorn_command

pytestmark = pytest.mark.server

CH = "2a02:d000::1"
SE = "89.160.20.112"
SPOOFED = f"{CH}, {SE}"  # the client wrote the Swiss hop; the proxy appended the Swedish one
ALARM = "rewrote the client address"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The default policy with a ``database.max_age`` MaxMind's test database meets, so that
    readiness shows the rewrite only."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    assert "  max_age: P14D" in text
    path = tmp_path / "exchange.yaml"
    path.write_text(text.replace("  max_age: P14D", "  max_age: P3650D"), encoding="utf-8")
    return path


def sign_up(url: str, chain: str) -> httpx.Response:
    return httpx.post(url + "/api/accounts", json={"email": "a@b.se"}, timeout=5,
                      headers={"X-Forwarded-For": chain, "Accept": "application/json"})


def readiness(url: str) -> tuple[int, list[str]]:
    response = httpx.get(url + "/healthz", timeout=5)
    return response.status_code, response.json()["problems"]


def answer(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, response.headers.get("micafence-reason")


REWRITING_SERVERS = [
    # uvicorn's own default trusts 127.0.0.1: a proxy on the same host is enough.
    pytest.param(uvicorn_command, id="uvicorn-defaults"),
    pytest.param(lambda port: uvicorn_command(port, "--forwarded-allow-ips", "*"),
                 id="uvicorn-forwarded-allow-ips-star"),
    pytest.param(lambda port: gunicorn_command(port, "uvicorn_worker.UvicornWorker",
                                               "--forwarded-allow-ips", "*"),
                 id="gunicorn-uvicorn-worker"),
]


@pytest.mark.parametrize("command", REWRITING_SERVERS)
def test_rewritten_client_fails_closed_and_stays_not_ready(
    command: Callable[[int], list[str]], policy_file: Path
) -> None:
    with Served(command, policy_file) as server:
        assert readiness(server.url) == (200, [])  # nothing seen yet
        assert answer(sign_up(server.url, SPOOFED)) == (451, "unknown_country.account_creation")
        # The port uvicorn copies from the entry it took does not hide the rewrite either.
        assert answer(sign_up(server.url, f"[{CH}]:443, {SE}")) == (
            451, "unknown_country.account_creation")
        for _ in range(5):
            assert sign_up(server.url, SPOOFED).status_code == 451
        status, problems = readiness(server.url)
        assert status == 503
        assert len(problems) == 1 and "--no-proxy-headers" in problems[0]
        assert "micafence.workers.UvicornWorker" in problems[0]

        # A policy hot reload builds a new enforcer: the server is still the same.
        revision = httpx.get(server.url + "/healthz", timeout=5).json()["policy"]["revision"]
        policy_file.write_text(policy_file.read_text(encoding="utf-8") + "# reviewed\n",
                               encoding="utf-8")
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/healthz", timeout=5).json()["policy"]["revision"] \
                == revision:
            assert time.monotonic() < deadline, "the policy was not reloaded"
            time.sleep(0.05)
        assert readiness(server.url)[0] == 503
        assert answer(sign_up(server.url, SPOOFED)) == (451, "unknown_country.account_creation")
        stderr = server.stop()
    assert stderr.count(ALARM) == 1, stderr  # one error, not one per request
    assert "--no-proxy-headers" in stderr


def test_trusted_proxy_written_left_most_does_not_open_the_fence(
    policy_file: Path, tmp_path: Path
) -> None:
    # uvicorn with '*' and no appending proxy in front (direct, or an L4 load balancer): the
    # client writes "<a trusted proxy>:<port>, <a Swiss address>". uvicorn makes the proxy the
    # client, with that port (no port-0 mark), and micafence would walk the rest of the header,
    # written by the client, as if that proxy had sent it: a Swedish visitor signed up.
    internal = tmp_path / "internal-proxies.yaml"
    text = policy_file.read_text(encoding="utf-8")
    assert "trusted_proxies: [127.0.0.0/8, ::1/128]" in text
    internal.write_text(text.replace("trusted_proxies: [127.0.0.0/8, ::1/128]",
                                     "trusted_proxies: [10.0.0.0/8]"), encoding="utf-8")
    with Served(lambda port: uvicorn_command(port, "--forwarded-allow-ips", "*"),
                internal) as server:
        for chain in (f"10.0.0.1:5, {CH}", f"10.0.0.1:5, 10.0.0.2, {CH}"):
            assert answer(sign_up(server.url, chain)) == (
                451, "unknown_country.account_creation"), chain


FIXED_SERVERS = [
    pytest.param(lambda port: uvicorn_command(port, "--no-proxy-headers"),
                 id="uvicorn-no-proxy-headers"),
    pytest.param(lambda port: gunicorn_command(port, "micafence.workers.UvicornWorker",
                                               "--forwarded-allow-ips", "*"),
                 id="gunicorn-micafence-worker"),
]


@pytest.mark.parametrize("command", FIXED_SERVERS)
def test_server_without_proxy_headers_is_decided_on_the_real_chain(
    command: Callable[[int], list[str]], policy_file: Path
) -> None:
    with Served(command, policy_file) as server:
        assert answer(sign_up(server.url, SPOOFED)) == (451, "eu.account_creation")
        assert sign_up(server.url, CH).status_code == 201  # a Swiss visitor signs up
        assert readiness(server.url) == (200, [])
        stderr = server.stop()
    assert ALARM not in stderr


# -- in process: what the engine does with a rewritten scope --------------------------------------

def decide(enforcer: Enforcer, peer: str, port: int, chain: str | None) -> str:
    scope = build_scope(peer, "POST", "/api/accounts",
                        [("X-Forwarded-For", chain)] if chain is not None else [])
    scope["client"] = (peer, port)
    return enforcer.decide(scope).reason


@pytest.mark.parametrize(("peer", "port", "chain", "reason", "alarm"), [
    pytest.param(CH, 0, SPOOFED, "unknown_country.account_creation", True, id="port-0"),
    pytest.param("127.0.0.1", 0, f"127.0.0.1, {SE}", "unknown_country.account_creation", True,
                 id="port-0-rewritten-to-a-trusted-proxy"),
    pytest.param(CH, 443, f"[{CH}]:443, {SE}", "unknown_country.account_creation", False,
                 id="port-from-the-entry"),
    pytest.param(CH, 0, None, "pass", False, id="port-0-without-forwarded-header"),
    pytest.param(CH, 51234, SE, "pass", False, id="direct-visitor-with-a-forged-header"),
    pytest.param("127.0.0.1", 51234, SPOOFED, "eu.account_creation", False,
                 id="proxied-as-micafence-expects"),
    pytest.param("127.0.0.1", 5, f"127.0.0.1:5, {CH}", "unknown_country.account_creation",
                 False, id="trusted-proxy-written-left-most"),
    pytest.param("127.0.0.1", 51234, f"{CH}, 127.0.0.1", "pass", False,
                 id="two-local-proxies"),
])
def test_engine_decides_a_rewritten_client_as_unknown(
    peer: str, port: int, chain: str | None, reason: str, alarm: bool
) -> None:
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB))
    assert decide(enforcer, peer, port, chain) == reason
    assert decide(enforcer, peer, port, chain) == reason  # and from the cache
    assert enforcer.rewrite_alarm.tripped is alarm


@pytest.mark.parametrize("unknown_country_restricted", [True, False])
def test_a_direct_client_naming_itself_keeps_its_own_zones(
    unknown_country_restricted: bool, tmp_path: Path
) -> None:
    # A Swedish client connecting directly and writing its own address in X-Forwarded-For looks
    # like a client address a server took from that header. Both readings count: its address's
    # zones and the unknown country's, so a policy lenient with unknown countries lets nothing
    # of the EU's rules go.
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    if not unknown_country_restricted:
        assert "zones: [eu, eea, unknown_country]" in text
        text = text.replace("zones: [eu, eea, unknown_country]", "zones: [eu, eea]")
        text = text.replace("zones: [eu, eea, uk, unknown_country]", "zones: [eu, eea, uk]")
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    enforcer = Enforcer(load_policy(path), GeoIPDatabase(COUNTRY_DB))
    for chain in (SE, f"{SE}:443", f"{CH}, {SE}"):
        scope = build_scope(SE, "POST", "/api/accounts", [("X-Forwarded-For", chain)])
        scope["client"] = (SE, 51234)
        decision = enforcer.decide(scope)
        assert decision.zones == ("eu", "unknown_country"), chain
        assert decision.reason == "eu.account_creation", chain
        assert decision.blocked


def test_forwarded_header_of_rfc_7239_counts_too() -> None:
    # hypercorn's ProxyFixMiddleware (modern mode) rewrites from `Forwarded`, also with port 0.
    enforcer = Enforcer(load_policy(DEFAULT_POLICY), GeoIPDatabase(COUNTRY_DB))
    scope = build_scope(CH, "POST", "/api/accounts", [("Forwarded", f'for="[{CH}]"')])
    scope["client"] = (CH, 0)
    assert enforcer.decide(scope).reason == "unknown_country.account_creation"
    assert enforcer.rewrite_alarm.header == "forwarded"


async def test_alarm_logs_once_and_outlives_reloads(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = MicafenceMiddleware(build_demo_app(), policy=policy_file, geoip_db=COUNTRY_DB,
                                  watch=False)
    health = guarded.health_app()
    scope = build_scope(CH, "POST", "/api/accounts", [("X-Forwarded-For", SPOOFED)])
    scope["client"] = (CH, 0)
    with caplog.at_level(logging.ERROR, logger="micafence"):
        for _ in range(3):
            assert guarded.enforcer.decide(dict(scope)).reason == (
                "unknown_country.account_creation")
    assert [r.getMessage().count(ALARM) for r in caplog.records if r.levelno >= logging.ERROR] \
        == [1]
    first = guarded.enforcer
    policy_file.write_text(policy_file.read_text(encoding="utf-8") + "# v2\n", encoding="utf-8")
    assert guarded.reloader.check() is True and guarded.enforcer is not first
    report = await health.report()
    assert report["ready"] is False and "--no-proxy-headers" in report["problems"][0]
    seen_at = guarded.rewrite_alarm.seen_at
    assert seen_at is not None and seen_at <= dt.datetime.now(dt.UTC)

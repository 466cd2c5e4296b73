"""Prometheus metrics after a scripted sequence of requests, as a scrape sees them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

from micafence import MicafenceMiddleware
from micafence.audit.log import AuditLog
from micafence.audit.sinks import FileSink
from micafence.metrics import Metrics
from tests.audit_support import CH, KEY, SE, US, client, policy_with
from tests.conftest import COUNTRY_DB, echo_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def scrape(metrics: Metrics) -> Samples:
    return await scrape_app(metrics.asgi_app())


async def scrape_app(endpoint: Any) -> Samples:
    transport = httpx.ASGITransport(app=endpoint)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


SCRIPT = [
    # (method, path, forwarded-for, client id), in order
    ("POST", "/api/accounts", SE, None),
    ("POST", "/api/accounts", SE, None),
    ("POST", "/api/accounts", CH, None),
    ("GET", "/r/FRIEND10", US, None),
    ("GET", "/", SE, None),
    ("POST", "/api/withdrawals", SE, "c-1"),
    ("POST", "/api/orders", SE, "c-1"),
]


async def test_metric_values_after_a_scripted_sequence(tmp_path: Path) -> None:
    metrics = Metrics(sample_interval=0)  # time every request
    log = AuditLog(FileSink(tmp_path), key=KEY)
    policy = policy_with()
    app = MicafenceMiddleware(echo_app(), policy=policy, geoip_db=COUNTRY_DB, watch=False,
                              audit=log, metrics=metrics)
    async with client(app) as http:
        for method, path, forwarded, client_id in SCRIPT:
            headers = {"X-Forwarded-For": forwarded}
            if client_id:
                headers["X-Client-Id"] = client_id
            await http.request(method, path, headers=headers)
    before_flush = await scrape(metrics)
    assert value(before_flush, "micafence_audit_backlog") == 6  # all but the Swiss visitor
    await log.flush()
    samples = await scrape(metrics)

    decisions = "micafence_decisions_total"
    assert value(samples, decisions, reason="eu.account_creation", zone="eu",
                 blocked="true") == 2
    assert value(samples, decisions, reason="pass", zone="", blocked="false") == 2  # CH, SE /
    assert value(samples, decisions, reason="uk.promotion", zone="uk", blocked="true") == 1
    assert value(samples, decisions, reason="eu.wind_down", zone="eu", blocked="false") == 1
    assert value(samples, decisions, reason="eu.no_grant", zone="eu", blocked="true") == 1
    assert sum(v for (name, _), v in samples.items() if name == decisions) == len(SCRIPT)
    assert value(samples, "micafence_decision_latency_seconds_count") == len(SCRIPT)
    assert value(samples, "micafence_geoip_lookup_latency_seconds_count") == len(SCRIPT)
    assert 0 < value(samples, "micafence_decision_latency_seconds_sum") < 1
    assert value(samples, "micafence_policy_info", name="default",
                 revision=policy.revision) == 1
    build = app.enforcer.geoip.build_epoch
    assert value(samples, "micafence_geoip_database_build_timestamp_seconds") == build
    age = value(samples, "micafence_geoip_database_age_seconds")
    assert abs(age - (time.time() - build)) < 60
    assert value(samples, "micafence_audit_backlog") == 0
    assert value(samples, "micafence_audit_records_written_total") == 6
    assert value(samples, "micafence_audit_refused_total") == 0
    evidence = "micafence_solicitation_evidence_total"  # the UK visitor's referral arrival
    assert value(samples, evidence, outcome="recorded") == 1
    for outcome in ("repeat", "dropped_visitor_rate", "dropped_worker_cap"):  # there, at 0
        assert samples[(evidence, (("outcome", outcome),))] == 0
    await log.aclose()


async def test_one_request_per_interval_is_timed_and_store_errors_counted() -> None:
    metrics = Metrics(sample_interval=0.05)
    app = MicafenceMiddleware(echo_app(), policy=policy_with(), geoip_db=COUNTRY_DB,
                              watch=False, metrics=metrics)
    async with client(app) as http:
        for _ in range(5):  # before the sampler runs: nothing timed
            await http.get("/", headers={"X-Forwarded-For": CH})
        await metrics.start()
        await asyncio.sleep(0.12)  # the sampler has raised its flag (more than once)
        for _ in range(5):
            await http.get("/", headers={"X-Forwarded-For": CH})
        await metrics.stop()
    metrics.store_error("grant_events")
    metrics.store_error("grant_events")
    samples = await scrape(metrics)
    assert value(samples, "micafence_decision_latency_seconds_count") == 1
    assert value(samples, "micafence_decisions_total", reason="pass", zone="",
                 blocked="false") == 10
    assert value(samples, "micafence_store_errors_total", operation="grant_events") == 2


@pytest.mark.parametrize("registry", ["own", "app's"])
def test_workers_add_up_under_prometheus_multiproc_dir(tmp_path: Path, registry: str) -> None:
    # Under multiprocess the values live in the directory's files, whichever registry the
    # metrics are registered in: an app's registry changes nothing in the sum.
    made = "Metrics()" if registry == "own" else "Metrics(registry=CollectorRegistry())"
    worker = textwrap.dedent(f"""
        import sys
        from prometheus_client import CollectorRegistry
        from micafence import MicafenceMiddleware
        from micafence.metrics import Metrics
        from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, echo_app
        metrics = {made}
        app = MicafenceMiddleware(echo_app(), policy=DEFAULT_POLICY, geoip_db=COUNTRY_DB,
                                  watch=False, metrics=metrics)
        decision = app.enforcer.decide({{"type": "http", "method": "POST",
            "path": "/api/accounts", "headers": [], "client": ("{SE}", 1)}})
        for _ in range(int(sys.argv[1])):
            metrics.count(decision)
        metrics.sync()
    """)
    scraper = textwrap.dedent(f"""
        import asyncio, httpx
        from prometheus_client import CollectorRegistry
        from micafence.metrics import Metrics
        async def main():
            transport = httpx.ASGITransport(app={made}.asgi_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as http:
                print((await http.get("/metrics")).text)
        asyncio.run(main())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).parent.parent
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", worker, count], env=env, cwd=root, check=True)
    text = subprocess.run([sys.executable, "-c", scraper], env=env, cwd=root, check=True,
                          capture_output=True, text=True).stdout
    samples = parse(text)
    assert value(samples, "micafence_decisions_total", reason="eu.account_creation",
                 zone="eu", blocked="true") == 7


async def test_metrics_in_the_apps_registry_show_in_the_apps_scrape() -> None:
    registry = CollectorRegistry()
    orders = Counter("exchange_orders", "Orders placed", registry=registry)
    orders.inc(3)
    metrics = Metrics(registry=registry)
    app = MicafenceMiddleware(echo_app(), policy=policy_with(), geoip_db=COUNTRY_DB,
                              watch=False, metrics=metrics)
    async with client(app) as http:
        for _ in range(2):
            await http.post("/api/accounts", headers={"X-Forwarded-For": SE})
    metrics.sync()  # what the lifespan's task does every sync_interval
    samples = await scrape_app(make_asgi_app(registry))  # the app's own endpoint
    assert value(samples, "exchange_orders_total") == 3
    assert value(samples, "micafence_decisions_total", reason="eu.account_creation",
                 zone="eu", blocked="true") == 2
    assert value(samples, "micafence_policy_info", name="default",
                 revision=app.enforcer.policy.revision) == 1
    own = await scrape(metrics)  # micafence's own endpoint scrapes the same registry
    assert value(own, "exchange_orders_total") == 3
    assert own.keys() == samples.keys()


async def test_a_registry_takes_one_metrics_and_says_so() -> None:
    registry = CollectorRegistry()
    first = Metrics(registry=registry)
    with pytest.raises(ValueError, match="already holds micafence's metrics"):
        Metrics(registry=registry)
    app = MicafenceMiddleware(echo_app(), policy=policy_with(), geoip_db=COUNTRY_DB,
                              watch=False, metrics=first)
    async with client(app) as http:
        await http.post("/api/accounts", headers={"X-Forwarded-For": SE})
    samples = await scrape(first)  # the first still counts, and scrapes without a duplicate
    assert value(samples, "micafence_decisions_total", reason="eu.account_creation",
                 zone="eu", blocked="true") == 1


async def test_an_app_metric_named_like_ours_leaves_nothing_of_ours_behind() -> None:
    registry = CollectorRegistry()
    Counter("micafence_rewrite_aborted", "the app's own, by mistake", registry=registry)
    with pytest.raises(ValueError, match="micafence_rewrite_aborted"):
        Metrics(registry=registry)
    samples = await scrape_app(make_asgi_app(registry))
    assert {name for name, _ in samples} == {"micafence_rewrite_aborted_total",
                                             "micafence_rewrite_aborted_created"}


@pytest.mark.server
def test_demo_serves_metrics(tmp_path: Path) -> None:
    from micafence.policy.loader import default_policy_path
    from micafence_tools.demo.server import build_demo
    from tests.conftest import ServerThread

    app = build_demo(default_policy_path(), COUNTRY_DB)
    with ServerThread(app) as server:
        httpx.post(server.url + "/api/accounts", headers={"X-Forwarded-For": SE}, json={})
        text = httpx.get(server.url + "/metrics").text
    samples = parse(text)
    assert value(samples, "micafence_decisions_total", reason="eu.account_creation",
                 zone="eu", blocked="true") == 1

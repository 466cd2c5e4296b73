"""``micafence bench --quick``: the release benchmark runs end to end and reports every class.

Speed itself is not asserted here (timed unit tests flake on shared machines); the benchmark
prints ratios and ``--check`` compares them with ``bench/baseline.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MICAFENCE = str(Path(sys.executable).with_name("micafence"))


def test_quick_benchmark_reports_every_class_against_both_peers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([MICAFENCE, "bench", "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    for name in ("neutral_unrestricted", "neutral_restricted", "signup_block",
                 "out_of_scope_block"):
        assert metrics[f"inprocess.{name}.p50_us"] > 0
        assert metrics[f"inprocess.{name}.cost_ratio"] > 0
        assert metrics[f"inprocess.{name}.times_faster_than_naive"] > 0
        assert name in run.stdout
    # Grant checks on a private redis-server, and pages through the rewriter: against bare only.
    for name in ("in_scope_grant", "out_of_scope_grant", "page_10KB", "page_100KB", "page_1MB"):
        assert metrics[f"inprocess.{name}.p50_us"] > 0
        assert f"inprocess.{name}.times_faster_than_naive" not in metrics
        assert name in run.stdout
    assert "Targets" in run.stdout
    assert "in-scope grant check" in run.stdout
    # The µs targets also shown at the reference machine's speed, from this run's bare route.
    bare_route = metrics["inprocess.neutral_unrestricted.bare_p50_us"]
    assert run.stdout.count(f"6.4 µs there, {bare_route:.1f} µs here") == 3


def test_check_fails_on_a_regression(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    # A baseline no real run can meet: micafence costing a tenth of the bare app.
    baseline.write_text(json.dumps({
        "tolerance": 0.1,
        "metrics": {"inprocess.neutral_unrestricted.cost_ratio": 0.1},
    }))
    run = subprocess.run([MICAFENCE, "bench", "--quick", "--check", str(baseline)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "REGRESSION" in run.stdout
    assert "inprocess.neutral_unrestricted.cost_ratio" in run.stdout


def test_http_benchmark_loads_every_server_under_wrk() -> None:
    # The HTTP half, one short round: real uvicorn servers on 127.0.0.1, loaded by wrk.
    from micafence.decide import Enforcer
    from micafence.location.geo import GeoIPDatabase
    from micafence.policy.loader import load_policy
    from micafence_tools.bench.apps import database_path, policy_path
    from micafence_tools.bench.runner import metrics_of, run_http

    enforcer = Enforcer(load_policy(policy_path()), GeoIPDatabase(database_path()))
    metrics = metrics_of([], run_http(enforcer, rounds=1, seconds=1))
    for scenario in ("neutral", "mix", "rotating_v6"):
        assert metrics[f"http.{scenario}.bare_rps"] > 0
        assert metrics[f"http.{scenario}.micafence_rps"] > 0
        assert metrics[f"http.{scenario}.throughput_ratio"] > 0
    # Neutral traffic also against the naive peer and the do-nothing send wrapper (the floor).
    assert metrics["http.neutral.naive_rps"] > 0
    assert metrics["http.neutral.passthrough_rps"] > 0
    assert metrics["http.neutral.passthrough_ratio"] > 0
    assert "http.mix.passthrough_ratio" not in metrics

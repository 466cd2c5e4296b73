"""``bench/locustfile.py``: every request of the mix must get the status micafence decides for its
visitor, so a load test reports an over-block or a bypass as failures.

Real locust, headless and bounded (4 users, 5 s), against the demo exchange served by uvicorn
on a free 127.0.0.1 port: behind micafence, with nothing in front, and behind micafence on a
policy other than the one locust was told.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from micafence_tools.bench.http import servers
from micafence_tools.bench.traffic import MIX

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILE = Path(__file__).parents[1] / "bench" / "locustfile.py"
_MESSAGE = re.compile(r"^CatchResponseError\('(.*)'\)$")


def locust(url: str, out: Path, *options: str) -> tuple[Counter[str], dict[str, int]]:
    """Run the mix against ``url``: (failure message -> occurrences, scenario -> requests)."""
    run = subprocess.run(
        [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4",
         "--run-time", "5s", "--host", url, "--only-summary", "--csv", str(out / "locust"),
         "--exit-code-on-error", "0", *options],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    failures: Counter[str] = Counter()
    with (out / "locust_failures.csv").open() as handle:
        for row in csv.DictReader(handle):
            match = _MESSAGE.match(row["Error"])
            assert match is not None, row["Error"]
            failures[match.group(1)] += int(row["Occurrences"])
    with (out / "locust_stats.csv").open() as handle:
        requests = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(handle)
                    if row["Name"] != "Aggregated"}
    return failures, requests


def test_the_mix_against_micafence_has_no_failure(tmp_path: Path) -> None:
    with servers(["micafence"], {}) as urls:
        failures, requests = locust(urls["micafence"], tmp_path)
    assert failures == Counter()
    # Every scenario of the mix was loaded and checked, blocked ones included.
    assert set(requests) == {scenario.name for scenario in MIX}
    assert all(count > 0 for count in requests.values()), requests


def test_the_app_without_micafence_fails_on_every_bypass(tmp_path: Path) -> None:
    with servers(["bare"], {}) as urls:
        failures, requests = locust(urls["bare"], tmp_path)
    # The EU sign-ups and the ungranted EU orders the bare app accepted, each named; no other
    # scenario fails (the bare app answers neutral traffic as micafence lets it through).
    failing = {message.split(" ", 1)[0] for message in failures}
    assert failing == {"restricted_signup", "restricted_order"}, failures
    bypass = re.compile(r"(restricted_signup|restricted_order) visitor from [A-Z]{2} "
                        r"\(zones (?:[a-z_]+, )*eu\b[^)]* by [^)]+\): POST (/api/\w+) "
                        r"expected 451 (eu\.\w+), got 201")
    seen = set()
    for message in failures:
        match = bypass.fullmatch(message)
        assert match is not None, message
        seen.add(match.groups())
    assert seen == {("restricted_signup", "/api/accounts", "eu.account_creation"),
                    ("restricted_order", "/api/orders", "eu.no_grant")}
    assert any(message.startswith("restricted_signup visitor from SE (zones eu by country:SE")
               for message in failures), failures
    for scenario in ("restricted_signup", "restricted_order"):
        assert sum(n for m, n in failures.items() if m.startswith(f"{scenario} ")) == (
            requests[scenario])


def test_an_over_block_fails_and_expectations_follow_the_policy_given(
        tmp_path: Path, policy_variant: Callable[[str, str], str]) -> None:
    # The server runs a policy that puts the US and Japan in the EU zone; locust, told nothing,
    # expects the packaged policy: their orders refused are over-blocks.
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(policy_variant("ES, SE,\n", "ES, SE, US, JP,\n"))
    (tmp_path / "told-nothing").mkdir()
    (tmp_path / "told").mkdir()
    with servers(["micafence"], {"MICAFENCE_BENCH_POLICY": str(stricter)}) as urls:
        failures, _ = locust(urls["micafence"], tmp_path / "told-nothing")
        told, _ = locust(urls["micafence"], tmp_path / "told", "--policy", str(stricter))
    assert failures, "the over-blocked orders were counted as successes"
    pattern = re.compile(r"order visitor from (US|JP) \(no zone\): POST /api/orders "
                         r"expected 201, got 451")
    assert all(pattern.fullmatch(message) for message in failures), failures
    # Told the server's policy, locust expects those 451s: nothing fails.
    assert told == Counter()

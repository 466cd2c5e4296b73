"""An outsider's last attack on the running demo: an EU visitor trying to get through with odd
paths, methods, headers and bodies; the server SIGKILLed in a stream of 451s; a flood of
distinct addresses, cookies and paths. Everything goes through uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from micafence_tools.bench.ports import free_port
from tests.demo_server import MICAFENCE, running_demo

SE = "89.160.20.112"  # Sweden in MaxMind's test data
US = "216.160.83.56"  # US on a GB-registered block: the UK zone, which may sign up
SIGN_UP = b'{"email": "a@b.c"}'
JSON = {"Content-Type": "application/json", "Accept": "application/json"}


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with running_demo("--no-audit") as url:
        yield url


def send(url: str, method: str, target: str, headers: list[tuple[str, str]],
         body: bytes | None = SIGN_UP) -> httpx.Response:
    """One request with ``target`` sent byte for byte (no client-side path clean-up)."""
    with httpx.Client(timeout=10) as client:
        request = client.build_request(method, url, headers=httpx.Headers(headers), content=body)
        request.url = request.url.copy_with(raw_path=target.encode("ascii"))
        return client.send(request)


@pytest.mark.parametrize("target", [
    "/api/accounts", "/api/accounts/", "/api//accounts", "/API/Accounts", "/api/%61ccounts",
    "/api%2faccounts", "/api/accounts;x", "/api/./accounts", "/api/x/../accounts",
    "/./api/accounts", "/api/accounts%2F", "/api/accounts//", "/api/%2e/accounts",
    "/api/accounts%20", "/api/accounts?x=1", "//api/accounts", "/api/accounts.",
])
@pytest.mark.parametrize("method", ["POST", "PUT", "post"])
def test_a_swedish_sign_up_is_refused_whatever_the_path_looks_like(
    demo: str, target: str, method: str,
) -> None:
    response = send(demo, method, target, [("X-Forwarded-For", SE), *JSON.items()])
    assert response.status_code in (451, 404, 405), (target, response.text[:200])
    if response.status_code != 451:  # the app would not serve it either
        assert "account_id" not in response.text


@pytest.mark.parametrize("headers", [
    [("X-Forwarded-For", US), ("X-Forwarded-For", SE)],  # the proxy's header comes last
    [("X-Forwarded-For", f"{US}, {SE}")],
    [("X-Forwarded-For", SE), ("Forwarded", f"for={US}")],  # Forwarded is not the proxy's
    [("Forwarded", 'for="[2a02:d000::1]"'), ("X-Forwarded-For", SE)],
    [("X-Real-IP", US), ("X-Forwarded-For", SE)],
    [("X-Forwarded-For", f"::ffff:{SE}")],
    [("X-Forwarded-For", f"{SE}:4711")],
    [("X-Forwarded-For", f"[{SE}]")],
    [("X-Forwarded-For", SE), ("X-Forwarded-For", "")],
    [("X-Forwarded-For", f"{SE}, unknown")],
    [("X-Forwarded-For", SE), ("X-HTTP-Method-Override", "GET")],
])
def test_a_swedish_sign_up_is_refused_whatever_the_forwarding_headers_say(
    demo: str, headers: list[tuple[str, str]],
) -> None:
    response = send(demo, "POST", "/api/accounts", [*headers, *JSON.items()])
    assert response.status_code == 451, (headers, response.text[:200])


@pytest.mark.parametrize("body", [
    b'{"email":"a@b.c","country":"US","country":"FR"}',
    b'{"email":"a@b.c","\\u0063ountry":"\\u0046R"}',
    b'\xef\xbb\xbf{"email":"a@b.c","country":"FR"}',
    '{"email":"a@b.c","country":"FR"}'.encode("utf-16-le"),
    b'{"email":"a@b.c","country":" fr"}',
    b'{"pad":"' + b"x" * 2_000_000 + b'","email":"a@b.c","country":"FR"}',
    b'{"email":"a@b.c","country":"FR","n":' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"email":"a@b.c","country":"FR"} trailing',
])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_a_sign_up_declaring_france_from_a_us_address_is_never_opened(
    demo: str, body: bytes, content_type: str | None,
) -> None:
    headers = [("X-Forwarded-For", US), ("Accept", "application/json")]
    if content_type:
        headers.append(("Content-Type", content_type))
    response = send(demo, "POST", "/api/accounts", headers, body)
    assert response.status_code == 451, response.text[:200]


def test_a_chunked_declaration_split_across_chunks_is_read(demo: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"email":"a@b.c",'
        yield b'"country":"FR"}'

    with httpx.Client(timeout=10) as client:
        response = client.post(demo + "/api/accounts", content=chunks(),
                               headers={"X-Forwarded-For": US, **JSON})
    assert response.status_code == 451


@pytest.mark.parametrize("path", ["/signup", "/earn", "/r/FRIEND10"])
@pytest.mark.parametrize("variant", ["{}", "{}/", "{}.", "{};x", "/x/..{}", "{}%20", "//{}"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_swedish_visitor_never_sees_a_sign_up_service_or_referral_page(
    demo: str, path: str, variant: str, method: str,
) -> None:
    target = variant.format(path if not variant.startswith("//") else path[1:])
    response = send(demo, method, target, [("X-Forwarded-For", SE)], None)
    assert response.status_code >= 400, (target, response.status_code)
    assert "Open an account" not in response.text


# --- SIGKILL in a stream of 451s -----------------------------------------------------------

CLIENTS = 4


def start_demo(audit: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([MICAFENCE, "demo", "--host", "127.0.0.1", "--port", str(port),
                                "--audit-dir", str(audit)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, "no demo"
            time.sleep(0.05)


def blocked_records(audit: Path) -> Counter[int]:
    """Decision records of Swedish sign-ups per writer's process id; every record id once."""
    per_pid: Counter[int] = Counter()
    ids: Counter[str] = Counter()
    for file in audit.glob("audit.*.jsonl"):
        for line in file.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: the recovery record names it
            if record.get("kind") == "decision" and record["reason"] == "eu.account_creation":
                per_pid[int(record["writer"].rsplit("-", 2)[1])] += 1
                ids[record["id"]] += 1
    assert not [i for i, n in ids.items() if n > 1], "a record written twice"
    return per_pid


def verify(audit: Path) -> None:
    done = subprocess.run([MICAFENCE, "audit", "verify", str(audit), "--key-file",
                           f"{audit}.key"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def stop_cleanly(audit: Path) -> None:
    """A last start that names the dead writer's end, then a clean stop."""
    process, _ = start_demo(audit)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=20)


def test_sigkill_in_a_stream_of_451s_never_duplicates_and_keeps_the_chain(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    audit = tmp_path / "audit"
    answered: dict[int, int] = {}
    for _ in range(4):
        process, url = start_demo(audit)
        stop = threading.Event()
        got = [0] * CLIENTS

        def client(number: int, url: str = url, stop: threading.Event = stop,
                   got: list[int] = got) -> None:
            with httpx.Client(timeout=5) as http:
                while not stop.is_set():
                    try:
                        response = http.post(url + "/api/accounts", content=SIGN_UP,
                                             headers={"X-Forwarded-For": SE, **JSON})
                    except httpx.TransportError:
                        return
                    assert response.status_code == 451
                    got[number] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.3, 1.2))
        process.kill()
        process.wait()
        stop.set()
        for thread in threads:
            thread.join()
        answered[process.pid] = sum(got)
    stop_cleanly(audit)
    verify(audit)
    records = blocked_records(audit)
    for pid, count in answered.items():
        # at most the requests in flight at the kill were recorded without an answer
        assert records[pid] <= count + CLIENTS, f"seed {seed}: {records[pid]} > {count}"
        assert records[pid] > 0, f"seed {seed}: nothing durable from a server killed"


@pytest.mark.xfail(strict=True, reason=(
    "a 451 is answered before its record is written: the writer batches every 200 ms "
    "(docs/audit.md, 'what a hard crash can lose is the last 200 ms'), so a SIGKILL right "
    "after an answer loses the record of a 451 the visitor already received"))
def test_every_451_received_before_a_sigkill_has_its_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    answered: dict[int, int] = {}
    for _ in range(3):
        process, url = start_demo(audit)
        with httpx.Client(timeout=5) as http:
            statuses = [http.post(url + "/api/accounts", content=SIGN_UP,
                                  headers={"X-Forwarded-For": SE, **JSON}).status_code
                        for _ in range(10)]
        process.kill()  # every request has its answer: none is in flight
        process.wait()
        assert statuses == [451] * 10
        answered[process.pid] = 10
    stop_cleanly(audit)
    verify(audit)
    records = blocked_records(audit)
    assert {pid: records[pid] for pid in answered} == answered


# --- flood -----------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def decisions(url: str) -> tuple[int, int]:
    with httpx.Client(timeout=10) as http:
        swedish = http.post(url + "/api/accounts", content=SIGN_UP,
                            headers={"X-Forwarded-For": SE, **JSON}).status_code
        american = http.post(url + "/api/accounts", content=SIGN_UP,
                             headers={"X-Forwarded-For": US, **JSON}).status_code
    return swedish, american


def test_a_flood_of_new_addresses_cookies_and_paths_keeps_decisions_and_memory(
    tmp_path: Path,
) -> None:
    process, url = start_demo(tmp_path / "audit")
    try:
        assert decisions(url) == (451, 201)
        before = rss_mib(process.pid)
        until = time.monotonic() + 10
        sent = [0] * 4
        wrong: list[object] = []

        def flood(number: int) -> None:
            rng = random.Random(number)
            with httpx.Client(timeout=10) as http:
                while time.monotonic() < until:
                    bits = rng.getrandbits
                    address = f"2a02:d180:{bits(16):x}:{bits(16):x}::{bits(16):x}"  # Germany
                    path = rng.choice(["/", "/earn", f"/r/{bits(48):x}", f"/p/{bits(64):x}"])
                    headers = {"X-Forwarded-For": address, "X-Client-Id": f"c-{bits(40):x}",
                               "Cookie": f"micafence_arrival={bits(64):x}; v{bits(32):x}=1"}
                    response = http.get(url + path, headers=headers)
                    sent[number] += 1
                    if path != "/" and response.status_code < 400:
                        wrong.append((path, response.status_code))

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        during = []
        while time.monotonic() < until:
            time.sleep(2)
            during.append(decisions(url))
        for thread in threads:
            thread.join()
        grown = rss_mib(process.pid) - before
        assert not wrong, wrong[:5]
        assert set(during) == {(451, 201)}
        assert decisions(url) == (451, 201)
        assert sum(sent) > 2000
        assert grown < 64, f"RSS grew {grown:.0f} MiB over {sum(sent)} requests"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)

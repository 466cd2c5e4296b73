"""Helpers shared by the audit tests: a key, a guarded app with a log, reading records back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from micafence import MicafenceMiddleware, load_policy_text
from micafence.audit.chain import AuditKey
from micafence.audit.log import AuditLog
from micafence.policy.loader import load_policy
from micafence.policy.model import Policy
from tests.conftest import COUNTRY_DB, DEFAULT_POLICY, echo_app

KEY_TEXT = "test-audit-key-0123456789abcdef"
KEY = AuditKey.from_text(KEY_TEXT)
SE, DE6, CH, US, PROXY = "89.160.20.112", "2a02:d180::1", "2a02:d000::1", "216.160.83.56", \
    "127.0.0.1"


def policy_with(*edits: tuple[str, str]) -> Policy:
    """The default policy with text replacements (each must apply)."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return load_policy_text(text, "test-policy.yaml") if edits else load_policy(DEFAULT_POLICY)


def guarded(log: AuditLog, policy: Policy | None = None, app: Any = None,
            **options: Any) -> MicafenceMiddleware:
    return MicafenceMiddleware(app or echo_app(), policy=policy or load_policy(DEFAULT_POLICY),
                               geoip_db=COUNTRY_DB, audit=log, watch=False, **options)


def client(app: Any, peer: str = PROXY) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://exchange.test")


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every record in a file-sink directory, files in name order."""
    records = []
    for path in sorted(directory.glob("audit.*.jsonl")):
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return records


def decisions(directory: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(directory) if r["kind"] == "decision"]

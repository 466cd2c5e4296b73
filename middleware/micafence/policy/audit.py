"""The ``audit`` and ``reporting`` policy sections: how records are kept, and when to warn.

``audit`` says how long records are kept and how much of the client they hold (GDPR data
minimisation); ``reporting`` holds the thresholds ``micafence report`` compares the EU book
with (RULES.md rule 12: the exemption is for *occasional* contact). Both are optional; the
defaults below are the ones the default policy spells out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from micafence.instants import parse_duration
from micafence.policy.yamlfile import Node

#: How ``audit.ip_truncation`` can reduce an address: keep a prefix, or a keyed hash.
IP_HASH = "hash"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``audit``: retention and privacy of the decision log."""

    # Five years: the record-keeping period MiCA (Art. 68(9)) and AML law use for firms that
    # must keep records; counsel may shorten or lengthen it.
    retention: dt.timedelta = dt.timedelta(days=1825)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    hash_ip: bool = False  # True: a keyed hash instead of a prefix
    pseudonymise_client_ids: bool = False
    # A signed checkpoint after every batch, and at least this often when idle, so a chain
    # whose last checkpoint is much older than this was cut short or its writer died.
    checkpoint_interval: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class ReportingThresholds:
    """``reporting``: when the EU book stops looking occasional. ``None``: no threshold."""

    max_active_grants: int | None = None
    max_new_grants_per_month: int | None = None
    max_monthly_growth_percent: int | None = None
    long_running_grant: dt.timedelta = dt.timedelta(days=90)
    max_long_running_grants: int | None = None


DEFAULT_AUDIT = AuditSettings()
DEFAULT_REPORTING = ReportingThresholds()


def parse_audit(top: Mapping[str, Node]) -> AuditSettings:
    """The ``audit`` section of a policy (the defaults when it is absent)."""
    if "audit" not in top:
        return DEFAULT_AUDIT
    fields = top["audit"].mapping(
        ("retention", "ip_truncation", "pseudonymise_client_ids", "checkpoint_interval")
    )
    values: dict[str, object] = {}
    if "retention" in fields:
        values["retention"] = _duration(fields["retention"])
    if "checkpoint_interval" in fields:
        values["checkpoint_interval"] = _duration(fields["checkpoint_interval"])
    if "pseudonymise_client_ids" in fields:
        values["pseudonymise_client_ids"] = fields["pseudonymise_client_ids"].flag()
    if "ip_truncation" in fields:
        node = fields["ip_truncation"]
        if isinstance(node.value, str):
            node.choice((IP_HASH,))
            values["hash_ip"] = True
        else:
            prefixes = node.mapping(("ipv4", "ipv6"))
            if "ipv4" in prefixes:
                values["ipv4_prefix"] = _prefix(prefixes["ipv4"], 32)
            if "ipv6" in prefixes:
                values["ipv6_prefix"] = _prefix(prefixes["ipv6"], 128)
    return dataclasses.replace(DEFAULT_AUDIT, **values)  # type: ignore[arg-type]


def parse_reporting(top: Mapping[str, Node]) -> ReportingThresholds:
    """The ``reporting`` section of a policy (no thresholds when it is absent)."""
    if "reporting" not in top:
        return DEFAULT_REPORTING
    fields = top["reporting"].mapping((
        "max_active_grants", "max_new_grants_per_month", "max_monthly_growth_percent",
        "long_running_grant", "max_long_running_grants",
    ))
    values: dict[str, object] = {
        key: fields[key].integer(minimum=0)
        for key in ("max_active_grants", "max_new_grants_per_month",
                    "max_monthly_growth_percent", "max_long_running_grants")
        if key in fields
    }
    if "long_running_grant" in fields:
        values["long_running_grant"] = _duration(fields["long_running_grant"])
    return ReportingThresholds(**values)  # type: ignore[arg-type]


def _duration(node: Node) -> dt.timedelta:
    try:
        return parse_duration(node.text())
    except ValueError as exc:
        node.fail(str(exc))


def _prefix(node: Node, bits: int) -> int:
    value = node.integer(minimum=0)
    if value > bits:
        node.fail(f"a prefix length is at most {bits}")
    return value


"""The policy's ``health`` section: what readiness reports for a fault every pod shares.

Policy keys read here (validated with their file, key path and line)::

    health:
      store_unreachable: degraded   # degraded | not_ready
      database_stale: degraded      # degraded | not_ready

``degraded`` answers readiness 200 with the problem in the report; ``not_ready`` answers 503, so
the load balancer takes the pod out. Both default to ``degraded``: a shared Redis or a database
shipped to every pod fails on every pod at once, and 503 from all of them would take the whole
fleet out of the load balancer, although micafence already fails safe on each request (grant
checks fail closed while the store is away; a stale database still locates, and is logged and
exported as a metric). See :mod:`micafence.live.health`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from micafence.policy.yamlfile import Node


class Posture(StrEnum):
    """What readiness answers while a fault lasts."""

    DEGRADED = "degraded"  # 200, the problem in the report: keep serving
    NOT_READY = "not_ready"  # 503: take this pod out of the load balancer


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``health``: the posture of each fault that hits every pod alike."""

    store_unreachable: Posture = Posture.DEGRADED
    database_stale: Posture = Posture.DEGRADED


DEFAULT_HEALTH = HealthSettings()
HEALTH_KEYS = ("store_unreachable", "database_stale")


def parse_health(top: Mapping[str, Node]) -> HealthSettings:
    """The ``health`` section, or the defaults."""
    if "health" not in top:
        return DEFAULT_HEALTH
    fields = top["health"].mapping(HEALTH_KEYS)
    return HealthSettings(**{key: Posture(node.choice(list(Posture)))
                             for key, node in fields.items()})

"""Durations as policy settings: :func:`~micafence.instants.parse_duration` with the location.
"""

from __future__ import annotations

import datetime as dt

from micafence.instants import parse_duration
from micafence.policy.yamlfile import Node


def duration_setting(node: Node) -> dt.timedelta:
    """A policy duration setting; a bad one fails naming the file, key path and line."""
    try:
        return parse_duration(node.text())
    except ValueError as exc:
        node.fail(str(exc))

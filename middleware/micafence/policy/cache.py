"""The ``cache:`` policy section: how zone-dependent responses stay out of the wrong hands.

Two safe set-ups (README "Promotions", cache safety):

``private`` (default)
    Zone-dependent responses are ``Cache-Control: private``: no shared cache keeps them.
``edge``
    The CDN puts the visitor's country in a request header and keys its cache on it. micafence
    takes the country from that header (from trusted proxies only) instead of its own GeoIP
    lookup, so its decision always matches the cache key, and answers ``Vary: <header>``
    instead of ``private``. A request without a valid country there is ``unknown_country``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from micafence.policy.yamlfile import Node

_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class CacheSetup(StrEnum):
    PRIVATE = "private"
    EDGE = "edge"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The validated ``cache:`` section."""

    setup: CacheSetup = CacheSetup.PRIVATE
    #: ``edge`` only: the request header the CDN sets to the visitor's ISO country code.
    edge_country_header: str | None = None


DEFAULT_CACHE = CachePolicy()


def parse_cache(node: Node, client_ip: Node | None) -> CachePolicy:
    """Validate the ``cache:`` section; ``edge`` needs a header and proxies to trust it from
    (``client_ip`` is the policy's ``client_ip`` section, validated on its own)."""
    fields = node.mapping(("setup", "edge_country_header"))
    setup = CacheSetup(fields["setup"].choice(list(CacheSetup))) if "setup" in fields \
        else CacheSetup.PRIVATE
    header = None
    if "edge_country_header" in fields:
        header = fields["edge_country_header"].text(_HEADER, "an HTTP header name").lower()
        if setup is not CacheSetup.EDGE:
            fields["edge_country_header"].fail("only used with 'setup: edge'")
    if setup is CacheSetup.EDGE:
        if header is None:
            node.fail("'setup: edge' needs 'edge_country_header' (the header your CDN sets)")
        proxies = client_ip.value.get("trusted_proxies") \
            if client_ip is not None and isinstance(client_ip.value, dict) else None
        if not proxies:
            node.fail("'setup: edge' needs client_ip.trusted_proxies (the CDN's networks): "
                      "the country header is only believed from them")
    return CachePolicy(setup, header)

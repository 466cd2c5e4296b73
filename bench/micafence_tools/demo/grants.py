"""``micafence demo --grants FILE``: grants recorded when the demo starts.

A seeds file::

    grants:
      - client: alice
        service: exchange_for_funds
        asset: BTC
        initiated_at: -PT2H          # two hours before start-up (or an ISO 8601 instant)
        channel: email
        evidence: "demo ticket CS-1001"
        verified_by: demo-compliance
        country: FR                  # where the client is established (ISO 3166-1 alpha-2)

Seeds go through :class:`~micafence.grants.book.GrantBook` like any grant. A seed that an active
grant already matches (same client, service, asset and evidence) is skipped, so restarting the
demo on a ``file://`` store does not pile up duplicates.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

from micafence.errors import GrantError, PolicyError
from micafence.grants.book import GrantBook
from micafence.instants import parse_duration, parse_instant
from micafence.middleware import MicafenceMiddleware
from micafence.policy.model import Policy
from micafence.policy.yamlfile import Node, read_yaml
from micafence.records import GrantStatus

logger = logging.getLogger("micafence.demo")  # under micafence's log handlers

_KEYS = ("client", "service", "asset", "initiated_at", "channel", "evidence", "verified_by",
         "country")


@dataclass(frozen=True, slots=True)
class GrantSeed:
    client: str
    service: str
    asset: str
    initiated_at: dt.datetime | dt.timedelta  # an instant, or how long before start-up
    channel: str
    evidence: str
    verified_by: str
    country: str  # where the client is established
    node: Node  # where it came from, for errors


def seed_on_startup(
    app: MicafenceMiddleware, path: str | os.PathLike[str]
) -> list[GrantSeed]:
    """Check the seeds file now; record its grants in ``app``'s store when the server starts."""
    policy = app.enforcer.policy
    seeds = load_grant_seeds(path, policy)

    async def seed() -> None:
        recorded = await seed_grants(GrantBook(app.store, policy, app.pipeline.grants.clock), seeds)
        logger.warning("micafence demo: %d grant(s) recorded from %s (%d already active)",
                       recorded, path, len(seeds) - recorded)

    app.on_lifespan(startup=seed)
    return seeds


def load_grant_seeds(path: str | os.PathLike[str], policy: Policy) -> list[GrantSeed]:
    """Read a seeds file; errors name the file, key path and line."""
    root, _ = read_yaml(os.fspath(path))
    seeds: list[GrantSeed] = []
    catalogue = policy.catalogue
    for item in root.mapping(("grants",), required=("grants",))["grants"].items():
        fields = item.mapping(_KEYS, required=_KEYS)
        values = {key: fields[key].text() for key in _KEYS}
        if values["service"] not in catalogue.services:
            fields["service"].fail(f"unknown service {values['service']!r} (not in the policy)")
        if values["asset"].upper() not in catalogue.assets:
            fields["asset"].fail(f"unknown asset {values['asset']!r} (not in the policy)")
        seeds.append(GrantSeed(
            values["client"], values["service"], values["asset"],
            _when(fields["initiated_at"]), values["channel"], values["evidence"],
            values["verified_by"], values["country"], item,
        ))
    return seeds


def _when(node: Node) -> dt.datetime | dt.timedelta:
    text = node.text().strip()
    try:
        return parse_duration(text[1:]) if text.startswith("-") else parse_instant(text)
    except ValueError as exc:
        node.fail(f"{exc} (give an ISO 8601 instant or a negative duration such as -PT2H)")


async def seed_grants(book: GrantBook, seeds: list[GrantSeed]) -> int:
    """Record every seed not already active; return how many were recorded."""
    now = book.clock()
    active = {
        (s.grant.client_id, s.grant.service, s.grant.asset, s.grant.evidence)
        for s in await book.list(status=GrantStatus.ACTIVE)
    }
    recorded = 0
    for seed in seeds:
        if (seed.client, seed.service, seed.asset.upper(), seed.evidence) in active:
            continue
        initiated = now - seed.initiated_at if isinstance(seed.initiated_at, dt.timedelta) \
            else seed.initiated_at
        try:
            grant = await book.add(
                client_id=seed.client, service=seed.service, asset=seed.asset,
                initiated_at=initiated, channel=seed.channel, evidence=seed.evidence,
                verified_by=seed.verified_by, country=seed.country,
            )
        except GrantError as exc:
            node = seed.node
            raise PolicyError(node.file, node.path, node.line, str(exc)) from exc
        logger.info("micafence demo: grant %s for %s (%s on %s)",
                    grant.id, grant.client_id, grant.service, grant.asset)
        recorded += 1
    return recorded

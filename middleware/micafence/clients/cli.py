"""``micafence client``: record and read where clients are established (the client registry).

``client set`` appends a residence record (signed like grant records, never overwritten: the
latest is the registry's word); ``client show`` prints a client's standing, the signals it puts
on every request made with its identity, and its records; ``client list`` every client with a
standing. The store, grant key and officer identity are the ``grant`` commands' own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from micafence.clients.registry import ClientRegistry
from micafence.errors import StoreError
from micafence.grants.cli import (
    STORE_ENV,
    add_store_options,
    describe_event,
    require_officer,
)
from micafence.records import Residence, Standing, event_to_json
from micafence.store.opener import open_store

Command = Callable[[ClientRegistry, argparse.Namespace], Awaitable[int]]


def register(commands: Any) -> None:
    """Add ``client`` and its subcommands to the ``micafence`` parser's subparsers."""
    client = commands.add_parser(
        "client", help="record and read where clients are established (the client registry)",
        description="A client is in the zones of the country it is established in, whatever "
        "network it uses: residence records (here, or from the app at sign-up or KYC time) and "
        "the countries of the grants it holds. Records are append-only.",
    )
    sub = client.add_subparsers(dest="client_command", required=True, metavar="SUBCOMMAND")
    set_ = _sub(sub, "set", _set, "record where a client is established")
    set_.add_argument("--client", required=True, help="the client id, as the app identifies it")
    set_.add_argument("--residence", required=True, metavar="CC",
                      help="ISO 3166-1 alpha-2 country where the client is established")
    set_.add_argument("--evidence", required=True,
                      help="reference to the evidence kept (KYC file, document)")
    set_.add_argument("--by", metavar="NAME", help="must match your configured identity "
                      "(MICAFENCE_OFFICER), which is recorded")
    show = _sub(sub, "show", _show, "a client's standing and records")
    show.add_argument("--client", required=True)
    _sub(sub, "list", _list, "every client with a standing (a residence or a grant)")


def _sub(sub: Any, name: str, command: Command, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    add_store_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=lambda args: _run(command, args))
    return parser


def _run(command: Command, args: argparse.Namespace) -> int:
    if not args.store:
        raise StoreError(f"no store: give --store URL or set ${STORE_ENV}")

    async def run() -> int:
        store = open_store(args.store, grant_key=args.grant_key_file)
        try:
            return await command(ClientRegistry(store), args)
        finally:
            await store.close()

    return asyncio.run(run())


async def _set(registry: ClientRegistry, args: argparse.Namespace) -> int:
    officer = require_officer(args.by, "--by")
    try:
        record = await registry.record_residence(
            args.client, args.residence, evidence=args.evidence, by=officer, source="officer")
    except ValueError as exc:
        print(f"micafence client set: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(event_to_json(record), indent=2))
    else:
        print(f"recorded: {record.client_id} is established in {record.country} "
              f"(evidence {record.evidence!r}, by {record.recorded_by})")
    return 0


async def _show(registry: ClientRegistry, args: argparse.Namespace) -> int:
    standing = await registry.standing(args.client)
    events = await registry.history(args.client)
    if args.json:
        print(json.dumps({"client_id": args.client, **_standing_json(standing),
                          "records": [event_to_json(e) for e in events]}, indent=2))
        return 0
    print(f"client     {args.client}")
    print(f"signals    {', '.join(_signals(standing)) or 'none (decided on its requests alone)'}")
    residences = [e for e in events if isinstance(e, Residence)]
    print(f"records    {len(residences)} residence, {len(events) - len(residences)} other")
    for event in events:
        print(f"  {describe_event(event)}")
    return 0


async def _list(registry: ClientRegistry, args: argparse.Namespace) -> int:
    found = await registry.list()
    if args.json:
        print(json.dumps([{"client_id": client, **_standing_json(standing)}
                          for client, standing in found], indent=2))
        return 0
    for client, standing in found:
        print(f"{client}  {', '.join(_signals(standing))}")
    if not found:
        print("no client has a standing", file=sys.stderr)
    return 0


def _signals(standing: Standing) -> list[str]:
    """The signals the standing puts on a request (as decisions name them)."""
    signals = [f"registry:{standing.registry}"] if standing.registry else []
    signals += [f"grant:{country}" for country in standing.grants]
    return signals + (["grant:unnamed"] if standing.legacy else [])


def _standing_json(standing: Standing) -> dict[str, object]:
    return {"residence": standing.registry, "grant_countries": list(standing.grants),
            "grant_without_country": standing.legacy, "signals": _signals(standing)}

"""``micafence grant``: record, revoke and read client-initiated grants from the command line.

Every subcommand works on the store named by ``--store`` (or ``$MICAFENCE_STORE``) through
:class:`~micafence.grants.GrantBook`, so the CLI and the Python API refuse the same things.
``add`` prints the new grant's id; ``--json`` prints records as JSON instead.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .catalogue import format_duration, parse_duration
from .errors import StoreError
from .grants import Grant, GrantBook, GrantEvent, GrantState, GrantStatus, event_to_json
from .grants import parse_instant as _parse_instant
from .policy_loader import default_policy_path, load_policy
from .store import Store, open_store

STORE_ENV = "MICAFENCE_STORE"
POLICY_ENV = "MICAFENCE_POLICY"

Command = Callable[[GrantBook, argparse.Namespace], Awaitable[int]]


def register(commands: Any) -> None:
    """Add ``grant`` and its subcommands to the ``micafence`` parser's subparsers."""
    grant = commands.add_parser(
        "grant", help="record, revoke and read client-initiated grants",
        description="Grants are the firm's verified records that an EU client approached it on "
        "its own initiative for one service on one asset. History is append-only.",
    )
    sub = grant.add_subparsers(dest="grant_command", required=True, metavar="SUBCOMMAND")

    add = _sub(sub, "add", _add, "record a grant (prints its id)")
    add.add_argument("--client", required=True, help="the client id, as the app identifies it")
    add.add_argument("--service", required=True, help="a service key from the policy")
    add.add_argument("--asset", required=True, help="an asset symbol from the policy")
    add.add_argument("--initiated-at", required=True, type=_instant, metavar="ISO8601",
                     help="when the client approached the firm, with a UTC offset")
    add.add_argument("--channel", required=True, help="how it did (email, phone, web form, …)")
    add.add_argument("--evidence", required=True, help="reference to the evidence kept")
    add.add_argument("--verified-by", required=True, help="who verified the evidence")
    add.add_argument("--term", type=_duration, metavar="DURATION",
                     help="shorter scope term than the policy's (ISO 8601, e.g. P14D)")
    add.add_argument("--same-type-window", type=_duration, metavar="DURATION",
                     help="shorter same-type window than the policy's (e.g. PT12H)")
    add.add_argument("--country", help="country the client was seen in (ISO 3166-1 alpha-2)")
    add.add_argument("--override-solicitation", metavar="REASON",
                     help="record the grant although the client has solicitation evidence, "
                     "for this recorded reason")
    add.add_argument("--policy", help=f"policy whose catalogue applies (default: ${POLICY_ENV}, "
                     "else the packaged default policy)")

    revoke = _sub(sub, "revoke", _revoke, "end a grant now (a new record)")
    revoke.add_argument("grant_id")
    revoke.add_argument("--by", required=True, help="who revokes it")
    revoke.add_argument("--reason", required=True, help="why")

    listing = _sub(sub, "list", _list, "grants, newest last")
    listing.add_argument("--client", help="only this client's grants")
    listing.add_argument("--status", choices=[s.value for s in GrantStatus],
                         help="only grants with this status now")

    show = _sub(sub, "show", _show, "one grant with its status and revocation")
    show.add_argument("grant_id")

    history = _sub(sub, "history", _history, "the raw records, oldest first")
    history.add_argument("grant_id", nargs="?", help="only this grant's records")
    history.add_argument("--client", help="only this client's records")

    export = _sub(sub, "export", _export, "every record as JSON Lines, for audit")
    export.add_argument("--output", "-o", help="write to this file instead of standard output")


def _sub(sub: Any, name: str, command: Command, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    parser.add_argument("--store", default=os.environ.get(STORE_ENV),
                        help=f"grant store URL: file:///PATH or redis://… "
                        f"(default: ${STORE_ENV})")
    if name != "export":
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=lambda args: _run(command, args))
    return parser


def _run(command: Command, args: argparse.Namespace) -> int:
    if not args.store:
        raise StoreError(f"no grant store: give --store URL or set ${STORE_ENV}")
    if args.store.lower().startswith("memory:"):
        print("micafence: memory:// keeps nothing after this command: use file:///PATH or "
              "redis://… to share grants with the app", file=sys.stderr)
    policy = None
    if args.grant_command == "add":
        policy = load_policy(Path(args.policy or os.environ.get(POLICY_ENV)
                                  or default_policy_path()))

    async def run() -> int:
        store: Store = open_store(args.store)
        try:
            return await command(GrantBook(store, policy), args)
        finally:
            await store.close()

    return asyncio.run(run())


def _instant(text: str) -> dt.datetime:
    try:
        return _parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- subcommands ---------------------------------------------------------------------------------


async def _add(book: GrantBook, args: argparse.Namespace) -> int:
    grant = await book.add(
        client_id=args.client, service=args.service, asset=args.asset,
        initiated_at=args.initiated_at, channel=args.channel, evidence=args.evidence,
        verified_by=args.verified_by, term=args.term, same_type_window=args.same_type_window,
        country=args.country, override_solicitation=args.override_solicitation,
    )
    if args.json:
        _print_json(await book.get(grant.id), book)
    else:
        print(grant.id)
    return 0


async def _revoke(book: GrantBook, args: argparse.Namespace) -> int:
    revocation = await book.revoke(args.grant_id, revoked_by=args.by, reason=args.reason)
    if args.json:
        _print_json(await book.get(args.grant_id), book)
    else:
        print(f"{revocation.grant_id} revoked at {revocation.revoked_at.isoformat()}")
    return 0


async def _list(book: GrantBook, args: argparse.Namespace) -> int:
    status = GrantStatus(args.status) if args.status else None
    states = await book.list(client_id=args.client, status=status)
    now = book.clock()
    if args.json:
        print(json.dumps([state.as_dict(now) for state in states], indent=2))
        return 0
    header = ("id", "client", "service", "asset", "status", "initiated", "expires")
    rows = [header] + [
        (s.grant.id, s.grant.client_id, s.grant.service, s.grant.asset, s.status(now).value,
         _short(s.grant.initiated_at), _short(s.grant.expires_at))
        for s in states
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


async def _show(book: GrantBook, args: argparse.Namespace) -> int:
    state = await book.get(args.grant_id)
    if args.json:
        _print_json(state, book)
        return 0
    grant, now = state.grant, book.clock()
    rows = [
        ("grant", grant.id), ("status", state.status(now).value), ("client", grant.client_id),
        ("service", grant.service), ("asset", grant.asset),
        ("initiated", f"{grant.initiated_at.isoformat()} via {grant.channel}"),
        ("evidence", grant.evidence), ("verified by", grant.verified_by),
        ("recorded", f"{grant.recorded_at.isoformat()} (policy {grant.policy_revision})"),
        ("term", f"{format_duration(grant.term)}: until {grant.expires_at.isoformat()}"),
        ("same type", f"{format_duration(grant.same_type_window)}: until "
                      f"{grant.same_type_until.isoformat()}"),
    ]
    if grant.country:
        rows.append(("seen in", grant.country))
    if grant.solicitation_override:
        rows.append(("override", f"{grant.solicitation_override} "
                                 f"({grant.solicitations_seen} solicitation records)"))
    if state.revocation is not None:
        r = state.revocation
        rows.append(("revoked", f"{r.revoked_at.isoformat()} by {r.revoked_by}: {r.reason}"))
    for label, value in rows:
        print(f"{label:<12}{value}")
    return 0


async def _history(book: GrantBook, args: argparse.Namespace) -> int:
    events = await book.history(grant_id=args.grant_id, client_id=args.client)
    if args.json:
        print(json.dumps([event_to_json(e) for e in events], indent=2))
        return 0
    for event in events:
        print(_describe(event))
    return 0


async def _export(book: GrantBook, args: argparse.Namespace) -> int:
    lines = [json.dumps(event_to_json(e), sort_keys=True) + "\n" for e in await book.history()]
    if args.output:
        Path(args.output).write_text("".join(lines), encoding="utf-8")
        print(f"{len(lines)} records written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.writelines(lines)
    return 0


def _print_json(state: GrantState, book: GrantBook) -> None:
    print(json.dumps(state.as_dict(book.clock()), indent=2))


def _short(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def _describe(event: GrantEvent) -> str:
    if isinstance(event, Grant):
        return (f"{event.recorded_at.isoformat()}  grant   {event.id}  {event.client_id} "
                f"{event.service} {event.asset}, initiated {event.initiated_at.isoformat()} via "
                f"{event.channel}, evidence {event.evidence!r}, verified by {event.verified_by}")
    return (f"{event.revoked_at.isoformat()}  revoke  {event.grant_id}  {event.client_id}, "
            f"by {event.revoked_by}: {event.reason}")

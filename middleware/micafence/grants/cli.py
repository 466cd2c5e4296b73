"""``micafence grant``: record, approve, revoke and read client-initiated grants.

Every subcommand works on the store named by ``--store`` (or ``$MICAFENCE_STORE``) through
:class:`~micafence.grants.book.GrantBook`, so the CLI and the Python API refuse the same things.
``add`` prints the new grant's id (and, with ``--onboarding``, the single-use token, once);
``--json`` prints records as JSON instead. Records are signed with the grant key
(``--grant-key-file``, else ``$MICAFENCE_GRANT_KEY[_FILE]``).

Who verified, approved or revoked is the officer's **configured identity**, never a free-text
flag: ``$MICAFENCE_OFFICER``, else the first line of ``~/.config/micafence/officer``
(``$XDG_CONFIG_HOME`` is honoured). ``--verified-by`` and ``--by`` are only checks that must
match it.
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

from micafence.errors import GrantError, StoreError
from micafence.grants.book import GrantBook
from micafence.grants.onboarding import issue_token
from micafence.grants.signing import KEY_FILE_ENV, write_key_file
from micafence.instants import format_duration, instant_argument, parse_duration
from micafence.policy.loader import default_policy_path, load_policy
from micafence.policy.model import Policy
from micafence.records import (
    AccountBinding,
    Approval,
    ArrivalLink,
    Grant,
    GrantEvent,
    GrantState,
    GrantStatus,
    Residence,
    event_to_json,
)
from micafence.store.base import Store
from micafence.store.opener import open_store

STORE_ENV = "MICAFENCE_STORE"
POLICY_ENV = "MICAFENCE_POLICY"
OFFICER_ENV = "MICAFENCE_OFFICER"

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
    add.add_argument("--initiated-at", required=True, type=instant_argument, metavar="ISO8601",
                     help="when the client approached the firm, with a UTC offset")
    add.add_argument("--channel", required=True, help="how it did (email, phone, web form, …)")
    add.add_argument("--evidence", required=True, help="reference to the evidence kept")
    add.add_argument("--verified-by", metavar="NAME", help="must match your configured "
                     f"identity (${OFFICER_ENV}), which is recorded as the verifier")
    add.add_argument("--term", type=_duration, metavar="DURATION",
                     help="shorter scope term than the policy's (ISO 8601, e.g. P14D)")
    add.add_argument("--same-type-window", type=_duration, metavar="DURATION",
                     help="shorter same-type window than the policy's (e.g. PT12H)")
    add.add_argument("--country", metavar="CC",
                     help="required: where the client is established (ISO 3166-1 alpha-2, "
                     "e.g. FR); the grant puts the client in that country's zones")
    add.add_argument("--override-reason", "--override-solicitation", dest="override_reason",
                     metavar="REASON",
                     help="record the grant although the client was solicited within "
                     "promotions.solicitation_lookback, for this recorded reason; it is then "
                     "pending until a second officer runs `grant approve`")
    add.add_argument("--onboarding", action="store_true",
                     help="also issue the client's single-use onboarding token (shown once)")
    add.add_argument("--policy", help=f"policy whose catalogue applies (default: ${POLICY_ENV}, "
                     "else the packaged default policy)")

    revoke = _sub(sub, "revoke", _revoke, "end a grant now (a new record)")
    revoke.add_argument("grant_id")
    revoke.add_argument("--by", metavar="NAME", help="must match your configured identity")
    revoke.add_argument("--reason", required=True, help="why")

    approve = _sub(sub, "approve", _approve,
                   "maker-checker: put a pending grant in force (another officer than its maker)")
    approve.add_argument("grant_id")
    approve.add_argument("--by", metavar="NAME", help="must match your configured identity")

    token = _sub(sub, "token", _token, "issue a new single-use onboarding token for a grant")
    token.add_argument("grant_id")
    token.add_argument("--policy", help="policy whose onboarding.token_ttl applies")

    keygen = sub.add_parser("keygen", help="create a grant key file (mode 0600)",
                            description="Create a new random grant key in FILE (never "
                            "overwritten). Give it to the middleware and to this command.")
    keygen.add_argument("file")
    keygen.set_defaults(func=_keygen)

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


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--store`` and ``--grant-key-file``: the ``grant`` and ``client`` commands' store."""
    parser.add_argument("--store", default=os.environ.get(STORE_ENV),
                        help=f"grant store URL: file:///PATH or redis://… "
                        f"(default: ${STORE_ENV})")
    parser.add_argument("--grant-key-file", metavar="FILE",
                        help=f"the grant key that signs records (default: $MICAFENCE_GRANT_KEY, "
                        f"else ${KEY_FILE_ENV}); a key file must be mode 0600 or stricter")


def _sub(sub: Any, name: str, command: Command, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    add_store_options(parser)
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
    if args.grant_command in ("add", "token"):
        policy = load_policy(Path(args.policy or os.environ.get(POLICY_ENV)
                                  or default_policy_path()))

    async def run() -> int:
        store: Store = open_store(args.store, grant_key=args.grant_key_file)
        try:
            return await command(GrantBook(store, policy), args)
        finally:
            await store.close()

    return asyncio.run(run())


def configured_officer() -> str | None:
    """The officer running the command: ``$MICAFENCE_OFFICER``, else the officer file."""
    name = os.environ.get(OFFICER_ENV, "").strip()
    if name:
        return name
    try:
        lines = _officer_file().read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return (lines[0].strip() or None) if lines else None


def _officer_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "micafence" / "officer"


def require_officer(claimed: str | None, option: str) -> str:
    """The configured officer (who runs the command); ``claimed`` (``--by``) must match it."""
    officer = configured_officer()
    if officer is None:
        raise GrantError(f"no officer identity: set ${OFFICER_ENV} or write your name in "
                         f"{_officer_file()} (it is recorded as who verified, approved or "
                         "revoked)")
    if claimed is not None and claimed.strip().casefold() != officer.casefold():
        raise GrantError(f"{option} {claimed} does not match your configured identity "
                         f"{officer!r} (${OFFICER_ENV} or {_officer_file()})")
    return officer


def _duration(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- subcommands ---------------------------------------------------------------------------------


async def _add(book: GrantBook, args: argparse.Namespace) -> int:
    officer = require_officer(args.verified_by, "--verified-by")
    policy = _policy(book)
    if args.onboarding and (policy.grant_store.maker_checker or args.override_reason):
        why = ("a grant recorded with --override-reason" if args.override_reason
               else "under maker-checker a grant")
        raise GrantError(f"{why} is pending until a second officer approves it: issue its "
                         "onboarding token after `micafence grant approve` with "
                         "`micafence grant token GRANT_ID`")
    grant = await book.add(
        client_id=args.client, service=args.service, asset=args.asset,
        initiated_at=args.initiated_at, channel=args.channel, evidence=args.evidence,
        verified_by=officer, term=args.term, same_type_window=args.same_type_window,
        country=args.country, override_solicitation=args.override_reason,
    )
    token = None
    if args.onboarding:
        token, ticket = await issue_token(book, grant.id, issued_by=officer,
                                          ttl=policy.onboarding.token_ttl)
    if args.json:
        view = (await book.get(grant.id)).as_dict(book.clock())
        if token is not None:
            view.update(onboarding_token=token, onboarding_expires_at=ticket.expires_at.isoformat())
        print(json.dumps(view, indent=2))
        return 0
    print(grant.id)
    if grant.renewal_of is not None:
        print(f"micafence: {grant.id} renews {grant.renewal_of}", file=sys.stderr)
    if grant.approval_required:
        print(f"micafence: {grant.id} is pending until a second, different officer runs "
              f"`micafence grant approve {grant.id}`", file=sys.stderr)
    if token is not None:
        print(f"onboarding token (shown once, valid until {ticket.expires_at.isoformat()}): "
              f"{token}")
    return 0


async def _approve(book: GrantBook, args: argparse.Namespace) -> int:
    approval = await book.approve(args.grant_id, approved_by=require_officer(args.by, "--by"))
    if args.json:
        _print_json(await book.get(args.grant_id), book)
    else:
        print(f"{approval.grant_id} approved by {approval.approved_by} at "
              f"{approval.approved_at.isoformat()}")
    return 0


async def _token(book: GrantBook, args: argparse.Namespace) -> int:
    token, ticket = await issue_token(book, args.grant_id, issued_by=require_officer(None, ""),
                                      ttl=_policy(book).onboarding.token_ttl)
    if args.json:
        print(json.dumps({"grant_id": ticket.grant_id, "client_id": ticket.client_id,
                          "onboarding_token": token,
                          "onboarding_expires_at": ticket.expires_at.isoformat()}, indent=2))
    else:
        print(f"onboarding token for {ticket.grant_id} (shown once, valid until "
              f"{ticket.expires_at.isoformat()}): {token}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    key = write_key_file(args.file)
    print(f"grant key {key.key_id} written to {args.file}: give it to the middleware "
          f"(grant_key= or ${KEY_FILE_ENV}) and to `micafence grant` (--grant-key-file)")
    return 0


def _policy(book: GrantBook) -> Policy:
    assert book.policy is not None  # loaded by _run for the commands that need it
    return book.policy


async def _revoke(book: GrantBook, args: argparse.Namespace) -> int:
    revocation = await book.revoke(args.grant_id, revoked_by=require_officer(args.by, "--by"),
                                   reason=args.reason)
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
    rows.append(("established", grant.country or "not recorded (a grant from before "
                 "grants named the client's country)"))
    if grant.renewal_of:
        rows.append(("renewal of", grant.renewal_of))
    if grant.solicitation_override:
        rows.append(("override", f"{grant.solicitation_override} "
                                 f"({grant.solicitations_seen} solicitation records)"))
    if grant.approval_required:
        rows.append(("approved", "pending: awaiting a second officer" if state.approval is None
                     else f"{state.approval.approved_at.isoformat()} by "
                          f"{state.approval.approved_by}"))
    for account in state.accounts:
        rows.append(("account", f"{account.account_id} (onboarded "
                                f"{account.bound_at.isoformat()})"))
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
        print(describe_event(event))
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


def describe_event(event: GrantEvent) -> str:
    """One line of ``grant history`` / ``client show``."""
    if isinstance(event, Grant):
        return (f"{event.recorded_at.isoformat()}  grant   {event.id}  {event.client_id} "
                f"{event.service} {event.asset}, initiated {event.initiated_at.isoformat()} via "
                f"{event.channel}, evidence {event.evidence!r}, verified by {event.verified_by}"
                + (f", renews {event.renewal_of}" if event.renewal_of else "")
                + (" (awaits approval)" if event.approval_required else ""))
    if isinstance(event, Approval):
        return (f"{event.approved_at.isoformat()}  approve {event.grant_id}  {event.client_id}, "
                f"by {event.approved_by}")
    if isinstance(event, AccountBinding):
        return (f"{event.bound_at.isoformat()}  account {event.grant_id}  {event.client_id}: "
                f"account {event.account_id} opened with the onboarding token")
    if isinstance(event, Residence):
        return (f"{event.recorded_at.isoformat()}  resides {event.client_id} in {event.country}, "
                f"evidence {event.evidence!r}, recorded by {event.recorded_by} ({event.source})")
    if isinstance(event, ArrivalLink):
        return (f"{event.linked_at.isoformat()}  linked  {event.client_id}: arrival "
                f"{event.subject} solicited {event.solicited_at.isoformat()}"
                + (f" via {event.marker}" if event.marker else ""))
    return (f"{event.revoked_at.isoformat()}  revoke  {event.grant_id}  {event.client_id}, "
            f"by {event.revoked_by}: {event.reason}")

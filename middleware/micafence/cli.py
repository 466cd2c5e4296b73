"""The ``micafence`` command: check and test policies, explain decisions.

Other distributions add commands through the ``micafence.subcommands`` entry-point group
(:data:`SUBCOMMANDS`): ``micafence demo`` and ``micafence bench`` come from micafence-tools, in
this repository's ``bench/`` directory. They are loaded only when the command asked for is not
one of the core's, so ``micafence check`` imports nothing outside the core package and its
required dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from micafence import __version__
from micafence.ci import FORMATS, Checked, check_report, write_junit
from micafence.decide import Enforcer
from micafence.errors import GeoIPDatabaseError, MicafenceError, PolicyError
from micafence.identity import ClientIdentity, clean_client_id, clean_country
from micafence.instants import parse_instant
from micafence.live.archive import ARCHIVE_ENV, policy_for_explain
from micafence.live.breakglass import DIR_ENV as BREAKGLASS_ENV
from micafence.live.breakglass import register as register_breakglass
from micafence.live.breakglass import state_for as breakglass_state
from micafence.location.anonymizer import AnonymousIPDatabase
from micafence.location.geo import GeoIPDatabase
from micafence.pipeline import Action, Pipeline, Trial, dry_pipeline, trial
from micafence.policy.casefile import CaseFile, check_cases, run_cases
from micafence.policy.coverage import precedence_notes
from micafence.policy.loader import check_policy, default_policy_path, load_policy
from micafence.policy.probe import build_scope, parse_header_option
from micafence.policy.schema import schema_path, schema_text
from micafence.store.opener import open_store

T = TypeVar("T")
GEOIP_ENV = "MICAFENCE_GEOIP_DB"
POLICY_ENV = "MICAFENCE_POLICY"
SUBCOMMANDS = "micafence.subcommands"
"""Entry-point group: the name is the command, the object a function given the subparsers
action (``argparse``'s ``add_subparsers()`` result) that adds that command."""

# Commands of micafence-tools, named when it is not installed.
_TOOL_COMMANDS = frozenset({"demo", "bench"})


def bundled_test_database() -> Path:
    """MaxMind's small *test* database shipped for the demo (never for production)."""
    return Path(str(resources.files("micafence") / "data" / "GeoLite2-Country-Test.mmdb"))


def _policy_path(given: str | None) -> Path:
    return Path(given or os.environ.get(POLICY_ENV) or default_policy_path())


def _database_path(given: str | None) -> Path:
    chosen = given or os.environ.get(GEOIP_ENV)
    if chosen:
        return Path(chosen)
    print(
        f"micafence: no --geoip-db or {GEOIP_ENV}: using the bundled MaxMind TEST database "
        "(demo data, not real geolocation)",
        file=sys.stderr,
    )
    return bundled_test_database()


def _cmd_check(args: argparse.Namespace) -> int:
    checked = []
    for file in args.policies:
        policy, errors = check_policy(file)
        notes = precedence_notes(policy) if policy is not None else []
        checked.append(Checked(file, policy, errors, notes))
    sys.stdout.write(check_report(checked, args.format))
    return 1 if any(item.errors for item in checked) else 0


def _cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{schema_path()}\n" if args.path else schema_text())
    return 0


def _dry_run(store_url: str, run: Callable[[Pipeline], Awaitable[T]]) -> T:
    """``run`` on a side-effect-free pipeline over the store at ``store_url`` (then closed)."""

    async def main() -> T:
        store = open_store(store_url)
        try:
            return await run(dry_pipeline(store))
        finally:
            await store.close()

    return asyncio.run(main())


def _cmd_test(args: argparse.Namespace) -> int:
    policy, errors = check_policy(args.policy)
    case_file, case_errors = check_cases(args.cases)
    errors += case_errors
    database: GeoIPDatabase | None = None
    if case_file is not None:
        try:
            database = _test_database(args.geoip_db, case_file)
        except PolicyError as exc:
            errors.append(exc)
    if errors or policy is None or case_file is None or database is None:
        for error in errors:
            print(error, file=sys.stderr)
        if args.junit_xml:
            write_junit(args.junit_xml, args.cases, [], errors)
        print(f"{len(errors)} error{'s' if len(errors) != 1 else ''}: no case run",
              file=sys.stderr)
        return 1
    enforcer = Enforcer(policy, database)
    cases = case_file.cases
    results = _dry_run(args.store, lambda pipeline: run_cases(enforcer, pipeline, cases))
    print(f"policy {policy.name} {policy.revision}; database {database.database_type} built "
          f"{database.built_at:%Y-%m-%d} ({database.path})")
    for result in results:
        where = f"{args.cases}:{result.case.line}"
        if result.passed:
            if args.verbose:
                print(f"PASS {result.case.name}")
            continue
        print(f"FAIL {result.case.name} ({where})")
        for failure in result.failures:
            print(f"     {failure}")
    passed = sum(r.passed for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    if args.junit_xml:
        write_junit(args.junit_xml, args.cases, results)
    return 0 if passed == len(results) else 1


def _test_database(given: str | None, case_file: CaseFile) -> GeoIPDatabase:
    """``--geoip-db``, else the database the cases file names (``geoip_db:``), else
    ``$MICAFENCE_GEOIP_DB``, else the bundled test database (with a notice)."""
    if given or case_file.geoip_db is None:
        if not given and not os.environ.get(GEOIP_ENV):
            print(f"micafence: {case_file.path} names no database (geoip_db:), and there is no "
                  f"--geoip-db or ${GEOIP_ENV}", file=sys.stderr)
        path = _database_path(given)
        try:
            return GeoIPDatabase(path)
        except GeoIPDatabaseError as exc:  # an error like the files' (and in the JUnit report)
            raise PolicyError(str(path), "", None, f"{exc.problem} (the GeoIP database)") from exc
    named = case_file.geoip_db
    if not named.is_file():
        raise PolicyError(case_file.path, "geoip_db", case_file.geoip_db_line,
                          f"the database these cases are written for, {named}, is not a file "
                          "(give it with --geoip-db)")
    try:
        return GeoIPDatabase(named)
    except GeoIPDatabaseError as exc:
        raise PolicyError(case_file.path, "geoip_db", case_file.geoip_db_line,
                          f"the database these cases are written for, {named}: "
                          f"{exc.problem}") from exc


def _cmd_explain(args: argparse.Namespace) -> int:
    at = parse_instant(args.at) if args.at else None
    archive_dir = args.archive or os.environ.get(ARCHIVE_ENV)
    if at is not None and archive_dir is None and args.revision is None:
        print(f"micafence: no --archive or ${ARCHIVE_ENV}: deciding with the current policy "
              "file, with the zones and rules it has in force at --at", file=sys.stderr)
    policy = policy_for_explain(_policy_path(args.policy), archive_dir, args.revision, at)
    database = GeoIPDatabase(_database_path(args.geoip_db))
    anonymizer = AnonymousIPDatabase(args.anonymizer_db) if args.anonymizer_db else None
    breakglass = breakglass_state(args.breakglass_dir or os.environ.get(BREAKGLASS_ENV), at)
    identify = None
    if args.client is not None:  # decide with this identity, whatever the policy's source
        identity = ClientIdentity(clean_client_id(args.client), clean_country(args.residence))
        if identity.client_id is None:
            raise MicafenceError(f"--client {args.client!r} is not a client id")
        policy = replace(policy, client_identity=replace(policy.client_identity,
                                                         source="callable"))
        identify = lambda scope: identity  # noqa: E731
    enforcer = Enforcer(policy, database, anonymizer=anonymizer, breakglass=breakglass,
                        identify=identify, clock=None if at is None else lambda: at)
    headers = [parse_header_option(h) for h in args.header]
    scope = build_scope(args.ip, args.method, args.path, headers)
    tried: Trial = _dry_run(args.store, lambda pipeline: trial(enforcer, pipeline, scope))
    decision = tried.decision
    action = _ACTIONS[tried.action] if tried.status is None else f"answer {tried.status}"
    if args.json:
        print(json.dumps({**decision.as_dict(), "action": tried.action.value,
                          "status": tried.status, "database_type": database.database_type,
                          "policy_source": policy.source, "at": enforcer.in_force_at.isoformat(),
                          "breakglass_switches": breakglass.as_dict()["switches"]}, indent=2))
        return 0
    verdict = "BLOCK" if decision.blocked else (
        f"PASS (shadow: would {decision.outcome.value})" if decision.would_block else "PASS"
    )
    signals = (
        f"country {decision.country or '-'}, registered {decision.registered_country or '-'}"
        + (f", residence {decision.residence_country}" if decision.residence_country else "")
    )
    rows = [
        ("decision", verdict),
        ("action", action),
        ("reason", decision.reason),
        ("rule", f"{decision.rule_id} (mode {decision.mode.value})"),
        ("route", f"{decision.route_id or '-'} (class {decision.route_class})"),
        ("client", f"{decision.client_ip or 'unknown'}: {signals}"),
        ("zones", ", ".join(decision.zones) or "none"),
        ("signals", ", ".join(decision.signals) or "none put it in a zone"),
        ("promotions", decision.promotion_stance.value),
        ("client id", decision.client_id or "-"),
        ("policy", f"{policy.name} {policy.revision} ({policy.source})"),
        ("database", f"{database.database_type} built {database.built_at:%Y-%m-%d} "
                     f"({database.path})"),
        ("at", f"{enforcer.in_force_at.isoformat()} (effective dates)"),
        ("anonymizer", (", ".join(decision.anonymizer) or "no flag") + (
            f" ({anonymizer.database_type} built {anonymizer.built_at:%Y-%m-%d})"
            if anonymizer else " (no --anonymizer-db)")),
        ("breakglass", breakglass.describe()),
    ]
    for label, value in rows:
        print(f"{label:<11}{value}")
    return 0


def _cmd_routes(args: argparse.Namespace) -> int:
    # Imports the app (and so its Starlette): only this command does.
    from micafence.app_routes import (
        app_routes,
        falling_through,
        load_app,
        report_json,
        report_text,
        route_rows,
    )

    policy = load_policy(_policy_path(args.policy))
    rows = route_rows(policy, app_routes(load_app(args.app, args.app_dir)))
    if args.format == "json":
        sys.stdout.write(report_json(args.app, policy, rows, args.strict))
    else:
        sys.stdout.write(report_text(args.app, policy, rows))
    return 1 if args.strict and falling_through(rows) else 0


_ACTIONS = {
    Action.PASS: "pass to the app",
    Action.PASS_WRAPPED: "pass to the app (its answer made safe: promotions, caching)",
    Action.ANSWER: "answer",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command`` is the command about to run (``None``: unknown, as for
    ``--help``). Commands of other distributions are added only when it is not a core command:
    the one named ``command`` if installed, else all of them."""
    parser = argparse.ArgumentParser(
        prog="micafence",
        description="MiCA reverse-solicitation fence for ASGI apps: check and test policies, "
        "explain decisions (with micafence-tools: run the demo exchange and the benchmark).",
    )
    parser.add_argument("--version", action="version", version=f"micafence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="validate policy files",
        description="Validate policy files and report every error found, one line each: "
        "FILE:LINE: KEY.PATH: PROBLEM; then what the route entries decide: FILE:LINE: "
        "routes[N]: warning: an entry no request reaches, or a tie the file's order breaks; "
        "notice: on a version 1 file, each entry that would stop deciding some request under "
        "version 2. Exit 0 when every file is valid (warnings and notices included), 1 when "
        "any has an error (or cannot be read), 2 on a usage error.",
    )
    check.add_argument("policies", nargs="+", metavar="POLICY", help="policy YAML file(s)")
    check.add_argument("--format", choices=FORMATS, default="text",
                       help="text (default), json (one document on stdout), or github "
                       "(GitHub Actions ::error annotations on the file and line)")
    check.set_defaults(func=_cmd_check)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of policy files",
        description="Print the JSON Schema of policy files (for editors; micafence check "
        "validates more than it can say), or with --path where the installed copy is.")
    schema.add_argument("--path", action="store_true",
                        help="print the installed schema file's path instead")
    schema.set_defaults(func=_cmd_schema)

    test = commands.add_parser("test", help="check a policy against expected decisions",
                               description="Decide every request in CASES and compare with its "
                               "expectations. Exit 0 when every case passes, 1 when a case "
                               "fails or a file has an error, 2 on a usage error.")
    test.add_argument("policy", help="policy YAML file")
    test.add_argument("cases", help="cases YAML file (see micafence.policy.casefile)")
    test.add_argument("--geoip-db", help="MaxMind database (default: the cases file's "
                      f"geoip_db, else ${GEOIP_ENV}, else the bundled test database)")
    test.add_argument("--junit-xml", metavar="PATH", help="also write a JUnit XML report "
                      "(one testcase per case; a failure gives the expected and actual decision)")
    test.add_argument("-v", "--verbose", action="store_true", help="print passing cases too")
    test.add_argument("--store", default="memory://", metavar="URL",
                      help="grant store the cases are settled against, read only (default "
                      "memory://: no grants)")
    test.set_defaults(func=_cmd_test)

    explain = commands.add_parser("explain", help="what would happen to this request, and why",
                                  description="Decide one synthetic request and print the "
                                  "decision, reason, rule, policy revision and database build.")
    explain.add_argument("--ip", help="address of the direct peer (omit: no address)")
    explain.add_argument("--method", default="GET", help="HTTP method (default GET)")
    explain.add_argument("--path", default="/", help="request target, may include ?query")
    explain.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="request header, repeatable (e.g. 'X-Forwarded-For: 1.2.3.4')")
    explain.add_argument("--policy", help=f"policy file (default: ${POLICY_ENV}, "
                         "else the packaged default policy)")
    explain.add_argument("--geoip-db", help=f"MaxMind database (default: ${GEOIP_ENV}, "
                         "else the bundled test database)")
    explain.add_argument("--client", metavar="ID", help="decide as if the request carried this "
                         "client identity (its registry standing is read from --store)")
    explain.add_argument("--residence", metavar="CC", help="with --client: the residence its "
                         "identity carries (KYC)")
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.add_argument("--store", default="memory://", metavar="URL",
                         help="grant store the request is settled against, read only (default "
                         "memory://: no grants); a grant key from $MICAFENCE_GRANT_KEY[_FILE]")
    explain.add_argument("--at", metavar="TIME", help="ISO 8601 instant: decide as at that "
                         "time (effective dates, break-glass, and the archived revision then)")
    explain.add_argument("--revision", metavar="REV", help="decide with this archived policy "
                         "revision (sha256:..., or a unique prefix)")
    explain.add_argument("--archive", metavar="DIR",
                         help=f"policy archive directory (default: ${ARCHIVE_ENV})")
    explain.add_argument("--anonymizer-db", metavar="DB",
                         help="MaxMind Anonymous-IP database (default: none)")
    explain.add_argument("--breakglass-dir", metavar="DIR",
                         help=f"break-glass directory (default: ${BREAKGLASS_ENV})")
    explain.set_defaults(func=_cmd_explain)

    routes = commands.add_parser(
        "routes", help="what the policy makes of every route of a Starlette or FastAPI app",
        description="Import the app (package.module:attribute), walk its routes, mounts and "
        "sub-apps, and print each path and method with the class the policy gives it and the "
        "entry that decides it ('unlisted': the policy's unlisted default). Exit 0; with "
        "--strict, 1 when an unsafe method (not GET, HEAD or OPTIONS; an app mounted whole "
        "counts as every method, a websocket as unsafe where no entry names its path) falls "
        "to the unlisted default; 1 when the app "
        "or the policy cannot be loaded; 2 on a usage error.",
    )
    routes.add_argument("app", metavar="APP", help="the app, as package.module:attribute")
    routes.add_argument("--policy", help=f"policy file (default: ${POLICY_ENV}, else the "
                        "packaged default policy)")
    routes.add_argument("--app-dir", default=".", metavar="DIR",
                        help="directory put first on the import path (default: .)")
    routes.add_argument("--strict", action="store_true",
                        help="exit 1 when an unsafe route falls to the unlisted default")
    routes.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default) or json (one document on stdout)")
    routes.set_defaults(func=_cmd_routes)

    from micafence.grants.cli import register as register_grant

    register_breakglass(commands)
    register_grant(commands)
    from micafence.clients.cli import register as register_client

    register_client(commands)
    from micafence.audit.cli import register as register_audit
    from micafence.audit.report import register as register_report

    register_audit(commands)
    register_report(commands)
    if command not in commands.choices:
        _add_subcommands(commands, command)
    return parser


def _add_subcommands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                     command: str | None) -> None:
    installed = [e for e in entry_points(group=SUBCOMMANDS) if e.name not in commands.choices]
    wanted = [e for e in installed if e.name == command] or installed
    if command in _TOOL_COMMANDS and not any(e.name == command for e in wanted):
        raise MicafenceError(
            f"`micafence {command}` comes with micafence-tools, in this repository's bench/ "
            "directory: pip install -e ./bench (with the core: pip install -e . -e ./bench)"
        )
    for entry in wanted:
        entry.load()(commands)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in words if not word.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(words)
        code: int = args.func(args)
    except MicafenceError as exc:
        print(f"micafence: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"micafence: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

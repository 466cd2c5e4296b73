"""``micafence demo``, added to the ``micafence`` command through the ``micafence.subcommands``
entry-point group. Registering imports only argparse; the server is imported when the command
runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from micafence.cli import POLICY_ENV, bundled_test_database
from micafence.policy.loader import default_policy_path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``micafence demo`` to the CLI."""
    demo = commands.add_parser("demo", help="serve the demo exchange behind micafence",
                               description="Serve a small demo exchange behind micafence under "
                               "uvicorn, on the bundled MaxMind test database by default.")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    demo.add_argument("--policy", help=f"policy file (default: ${POLICY_ENV}, else the "
                      "packaged default policy)")
    demo.add_argument("--geoip-db", help="MaxMind database (default: the bundled test database)")
    demo.add_argument("--anonymizer-db", metavar="DB",
                      help="MaxMind Anonymous-IP database (default: none, and the start-up "
                      "log says anonymizers are not screened)")
    demo.add_argument("--store", default="memory://", help="grant store URL (default memory://)")
    demo.add_argument("--grants", metavar="FILE",
                      help="record the grants in this seeds file at start-up (see README)")
    demo.add_argument("--audit-dir", default="micafence-demo-audit",
                      help="decision log directory (default ./micafence-demo-audit; its key "
                      "is DIR.key unless $MICAFENCE_AUDIT_KEY[_FILE] is set)")
    demo.add_argument("--no-audit", action="store_true", help="keep no decision log")
    demo.set_defaults(func=_run)


def _port(text: str) -> int:
    """A TCP port, 1 to 65535: under uvloop a larger number is taken modulo 65536 (99999 would
    listen on 34463 while the banner says 99999), without it an OverflowError."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1 to 65535)")
    return port


def _run(args: argparse.Namespace) -> int:
    from micafence_tools.demo.server import run_demo

    run_demo(
        host=args.host,
        port=args.port,
        policy=Path(args.policy or os.environ.get(POLICY_ENV) or default_policy_path()),
        geoip_db=Path(args.geoip_db) if args.geoip_db else bundled_test_database(),
        anonymizer_db=Path(args.anonymizer_db) if args.anonymizer_db else None,
        store=args.store,
        grants=args.grants,
        audit_dir=None if args.no_audit else args.audit_dir,
    )
    return 0

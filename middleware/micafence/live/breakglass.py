"""Break-glass: a recorded incident switch that compliance throws from the command line.

Two kinds of switch, any number at once:

``block_services``
    Block all service traffic from restricted zones (every zone some ``service`` rule names),
    grants or not: reason ``breakglass.service``, rule ``breakglass``, always enforced.
``shadow`` *RULE*
    Put one rule (a policy rule id, or ``anonymizer.<flag>``) into shadow: it still decides and
    reports "would block", but lets requests pass.

The state lives in a directory shared by every worker: ``breakglass.json`` (the switches now on,
replaced atomically) and ``breakglass.jsonl`` (an append-only journal: every change, who, why,
when). Each worker's reload task looks at the state file every tick (well under a second) and
rebuilds its enforcer; every decision then names the switches in ``Decision.breakglass``, and
``micafence explain --at`` replays the journal to show the switches on at that time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from micafence.errors import BreakGlassError
from micafence.instants import parse_instant, utc_now
from micafence.live.atomicfile import write_atomically
from micafence.policy.model import Mode, Outcome, Rule

BLOCK_SERVICES = "block_services"
SHADOW = "shadow"
RULE_ID = "breakglass"
REASON = "breakglass.service"
STATE_FILE = "breakglass.json"
JOURNAL_FILE = "breakglass.jsonl"
_LOCK_FILE = ".breakglass.lock"
DIR_ENV = "MICAFENCE_BREAKGLASS_DIR"


@dataclass(frozen=True, slots=True)
class Switch:
    """One switch that is on: what, who threw it, why, and when."""

    action: str  # BLOCK_SERVICES or SHADOW
    rule: str | None  # the rule put into shadow
    by: str
    why: str
    at: dt.datetime

    @property
    def key(self) -> str:
        """``block_services`` or ``shadow:<rule>``: what decisions carry."""
        return self.action if self.rule is None else f"{self.action}:{self.rule}"

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "rule": self.rule, "by": self.by, "why": self.why,
                "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Switch:
        try:
            action, rule, by, why = data["action"], data.get("rule"), data["by"], data["why"]
            at = parse_instant(data["at"], allow_date=False)
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise BreakGlassError(f"{where}: malformed switch {data!r} ({exc})") from None
        if action not in (BLOCK_SERVICES, SHADOW) or (action == SHADOW) != isinstance(rule, str):
            raise BreakGlassError(f"{where}: malformed switch {data!r}")
        return cls(action, rule, str(by), str(why), at)


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """The switches on at one time (none: :data:`NO_BREAKGLASS`)."""

    switches: tuple[Switch, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.switches)

    @property
    def tag(self) -> str | None:
        """What every decision carries: ``block_services,shadow:rule-a``, or ``None``."""
        return ",".join(s.key for s in self.switches) or None

    @property
    def blocks_services(self) -> bool:
        return any(s.action == BLOCK_SERVICES for s in self.switches)

    @property
    def shadow_rules(self) -> frozenset[str]:
        return frozenset(s.rule for s in self.switches if s.rule is not None)

    def apply(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        """The policy's rules (those in force) with this state's switches applied."""
        if not self.switches:
            return rules
        shadowed = self.shadow_rules
        rules = tuple(
            dataclasses.replace(rule, mode=Mode.SHADOW) if rule.id in shadowed else rule
            for rule in rules
        )
        if self.blocks_services:
            zones = frozenset(z for rule in rules if rule.route_class == "service"
                              for z in rule.zones)
            if zones:
                # First, so it wins over equally severe rules (which may be in shadow).
                rules = (Rule(RULE_ID, zones, "service", Outcome.BLOCK, Mode.ENFORCE, REASON),
                         *rules)
        return rules

    def as_dict(self) -> dict[str, object]:
        return {"active": self.active, "switches": [s.as_dict() for s in self.switches]}

    def describe(self) -> str:
        """One line for ``explain`` and ``status``."""
        if not self.switches:
            return "off"
        return "; ".join(
            f"{s.key} (by {s.by} at {s.at:%Y-%m-%dT%H:%M:%SZ}: {s.why})" for s in self.switches
        )


NO_BREAKGLASS = BreakGlass()


def read_state(directory: str | os.PathLike[str]) -> BreakGlass:
    """The switches on now; none when the directory holds no state file yet."""
    path = Path(directory) / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NO_BREAKGLASS
    except (OSError, UnicodeDecodeError) as exc:
        raise BreakGlassError(f"{path}: cannot read ({exc})") from exc
    try:
        data = json.loads(text)
        items = data["switches"]
        if not isinstance(items, list):
            raise TypeError("'switches' is not a list")
    except (ValueError, TypeError, KeyError) as exc:
        raise BreakGlassError(f"{path}: not a break-glass state file ({exc})") from None
    return BreakGlass(tuple(Switch.from_dict(item, str(path)) for item in items))


def state_at(directory: str | os.PathLike[str], at: dt.datetime) -> BreakGlass:
    """The switches that were on at ``at``, replayed from the journal."""
    switches: dict[str, Switch] = {}
    for entry in _journal(Path(directory)):
        switch: Switch = entry["switch"]
        if switch.at > at:
            continue
        if entry["event"] == "on":
            switches[switch.key] = switch
        else:
            switches.pop(switch.key, None)
    return BreakGlass(tuple(switches.values()))


def state_for(directory: str | os.PathLike[str] | None, at: dt.datetime | None) -> BreakGlass:
    """For ``explain``: the switches on at ``at`` (or now); none without a directory."""
    if directory is None:
        return NO_BREAKGLASS
    return state_at(directory, at) if at is not None else read_state(directory)


def throw(
    directory: str | os.PathLike[str],
    *,
    on: bool,
    by: str,
    why: str,
    rule: str | None = None,
    at: dt.datetime | None = None,
) -> BreakGlass:
    """Turn a switch on or off, record who and why, and return the new state.

    ``rule`` given: the shadow switch for that rule; otherwise ``block_services``. Refuses to
    turn on a switch that is on, or off one that is not (the journal stays a true story).
    """
    by, why = by.strip(), why.strip()
    if not by or not why or "\n" in by:
        raise BreakGlassError("say who you are (--by) and why (--why): both are recorded")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    switch = Switch(SHADOW if rule else BLOCK_SERVICES, rule or None, by, why, at or utc_now())
    with _locked(folder):
        current = {s.key: s for s in read_state(folder).switches}
        if on and switch.key in current:
            was = current[switch.key]
            raise BreakGlassError(f"{switch.key} is already on (by {was.by} at "
                                  f"{was.at.isoformat()}: {was.why})")
        if not on and switch.key not in current:
            raise BreakGlassError(f"{switch.key} is not on")
        if on:
            current[switch.key] = switch
        else:
            del current[switch.key]
        state = BreakGlass(tuple(current.values()))
        entry = {"event": "on" if on else "off", **switch.as_dict()}
        with open(folder / JOURNAL_FILE, "a", encoding="utf-8") as journal:
            journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
        # Workers read the state file while it changes: they see the old state or the new.
        write_atomically(folder / STATE_FILE,
                         (json.dumps(state.as_dict(), indent=2) + "\n").encode("utf-8"))
    return state


def _journal(folder: Path) -> Iterator[dict[str, Any]]:
    path = folder / JOURNAL_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise BreakGlassError(f"{path}: cannot read ({exc})") from exc
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            event = data["event"]
        except (ValueError, TypeError, KeyError):
            raise BreakGlassError(f"{path}:{number}: not a journal entry") from None
        if event not in ("on", "off"):
            raise BreakGlassError(f"{path}:{number}: unknown event {event!r}")
        yield {"event": event, "switch": Switch.from_dict(data, f"{path}:{number}")}


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Two operators at once must not lose each other's switch.
    with open(folder / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- command line --------------------------------------------------------------------------------


def _directory(args: argparse.Namespace) -> str:
    chosen: str | None = args.dir or os.environ.get(DIR_ENV)
    if not chosen:
        raise BreakGlassError(f"give --dir (or set ${DIR_ENV}): the directory the workers share")
    return chosen


def _cmd_throw(args: argparse.Namespace) -> int:
    on = args.breakglass_action == "on"
    state = throw(_directory(args), on=on, by=args.by, why=args.why, rule=args.shadow)
    what = f"shadow:{args.shadow}" if args.shadow else BLOCK_SERVICES
    print(f"break-glass {what} {'ON' if on else 'OFF'}; now: {state.describe()}")
    print("every worker picks this up within a second", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    directory = _directory(args)
    state = state_at(directory, parse_instant(args.at)) if args.at else read_state(directory)
    if args.json:
        print(json.dumps(state.as_dict(), indent=2))
    else:
        print(f"break-glass: {state.describe()}")
    return 0


def register(commands: Any) -> None:
    """Add ``micafence breakglass on|off|status`` to the CLI."""
    parser = commands.add_parser(
        "breakglass", help="incident switch: block restricted-zone services, or shadow a rule",
        description="Throw or inspect the recorded incident switch shared by every worker "
        "(who, why and when are journalled).",
    )
    actions = parser.add_subparsers(dest="breakglass_action", required=True, metavar="ACTION")
    for name, words in (("on", "turn a switch on"), ("off", "turn a switch off")):
        action = actions.add_parser(
            name, help=words,
            description=f"{words.capitalize()}: without --shadow, the switch that blocks all "
            "service traffic from restricted zones; with --shadow RULE, shadow mode for RULE.",
        )
        action.add_argument("--dir", help=f"break-glass directory (default: ${DIR_ENV})")
        action.add_argument("--by", required=True, help="who throws the switch (recorded)")
        action.add_argument("--why", required=True, help="why, e.g. an incident ticket (recorded)")
        action.add_argument("--shadow", metavar="RULE",
                            help="the rule id to put into (or take out of) shadow")
        action.set_defaults(func=_cmd_throw)
    status = actions.add_parser("status", help="the switches on now (or at --at)",
                                description="Print the switches that are on, with who and why.")
    status.add_argument("--dir", help=f"break-glass directory (default: ${DIR_ENV})")
    status.add_argument("--at", metavar="TIME",
                        help="ISO 8601 instant: replay the journal up to then")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(func=_cmd_status)

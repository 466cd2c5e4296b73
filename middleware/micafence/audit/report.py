"""``micafence report``: is the EU book still "occasional"? (RULES.md rule 12)

From the decision log (and the grant store, when given) it counts restricted-zone blocks per
reason, suppressed promotions, in-scope passes, onboarding tokens used, active grants, grants
opened per month and long-running relationships, and compares them with the policy's
``reporting`` thresholds.

A client renewed month after month is one continuing relationship, not a string of short
grants: a grant is chained to the one it renews (its ``renewal_of``; for a grant without one,
such as those recorded before renewals were flagged, the client's previous grant for the same
service when the new one's initiative is later and it was recorded while that one ran or
within ``scopes.renewal_window`` after it ended). A chain with an active grant whose first
grant began more than ``reporting.long_running_grant`` ago is long-running, whatever each
grant's term.

Any threshold crossed prints a warning that the book is drifting out of the
reverse-solicitation exemption. ``--html`` writes a self-contained page with an inline SVG
chart (no scripts, nothing fetched).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import html
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from micafence.audit.keys import AuditKey
from micafence.audit.progress import Progress, add_progress_argument
from micafence.audit.reader import LogReader, entry_time, in_range
from micafence.instants import instant_argument, parse_instant
from micafence.policy.audit import ReportingThresholds
from micafence.policy.grant_store import DEFAULT_RENEWAL_WINDOW

_T = TypeVar("_T")
DRIFT_WARNING = (
    "The EU book is drifting out of \"occasional\": the reverse-solicitation exemption "
    "(MiCA Art. 61) covers occasional, client-initiated contact only. Review with counsel "
    "whether a MiCA authorisation is now needed."
)


@dataclass(slots=True)
class GrantFacts:
    """One grant as the report needs it."""

    grant_id: str
    recorded_at: dt.datetime
    initiated_at: dt.datetime
    expires_at: dt.datetime
    revoked: bool
    client_id: str = ""  # "" when unknown: the grant is then chained only by renewal_of
    service: str = ""
    renewal_of: str | None = None  # the grant it renews, as recorded
    revoked_at: dt.datetime | None = None

    @property
    def ended_at(self) -> dt.datetime:
        if self.revoked_at is not None:
            return min(self.expires_at, self.revoked_at)
        return self.expires_at


@dataclass(slots=True)
class Exposure:
    """The figures of one report."""

    since: str | None
    until: str
    blocks_by_reason: dict[str, int] = field(default_factory=dict)
    shadow_would_block: dict[str, int] = field(default_factory=dict)
    suppressed_promotion_pages: int = 0
    promotion_routes_refused: int = 0
    in_scope_passes: int = 0
    wind_down_passes: int = 0
    onboarding_tokens_used: int = 0
    active_grants: int = 0
    #: Chains of renewals with an active grant that began more than long_running_grant ago.
    long_running_grants: int = 0
    #: Client relationships with an active grant (a renewal chain counts once).
    active_relationships: int = 0
    #: Grants that renew an earlier one (recorded or inferred).
    renewals: int = 0
    grants_opened_per_month: dict[str, int] = field(default_factory=dict)
    blocks_per_month: dict[str, int] = field(default_factory=dict)
    grant_source: str = "audit log"
    warnings: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)


def build_report(
    entries: Iterable[dict[str, Any]],
    grants: list[GrantFacts],
    thresholds: ReportingThresholds,
    *,
    now: dt.datetime,
    since: dt.datetime | None = None,
    renewal_window: dt.timedelta = DEFAULT_RENEWAL_WINDOW,
) -> Exposure:
    """Count, group by month and compare with ``thresholds`` (renewal chains are inferred
    with ``renewal_window``, the policy's ``scopes.renewal_window``)."""
    tally = ExposureTally(since)
    for record in entries:
        tally.add(record)
    return tally.report(grants, thresholds, now=now, renewal_window=renewal_window)


class ExposureTally:
    """The log's side of the report, counted a record at a time in any order: counters by
    reason and month, never the records (a log of years is counted in little memory)."""

    def __init__(self, since: dt.datetime | None = None) -> None:
        self.since = since
        self.blocks: Counter[str] = Counter()
        self.shadow: Counter[str] = Counter()
        self.per_month: Counter[str] = Counter()
        self.figures: Counter[str] = Counter()  # the Exposure fields counted one by one

    def add(self, record: dict[str, Any]) -> None:
        if not in_range(record, self.since, None):
            return
        figures = self.figures
        kind, month = record.get("kind"), str(record.get("time", ""))[:7]
        if kind == "aggregate":
            for count in record.get("counts", ()):
                self.blocks[str(count["reason"])] += int(count["count"])
                self.per_month[month] += int(count["count"])
        elif kind == "event":
            event = str(record.get("event", ""))
            figures["onboarding_tokens_used"] += event.startswith("onboarding.")
            figures["suppressed_promotion_pages"] += event == "promotions.suppressed"
        elif kind == "decision":
            reason, route_class = str(record.get("reason")), record.get("route_class")
            if record.get("blocked"):
                self.blocks[reason] += 1
                self.per_month[month] += 1
                figures["promotion_routes_refused"] += route_class == "promotion"
            elif record.get("outcome") == "block":
                self.shadow[reason] += 1
            elif route_class == "service":
                figures["in_scope_passes"] += 1
            elif route_class == "wind_down":
                figures["wind_down_passes"] += 1
            elif route_class == "neutral" and record.get("promotions") != "allowed":
                figures["suppressed_promotion_pages"] += 1

    def report(self, grants: list[GrantFacts], thresholds: ReportingThresholds, *,
               now: dt.datetime,
               renewal_window: dt.timedelta = DEFAULT_RENEWAL_WINDOW) -> Exposure:
        """The figures counted so far with those of ``grants``, compared with ``thresholds``."""
        since = self.since
        report = Exposure(since.isoformat() if since else None, now.isoformat())
        report.suppressed_promotion_pages = self.figures["suppressed_promotion_pages"]
        report.promotion_routes_refused = self.figures["promotion_routes_refused"]
        report.in_scope_passes = self.figures["in_scope_passes"]
        report.wind_down_passes = self.figures["wind_down_passes"]
        report.onboarding_tokens_used = self.figures["onboarding_tokens_used"]
        report.blocks_by_reason = dict(sorted(self.blocks.items()))
        report.shadow_would_block = dict(sorted(self.shadow.items()))
        report.blocks_per_month = dict(sorted(self.per_month.items()))
        opened = Counter(g.recorded_at.strftime("%Y-%m") for g in grants
                         if since is None or g.recorded_at >= since)
        report.grants_opened_per_month = dict(sorted(opened.items()))
        active = [g for g in grants if not g.revoked and g.expires_at > now]
        report.active_grants = len(active)
        chains = renewal_chains(grants, renewal_window)
        report.renewals = sum(len(chain) - 1 for chain in chains)
        running = [chain for chain in chains
                   if any(not g.revoked and g.expires_at > now for g in chain)]
        report.active_relationships = len(running)
        report.long_running_grants = sum(
            now - min(g.initiated_at for g in chain) > thresholds.long_running_grant
            for chain in running
        )
        report.warnings = _compare(report, thresholds, now)
        return report


def renewal_chains(
    grants: list[GrantFacts], renewal_window: dt.timedelta
) -> list[list[GrantFacts]]:
    """The grants grouped into client relationships: each grant with the grants that renew
    it, and theirs, oldest first. A grant renews the one its ``renewal_of`` names; one recorded
    without that field renews the client's latest-ending earlier grant for the same service
    whose initiative it follows and which ran, or had ended at most ``renewal_window`` before,
    when it was recorded (the rule ``grant add`` applies)."""
    ordered = sorted(grants, key=lambda g: (g.recorded_at, g.grant_id))
    by_id = {g.grant_id: g for g in ordered}
    root: dict[str, str] = {}
    for grant in ordered:
        parent = by_id.get(grant.renewal_of) if grant.renewal_of else None
        if parent is None and grant.renewal_of is None and grant.client_id:
            candidates = [
                g for g in ordered
                if g.recorded_at <= grant.recorded_at and g is not grant
                and (g.client_id, g.service) == (grant.client_id, grant.service)
                and g.initiated_at < grant.initiated_at
                and grant.recorded_at <= g.ended_at + renewal_window
            ]
            parent = max(candidates, key=lambda g: g.ended_at, default=None)
        held = parent is not None and parent.grant_id in root
        root[grant.grant_id] = root[parent.grant_id] if parent and held else grant.grant_id
    chains: dict[str, list[GrantFacts]] = {}
    for grant in ordered:
        chains.setdefault(root[grant.grant_id], []).append(grant)
    return list(chains.values())


def _compare(report: Exposure, limits: ReportingThresholds, now: dt.datetime) -> list[str]:
    warnings = []
    if limits.max_active_grants is not None and report.active_grants > limits.max_active_grants:
        warnings.append(f"{report.active_grants} active grants (threshold "
                        f"{limits.max_active_grants})")
    this_month = now.strftime("%Y-%m")
    last_month = (now.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    months = report.grants_opened_per_month
    new = months.get(this_month, 0)
    if limits.max_new_grants_per_month is not None:
        for month, count in months.items():
            if count > limits.max_new_grants_per_month:
                warnings.append(f"{count} grants opened in {month} (threshold "
                                f"{limits.max_new_grants_per_month} a month)")
    previous = months.get(last_month, 0)
    if limits.max_monthly_growth_percent is not None and previous:
        growth = (new - previous) * 100 / previous
        if growth > limits.max_monthly_growth_percent:
            warnings.append(f"grants opened grew {growth:.0f}% month on month ({previous} in "
                            f"{last_month}, {new} in {this_month}; threshold "
                            f"{limits.max_monthly_growth_percent}%)")
    if (limits.max_long_running_grants is not None
            and report.long_running_grants > limits.max_long_running_grants):
        warnings.append(f"{report.long_running_grants} long-running client relationships: "
                        "active grants that, with the grants they renew, began more than "
                        f"{limits.long_running_grant.days} days ago (threshold "
                        f"{limits.max_long_running_grants})")
    return warnings


def grants_from_log(entries: Iterable[dict[str, Any]]) -> list[GrantFacts]:
    """Grants as recorded by ``grant.recorded`` / ``grant.revoked`` events in ``entries``
    (in time order: a later event about the same grant wins)."""
    history = GrantHistory()
    for index, record in enumerate(entries):
        history.add(record, (index,))
    return history.grants()


class GrantHistory:
    """Grants as the log's ``grant.recorded`` / ``grant.revoked`` events record them, fed in
    any order, each event with its rank (its time and place in the log): for each grant the
    highest-ranked event of each kind wins. Holds one entry per grant, not the events."""

    def __init__(self) -> None:
        self._recorded: dict[str, tuple[tuple[Any, ...], GrantFacts]] = {}
        self._revoked: dict[str, tuple[tuple[Any, ...], dt.datetime | None]] = {}

    def add(self, record: dict[str, Any], rank: tuple[Any, ...]) -> None:
        from micafence.instants import parse_duration

        data = record.get("data")
        if record.get("kind") != "event" or not isinstance(data, dict):
            return
        if record.get("event") == "grant.recorded":
            initiated = parse_instant(str(data["initiated_at"]), allow_date=False)
            recorded = parse_instant(str(data["recorded_at"]), allow_date=False)
            renews = data.get("renewal_of")
            _keep_latest(self._recorded, str(data["id"]), rank, GrantFacts(
                str(data["id"]), recorded, initiated,
                initiated + parse_duration(str(data["term"])), False,
                str(data.get("client_id") or ""), str(data.get("service") or ""),
                renews if isinstance(renews, str) and renews else None))
        elif record.get("event") == "grant.revoked":
            revoked_at: dt.datetime | None
            try:
                revoked_at = parse_instant(str(data["revoked_at"]), allow_date=False)
            except (KeyError, ValueError):
                revoked_at = None
            _keep_latest(self._revoked, str(data["grant_id"]), rank, revoked_at)

    def grants(self) -> list[GrantFacts]:
        grants = {grant_id: facts for grant_id, (_, facts) in self._recorded.items()}
        for grant_id in self._revoked.keys() & grants.keys():
            grants[grant_id].revoked = True
            grants[grant_id].revoked_at = self._revoked[grant_id][1]
        return list(grants.values())


def _keep_latest(latest: dict[str, tuple[tuple[Any, ...], _T]], key: str,
                 rank: tuple[Any, ...], value: _T) -> None:
    if key not in latest or rank > latest[key][0]:
        latest[key] = (rank, value)


def grants_from_store(url: str) -> list[GrantFacts]:
    """Grants from the grant store (the authoritative history)."""
    from micafence.records import fold
    from micafence.store.opener import open_store

    async def read() -> list[GrantFacts]:
        store = open_store(url)
        try:
            states = fold(await store.grant_events())
        finally:
            await store.close()
        return [GrantFacts(s.grant.id, s.grant.recorded_at, s.grant.initiated_at,
                           s.grant.expires_at, s.revocation is not None, s.grant.client_id,
                           s.grant.service, s.grant.renewal_of,
                           s.revocation.revoked_at if s.revocation is not None else None)
                for s in states]

    return asyncio.run(read())


# -- rendering ----------------------------------------------------------------------------------


def render_text(report: Exposure) -> str:
    lines = [f"EU exposure report, {report.since or 'all records'} .. {report.until}"]
    if report.log_problems:
        lines.append(f"WARNING: the audit log does not verify ({len(report.log_problems)} "
                     "problems): run `micafence audit verify`")
    lines.append("Restricted-zone blocks by reason:")
    lines += [f"  {reason:<40}{count:>8}" for reason, count in report.blocks_by_reason.items()]
    if report.shadow_would_block:
        lines.append("Shadow mode, would have blocked:")
        lines += [f"  {r:<40}{c:>8}" for r, c in report.shadow_would_block.items()]
    rows = [
        ("pages served with promotions suppressed", report.suppressed_promotion_pages),
        ("promotion routes refused", report.promotion_routes_refused),
        ("in-scope passes (client-initiated grants)", report.in_scope_passes),
        ("wind-down passes", report.wind_down_passes),
        ("onboarding tokens used", report.onboarding_tokens_used),
        (f"active grants ({report.grant_source})", report.active_grants),
        ("active client relationships", report.active_relationships),
        ("renewals (grants renewing an earlier one)", report.renewals),
        ("long-running relationships", report.long_running_grants),
    ]
    lines += [f"{label:<42}{value:>8}" for label, value in rows]
    lines.append("Grants opened per month: " + (", ".join(
        f"{m} {c}" for m, c in report.grants_opened_per_month.items()) or "none"))
    if report.warnings:
        lines.append("")
        lines += [f"WARNING: {w}" for w in report.warnings]
        lines.append(DRIFT_WARNING)
    else:
        lines.append("Within the policy's reporting thresholds.")
    return "\n".join(lines) + "\n"


def render_html(report: Exposure) -> str:
    """A self-contained page: tables, warnings and an inline SVG bar chart."""
    esc = html.escape
    blocks = "".join(f"<tr><td>{esc(r)}</td><td>{c}</td></tr>"
                     for r, c in report.blocks_by_reason.items())
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.warnings)
    drift = (f'<section class="warning"><h2>Warning</h2><ul>{warnings}</ul>'
             f"<p>{esc(DRIFT_WARNING)}</p></section>") if report.warnings else \
        '<p class="ok">Within the policy\'s reporting thresholds.</p>'
    figures = "".join(f"<tr><td>{esc(label)}</td><td>{value}</td></tr>" for label, value in (
        ("Pages served with promotions suppressed", report.suppressed_promotion_pages),
        ("Promotion routes refused", report.promotion_routes_refused),
        ("In-scope passes", report.in_scope_passes),
        ("Wind-down passes", report.wind_down_passes),
        ("Onboarding tokens used", report.onboarding_tokens_used),
        (f"Active grants ({report.grant_source})", report.active_grants),
        ("Active client relationships (a renewal chain counts once)",
         report.active_relationships),
        ("Renewals", report.renewals),
        ("Long-running relationships", report.long_running_grants),
    ))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>micafence EU exposure report</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td{padding:.2em 1em}.warning{border:2px solid #b00;padding:0 1em;color:#600}"
        ".ok{color:#060}</style></head><body>"
        f"<h1>EU exposure report</h1><p>{esc(report.since or 'All records')} to "
        f"{esc(report.until)}</p>{drift}"
        f"<h2>Grants opened and blocks per month</h2>{bar_chart(report)}"
        f"<h2>Figures</h2><table>{figures}</table>"
        f"<h2>Restricted-zone blocks by reason</h2><table>{blocks}</table>"
        "</body></html>\n"
    )


def bar_chart(report: Exposure) -> str:
    """Grouped bars per month: grants opened (dark) and blocks (light), scaled separately."""
    months = sorted(set(report.grants_opened_per_month) | set(report.blocks_per_month))
    if not months:
        return "<p>No data in this period.</p>"
    height, pad = 200, 30
    width = max(320, 2 * pad + 70 * len(months))
    top_grants = max(report.grants_opened_per_month.values(), default=0) or 1
    top_blocks = max(report.blocks_per_month.values(), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
             f'height="{height + 2 * pad}" aria-label="grants opened and blocks per month">']
    for index, month in enumerate(months):
        x = pad + index * 70
        for offset, value, top, colour, label in (
            (0, report.grants_opened_per_month.get(month, 0), top_grants, "#1f4e79", "grants"),
            (26, report.blocks_per_month.get(month, 0), top_blocks, "#9dc3e6", "blocks"),
        ):
            bar = round(height * value / top)
            parts.append(f'<rect class="{label}" x="{x + offset}" y="{pad + height - bar}" '
                         f'width="24" height="{bar}" fill="{colour}">'
                         f"<title>{month}: {value} {label}</title></rect>")
            parts.append(f'<text x="{x + offset + 12}" y="{pad + height - bar - 4}" '
                         f'font-size="10" text-anchor="middle">{value}</text>')
        parts.append(f'<text x="{x + 25}" y="{pad + height + 16}" font-size="11" '
                     f'text-anchor="middle">{month}</text>')
    parts.append(f'<text x="{pad}" y="14" font-size="11"><tspan fill="#1f4e79">■ grants '
                 'opened</tspan> <tspan fill="#5b8bb8">■ blocks</tspan></text></svg>')
    return "".join(parts)


# -- command line -------------------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add ``micafence report`` to the CLI's sub-commands."""
    parser = commands.add_parser("report", help="EU-exposure report against the policy's "
                                 "thresholds", description="Count EU blocks, passes and grants "
                                 "from the decision log and compare with the policy's "
                                 "`reporting` thresholds.")
    parser.add_argument("targets", nargs="+", metavar="PATH",
                        help="audit directory, file or redis://HOST/DB#STREAM")
    parser.add_argument("--since", type=instant_argument, help="from (ISO date or time)")
    parser.add_argument("--store", help="grant store URL (default: grants from the audit log)")
    parser.add_argument("--policy", help="policy with the thresholds (default $MICAFENCE_POLICY "
                        "or the packaged default)")
    parser.add_argument("--key-file", help="audit key (default $MICAFENCE_AUDIT_KEY[_FILE])")
    parser.add_argument("--html", metavar="FILE", help="also write an HTML page with a chart")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a threshold is crossed")
    add_progress_argument(parser)
    parser.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    import os

    from micafence.policy.loader import default_policy_path, load_policy

    policy = load_policy(args.policy or os.environ.get("MICAFENCE_POLICY")
                         or default_policy_path())
    progress = Progress.for_command("micafence report", args.progress)
    reader = LogReader(args.targets, AuditKey.from_env(args.key_file), progress=progress)
    tally, history = ExposureTally(args.since), GrantHistory()
    for place, record in reader.entries():
        tally.add(record)
        if not args.store:  # the store's history is authoritative: the log's is not read then
            history.add(record, (entry_time(record), *place))
    log = reader.verdict()
    now = dt.datetime.now(dt.UTC)
    grants = grants_from_store(args.store) if args.store else history.grants()
    report = tally.report(grants, policy.reporting, now=now,
                          renewal_window=policy.grant_store.renewal_window)
    report.grant_source = f"store {args.store}" if args.store else "audit log"
    report.log_problems = log.problems
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        sys.stdout.write(render_text(report))
    return 3 if args.strict and report.warnings else 0

"""The benchmark's HTML report: one self-contained page (inline CSS and SVG, no script, nothing
fetched) drawn from the JSON ``micafence bench --json`` writes, and from nothing else.

``micafence bench --json RUN.json`` writes ``RUN.html`` beside it; for a recorded run,
``python -m micafence_tools.bench.report_html bench/results/RUN.json`` does the same. Sections:
the budget's verdicts; in-process µs (bare, floor, micafence and naive side by side); latency
distributions; HTTP requests/s; the promotion safety net's pages by size and coding; locust's
latency under load when the run had it. A section whose figures the run did not measure says so.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from micafence_tools.bench.charts import bar_chart, figure, range_chart

_APPS = ("bare", "floor", "micafence", "naive")
_PAGE_WAYS = ("bare", "micafence", "middleware", "engine")
_CODINGS = {"plain": "identity", "gzip": "gzip", "br": "br"}
# Locust's columns drawn, and their names in the chart.
_LOCUST_PERCENTILES = {"50%": "p50", "90%": "p90", "99%": "p99", "99.9%": "p99.9", "100%": "max"}
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:920px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:2px 10px;text-align:left}
th{background:#f3f3f3}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1b7a2f;font-weight:600}.fail{color:#b3261e;font-weight:600}.na{color:#888}
.note{color:#555}
svg .legend,svg .tick,svg .group,svg .figure{font:11px system-ui,sans-serif;fill:#333}
svg .grid{stroke:#e4e4e4}
"""


def render_html(results: Mapping[str, Any]) -> str:
    """The page for one run: ``results`` is the JSON object ``micafence bench --json`` wrote."""
    metrics: Mapping[str, float] = results.get("metrics", {})
    sections = [_budget(results), _inprocess(metrics), _latency(results, metrics),
                _http(metrics), _pages(metrics)]
    if "locust" in results:
        sections.append(_locust(results["locust"]))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>micafence bench report</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>micafence bench report</h1>\n"
            f"{_summary(results)}\n" + "\n".join(sections) + "\n</body></html>\n")


def _section(key: str, title: str, *body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>\n' + "\n".join(body) + "\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], numbers: int = 1) -> str:
    """A table of already-escaped cells (the header is escaped here); the columns from
    ``numbers`` on hold figures, aligned right."""
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(f'<{tag}{" class=num" if n >= numbers else ""}>{cell}</{tag}>'
                       for n, cell in enumerate(row))

    head = f"<thead><tr>{cells('th', [escape(c) for c in header])}</tr></thead>" if header else ""
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _names(metrics: Mapping[str, float], pattern: str) -> list[str]:
    """The first group of ``pattern`` over the metric names, in the JSON's order, once each."""
    found = (re.fullmatch(pattern, key) for key in metrics)
    return list(dict.fromkeys(match.group(1) for match in found if match))


def _summary(results: Mapping[str, Any]) -> str:
    machine = results.get("machine", {})
    verdicts = [entry.get("met") for entry in results.get("budget", {}).values()]
    load = " ".join(f"{x:.2f}" for x in machine.get("load_average", []))
    rows = [("budget", f"{verdicts.count(True)} PASS, {verdicts.count(False)} FAIL, "
                       f"{verdicts.count(None)} not measured"),
            ("run", ("--quick (in-process only, small samples)" if results.get("quick")
                     else "full") + f", {results.get('seconds', '?')} s"),
            ("machine", f"Python {machine.get('python', '?')}, {machine.get('cpus', '?')} CPUs, "
                        f"{machine.get('platform', '?')}"),
            ("load average at the start", load or "?")]
    return (_table(None, ((escape(k), escape(v)) for k, v in rows), numbers=2)
            + _note("Every figure is this run's, on this machine, against the bare app measured "
                    "in the same run; nothing is scaled or compared with another machine."))


def _budget(results: Mapping[str, Any]) -> str:
    rows = []
    for metric, entry in results.get("budget", {}).items():
        met = entry.get("met")
        verdict = ('<span class="na">n/a</span>' if met is None else
                   '<span class="pass">PASS</span>' if met else '<span class="fail">FAIL</span>')
        value = entry.get("value")
        shown = "not measured" if value is None else f"{value} {entry.get('unit', '')}".strip()
        rows.append((verdict, escape(entry.get("what", metric)), escape(shown),
                     escape(f"{entry.get('op')} {entry.get('limit')}")))
    return _section("budget", "Budget",
                    _table(("verdict", "line", "this run", "limit"), rows, numbers=2))


def _inprocess(metrics: Mapping[str, float]) -> str:
    classes = _names(metrics, r"inprocess\.(\w+)\.bare_us")
    if not classes:
        return _section("inprocess", "In-process", _note("Not measured in this run."))
    groups = [(name, {app: metrics[f"inprocess.{name}.{app}_us"] for app in _APPS
                      if f"inprocess.{name}.{app}_us" in metrics}) for name in classes]
    rows = [(escape(name), *(_cell(metrics.get(f"inprocess.{name}.{key}"), signed=key.endswith(
        "overhead")) for key in ("bare_us", "floor_overhead", "micafence_overhead",
                                 "naive_overhead", "micafence_p99_us"))) for name in classes]
    return _section(
        "inprocess", "In-process: a trivial route, bare and behind each middleware",
        _note("µs per request, medians over paired rounds of the same requests. An overhead is "
              "(app - bare) / bare; a negative one: micafence answered 451 without running the "
              "route. The naive peer (BaseHTTPMiddleware + geoip2) is timed where it applies."),
        bar_chart("In-process µs per request by traffic class", groups, "µs"),
        _table(("class", "bare µs", "floor overhead", "micafence overhead", "naive overhead",
                "micafence p99 µs"), rows))


def _latency(results: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    recorded = results.get("distributions", {}).get("inprocess")
    if recorded:
        groups = [(name, {app: marks for app, marks in by_app.items() if marks})
                  for name, by_app in recorded.items()]
        note = ("µs per request, percentiles over every sample of each app on each class "
                "(p10 to p99.9).")
    else:  # a run recorded before distributions were: micafence's median and p99
        groups = [(name, {"micafence": {"p50": metrics[f"inprocess.{name}.micafence_us"],
                                        "p99": metrics[f"inprocess.{name}.micafence_p99_us"]}})
                  for name in _names(metrics, r"inprocess\.(\w+)\.micafence_p99_us")]
        note = ("µs per request: micafence's median (over paired rounds) and p99 (over every "
                "sample); this run's JSON holds no other percentile.")
    if not groups:
        return _section("latency", "Latency distributions", _note("Not measured in this run."))
    return _section("latency", "Latency distributions, in-process", _note(note),
                    range_chart("In-process latency percentiles by traffic class", groups, "µs"))


def _http(metrics: Mapping[str, float]) -> str:
    scenarios = _names(metrics, r"http\.(\w+)\.bare_rps")
    if not scenarios:
        return _section("http", "HTTP throughput",
                        _note("Not measured in this run (--quick runs no HTTP)."))
    groups = [(name, {app: metrics[f"http.{name}.{app}_rps"] for app in _APPS
                      if f"http.{name}.{app}_rps" in metrics}) for name in scenarios]
    rows = [(escape(name), *(_cell(metrics.get(f"http.{name}.{key}"))
                             for key in ("throughput_ratio", "floor_ratio", "gap_to_floor",
                                         "times_naive"))) for name in scenarios]
    return _section(
        "http", "HTTP throughput under uvicorn (the demo exchange, wrk)",
        _note("Requests per second, medians over paired rounds; ratios are taken within a "
              "round. Higher is better."),
        bar_chart("HTTP requests per second by scenario", groups, "requests/s"),
        _table(("scenario", "micafence / bare", "floor / bare", "gap to floor",
                "times the naive peer"), rows))


def _pages(metrics: Mapping[str, float]) -> str:
    keys = _names(metrics, r"pages\.((?:plain|gzip|br)_\w+)\.bare_us")
    if not keys:
        return _section("pages", "Promotion safety net", _note("Not measured in this run."))
    label = {key: f"{key.split('_', 1)[1]} {_CODINGS[key.split('_', 1)[0]]}" for key in keys}
    groups = [(label[key], {way: metrics[f"pages.{key}.{way}_us"] for way in _PAGE_WAYS
                            if f"pages.{key}.{way}_us" in metrics}) for key in keys]
    rows = [(escape(label[key]), _cell(metrics.get(f"pages.{key}.times_engine"))) for key in keys]
    lag = [(escape(what), _cell(metrics.get(f"pages.{key}")))
           for what, key in (("median, through micafence", "loop_lag_ms"),
                             ("largest, through micafence", "loop_lag_max_ms"),
                             ("median, idle loop", "loop_lag_idle_ms"),
                             ("largest, idle loop", "loop_lag_idle_max_ms"))]
    return _section(
        "pages", "Promotion safety net: a restricted visitor's page by size and coding",
        _note("µs per page, medians over pages: the app alone (bare), behind micafence, the "
              "middleware's own time (micafence - bare on the same page) and lol-html alone on "
              "the same bytes (engine). Log scale: the sizes span two decades."),
        bar_chart("Page µs by size and coding", groups, "µs", log=True),
        _table(("page", "middleware / engine"), rows),
        _table(("loop lag while a 1 MB page is rewritten", "ms"), lag))


def _locust(locust: Mapping[str, Any]) -> str:
    def marks(row: Mapping[str, Any]) -> dict[str, float]:
        found = {name: _float(row.get(key)) for key, name in _LOCUST_PERCENTILES.items()}
        return {name: value for name, value in found.items() if value is not None}

    scenarios: Mapping[str, Mapping[str, Any]] = locust.get("scenarios", {})
    groups = [(name, {"micafence": marks(row)}) for name, row in scenarios.items()
              if marks(row)]
    groups.append(("all requests", {"micafence": marks(locust)}))
    body = [_note("Milliseconds per request under locust (FastHttpUser) against micafence; on "
                  "a small machine locust shares the cores with the server, so these are for "
                  "the distribution's shape, wrk's figures for throughput."),
            range_chart("Latency under load by scenario", groups, "ms")]
    summary = [(escape(name), _count(row.get("Request Count")),
                _count(row.get("Failure Count")))
               for name, row in [*scenarios.items(), ("all requests", locust)]]
    body.append(_table(("scenario", "requests", "failures"), summary))
    failures = locust.get("failures")
    if failures:
        body.append(_note("Failures: a request answered otherwise than micafence decides for "
                          "its visitor."))
        body.append(_table(("failure", "occurrences"), (
            (escape(f["message"]), _count(f["occurrences"])) for f in failures)))
    elif failures is not None:
        body.append(_note("No failure: every request got the status micafence decides for "
                          "its visitor."))
    return _section("locust", "Latency under load (locust)", *body)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _count(value: Any) -> str:
    number = _float(value)
    return _cell(None) if number is None else f"{number:,.0f}"


def _cell(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return '<span class="na">-</span>'
    return f"{value:+.3f}" if signed else escape(figure(value))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m micafence_tools.bench.report_html",
        description="Write the HTML report of a recorded `micafence bench --json` run.")
    parser.add_argument("results", help="the run's JSON")
    parser.add_argument("--out", help="the page to write (default: beside the JSON, .html)")
    args = parser.parse_args(argv)
    source = Path(args.results)
    out = Path(args.out) if args.out else source.with_suffix(".html")
    out.write_text(render_html(json.loads(source.read_text())), encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

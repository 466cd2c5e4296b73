"""Issue 19.6: the promotion safety net proved from outside, through real HTTP and Chromium.

Every case of :mod:`tests.corpus_cases` is served (raw header lines and body bytes) behind
micafence with the default policy under uvicorn, and loaded in Debian's headless ``chromium``
twice: by a Swiss visitor (promotions allowed: the original page) and by a Swedish one
(promotions forbidden). For the Swedish load the test asserts:

- no element matching ``[data-promo]`` is in the DOM at all, rendered or not. The census walks
  the whole DOM through the DevTools protocol, piercing iframes, shadow roots (closed ones too)
  and ``<template>`` contents, so XML and SVG documents count as HTML ones do. Rendered (has a
  layout box) is what a visitor sees; present-but-hidden is asserted too because the safety net
  removes promotions rather than hiding them, and a hidden element is one script or stylesheet
  away from being shown (a ``<template>`` a page clones, say). Both are reported separately.
- no script ran that did not run in the Swiss load: case scripts and ``onerror`` handlers call
  the ``report`` binding, and the two sets of names are compared;
- a page whose original shows a promotion did not come back byte for byte as it was;
- a response that may be a page says ``X-Content-Type-Options: nosniff`` (issue 19.2);
- for both visitors, a page the app marked ``public, max-age=600`` is not shared-cacheable
  (``private``/``no-store``, or a ``Vary`` naming what the decision read; issue 19.4).

For the Swiss load it asserts the case is what its table entry says: it shows a promotion when
``shows_promo`` (so the case is live, not one the browser never renders), it is rendered as a
page unless ``not_a_page`` says why not. A summary of every load goes to
``tests/artifacts/browser-corpus.json``, a screenshot of each Swedish load that showed a promotion
or ran a script it should not have beside it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerThread
from tests.corpus_cases import CASES, Case, RawCases, guarded_corpus
from tests.test_browser import ARTIFACTS, browser  # noqa: F401  (the shared Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.server]

SWISS = "2a02:d000::1"
SWEDISH = "89.160.20.112"
SYNC = "__sync__"
# Per promotion element found: does it match the selector as the document's own rules say
# (attribute names are case-sensitive in XML), is it rendered (connected, with a layout box)?
_JUDGE = """function () {
  return {matches: this.matches('[data-promo]'),
          rendered: this.isConnected && this.getClientRects().length > 0,
          name: (this.id ? '#' + this.id : this.localName)};
}"""
# The DevTools protocol lists a <template>'s content fragment without its children: the
# promotions in it (and in templates nested in it) are read by script. Never rendered.
_IN_TEMPLATE = """function () {
  const found = [], roots = [this.content];
  for (let i = 0; i < roots.length && i < 10000; i++) {
    for (const e of roots[i].querySelectorAll('*')) {
      if (e.matches('[data-promo]')) found.push(e.id ? '#' + e.id : e.localName);
      if (e.content instanceof DocumentFragment) roots.push(e.content);
    }
  }
  return found;
}"""
_NODE_LIMIT = 200_000


@dataclass
class Load:
    """What one visitor's browser got and did for one case."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    failure: str | None = None
    scripts: set[str] = field(default_factory=set)
    rendered: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["body"] = None if self.body is None else len(self.body)
        out["scripts"] = sorted(self.scripts)
        return out


class Visitor:
    """One browser context and one tab (one visitor), reused for every case (a new tab costs
    more than a case's load); ``report`` calls are collected per load."""

    def __init__(self, chromium: Any, ip: str) -> None:
        self.ip = ip
        self.context = chromium.new_context(extra_http_headers={"X-Forwarded-For": ip})
        self.reports: list[str] = []
        self.responses: list[Any] = []
        self.downloads: list[Any] = []
        self.context.expose_binding("report", self._report)
        self.page = self._new_page()

    def _report(self, source: dict[str, Any], name: object) -> None:
        if source["page"] is self.page:
            self.reports.append(str(name))

    def _new_page(self) -> Any:
        page = self.context.new_page()
        page.on("response", lambda response: self.responses.append(response))
        page.on("download", lambda download: self.downloads.append(download))
        return page

    def load(self, url: str) -> Load:
        """Navigate the visitor's tab to ``url`` (left there: :attr:`page`); what was seen."""
        from playwright.sync_api import Error as PlaywrightError

        if self.page.is_closed():  # a case crashed or closed it
            self.page = self._new_page()
        page = self.page
        seen = Load()
        self.reports.clear()
        self.responses.clear()
        self.downloads.clear()
        try:
            page.goto(url, wait_until="load", timeout=15_000)
        except PlaywrightError as error:
            seen.failure = str(error).splitlines()[0]
        responses = [r for r in self.responses if r.url == url]
        if responses:
            response = responses[0]
            seen.status = response.status
            seen.headers = [(h["name"].lower(), h["value"]) for h in response.headers_array()]
            with contextlib.suppress(PlaywrightError):
                seen.body = response.body()
        if seen.body is None and self.downloads:  # what the visitor saved
            seen.body = Path(self.downloads[0].path()).read_bytes()
        if seen.failure is None:
            for frame in page.frames:  # every report sent before this one has been handled
                with contextlib.suppress(PlaywrightError):
                    frame.evaluate(f"() => window.report && window.report({SYNC!r})")
            seen.rendered, seen.hidden = promotions(self.context, page)
        seen.scripts = set(self.reports) - {SYNC}
        return seen


def promotions(context: Any, page: Any) -> tuple[list[str], list[str]]:
    """The ``[data-promo]`` elements of the page's DOM: (rendered, present but not rendered)."""
    cdp = context.new_cdp_session(page)
    rendered: list[str] = []
    hidden: list[str] = []
    try:
        root = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]
        stack, candidates, templates, count = [root], [], [], 0
        while stack and count < _NODE_LIMIT:
            node = stack.pop()
            count += 1
            names = (node.get("attributes") or [])[0::2]
            if node.get("nodeType") == 1 and any(n.lower() == "data-promo" for n in names):
                candidates.append(node)
            stack.extend(node.get("children") or ())
            stack.extend(node.get("shadowRoots") or ())
            if node.get("contentDocument"):
                stack.append(node["contentDocument"])
            if node.get("templateContent"):
                templates.append(node)
        assert not stack, f"more than {_NODE_LIMIT} DOM nodes"
        for node in candidates:
            judged = _call(cdp, node, _JUDGE)
            if judged["matches"]:
                (rendered if judged["rendered"] else hidden).append(judged["name"])
        for node in templates:
            hidden.extend(_call(cdp, node, _IN_TEMPLATE))
    finally:
        cdp.detach()
    return rendered, hidden


def _call(cdp: Any, node: dict[str, Any], function: str) -> Any:
    """``function`` called on the DOM node ``node``; its JSON result."""
    handle = cdp.send("DOM.resolveNode", {"backendNodeId": node["backendNodeId"]})
    return cdp.send("Runtime.callFunctionOn", {
        "objectId": handle["object"]["objectId"], "functionDeclaration": function,
        "returnByValue": True})["result"]["value"]


@pytest.fixture(scope="module")
def corpus() -> Iterator[tuple[str, RawCases]]:
    app, raw = guarded_corpus()
    with ServerThread(app) as server:
        yield server.url, raw


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-corpus.json").write_text(json.dumps(found, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def visitors(browser: Any) -> Iterator[tuple[Visitor, Visitor]]:  # noqa: F811
    swiss, swedish = Visitor(browser, SWISS), Visitor(browser, SWEDISH)
    try:
        yield swiss, swedish
    finally:
        swiss.context.close()
        swedish.context.close()


def shared_cacheable(seen: Load) -> bool:
    """Could a shared cache keep this answer and give it to a visitor from another zone?"""
    directives = {d.strip().split("=")[0].lower()
                  for v in seen.header("cache-control") for d in v.split(",")}
    if directives & {"private", "no-store"}:
        return False
    varied = {f.strip().lower() for v in seen.header("vary") for f in v.split(",")}
    return not (varied - {"", "accept-encoding"})


def check_case(case: Case, swiss: Load, swedish: Load) -> list[str]:
    """Every way ``case`` failed, in words naming what was seen."""
    problems: list[str] = []
    # -- the case is what its table entry says (Swiss visitor: the original page) --
    if (swiss.failure is not None) != (case.not_a_page is not None):
        problems.append(f"Swiss load: navigation {swiss.failure or 'succeeded'}, but the case "
                        f"says not_a_page={case.not_a_page!r}")
    if swiss.status != 200:
        problems.append(f"Swiss load: status {swiss.status} (the app answers 200)")
    if case.shows_promo and not swiss.rendered:
        problems.append("Swiss load shows no promotion: the case is dead (mark "
                        f"shows_promo=False with the reason); hidden ones: {swiss.hidden}")
    if not case.shows_promo and swiss.rendered:
        problems.append(f"Swiss load shows promotions {swiss.rendered}, the case says none")
    # -- the restricted visitor (Sweden) --
    if swedish.failure is not None and swiss.failure is None:
        problems.append(f"Swedish load was no page ({swedish.failure}, status {swedish.status}) "
                        "where the original is one")
    if swedish.rendered:
        problems.append(f"Swedish load RENDERS promotions {swedish.rendered} (status "
                        f"{swedish.status})")
    if swedish.hidden:
        problems.append(f"Swedish load has promotions in its DOM, not rendered: {swedish.hidden}")
    if case.keeps - swiss.scripts:
        problems.append(f"Swiss load did not run {sorted(case.keeps - swiss.scripts)}: the "
                        "case is dead")
    lost = case.keeps - swedish.scripts
    if lost:
        problems.append(f"Swedish load lost content around the promotion: {sorted(lost)} did "
                        f"not run (ran {sorted(swedish.scripts)})")
    extra_scripts = swedish.scripts - swiss.scripts
    if extra_scripts:
        problems.append(f"Swedish load ran scripts the original did not: {sorted(extra_scripts)} "
                        f"(original ran {sorted(swiss.scripts)})")
    if swiss.rendered and swedish.status == 200 and swedish.body == swiss.body:
        problems.append("Swedish load got the original page unchanged (200, same bytes) though "
                        "it shows a promotion")
    if (case.not_a_page and case.page and swedish.status == 200
            and (swedish.body is None or swedish.body == swiss.body)):
        problems.append("Swedish visitor saved the original download unchanged: opened, it is a "
                        "page with its promotion")
    if case.untouched and (swedish.status != 200 or swedish.body != case.body):
        size = None if swedish.body is None else len(swedish.body)
        problems.append(f"Swedish load: expected the case's own bytes untouched, got status "
                        f"{swedish.status} and {size} bytes (case: {len(case.body)})")
    if case.page and swedish.status == 200 and swedish.header("x-content-type-options") != [
            "nosniff"]:
        problems.append("Swedish load: may be a page but X-Content-Type-Options is "
                        f"{swedish.header('x-content-type-options')}")
    if case.page:
        for who, seen in (("Swiss", swiss), ("Swedish", swedish)):
            if seen.status is not None and shared_cacheable(seen):
                problems.append(f"{who} load is shared-cacheable: Cache-Control "
                                f"{seen.header('cache-control')}, Vary {seen.header('vary')}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_case_in_chromium(case: Case, corpus: tuple[str, RawCases],
                          visitors: tuple[Visitor, Visitor], summary: dict[str, Any]) -> None:
    url = f"{corpus[0]}/case/{case.id}"
    swiss_visitor, swedish_visitor = visitors
    swiss = swiss_visitor.load(url)
    swedish = swedish_visitor.load(url)
    problems = check_case(case, swiss, swedish)
    summary[case.id] = {"why": case.why, "group": case.group, "problems": problems,
                        "swiss": swiss.summary(), "swedish": swedish.summary()}
    if (swedish.rendered or swedish.scripts - swiss.scripts) and swedish.failure is None:
        ARTIFACTS.mkdir(exist_ok=True)
        swedish_visitor.page.screenshot(path=str(ARTIFACTS / f"corpus-{case.id}-sweden.png"))
    assert not problems, f"case {case.id} ({case.why}):\n  " + "\n  ".join(problems)


def test_reports_arrive_from_every_kind_of_document(
        corpus: tuple[str, RawCases], visitors: tuple[Visitor, Visitor]) -> None:
    """The script comparison can fail: ``report`` reaches the test from an HTML page, an
    ``<iframe srcdoc>``, an ``onerror`` handler, an XHTML and an SVG document."""
    swiss = visitors[0]
    expected = {"ct-html": {"page"}, "iframe-srcdoc": {"srcdoc", "page"},
                "mxss-noscript-title": {"noscript-img", "page"}, "ct-xhtml": {"page"},
                "ct-svg-promo": {"page"}}
    for case_id, names in expected.items():
        seen = swiss.load(f"{corpus[0]}/case/{case_id}?fresh")
        assert seen.scripts == names, f"case {case_id}: reports {seen.scripts}, not {names}"


def test_chromium_asks_for_zstd_and_decodes_it(
        corpus: tuple[str, RawCases], visitors: tuple[Visitor, Visitor]) -> None:
    """Debian's chromium sends ``zstd`` in ``Accept-Encoding`` (so ``ce-zstd`` is a case a
    visitor meets) and shows the page it decodes from it."""
    url, raw = corpus
    seen = visitors[0].load(f"{url}/case/ce-zstd?fresh")  # not from the HTTP cache
    asked = raw.accept_encoding["ce-zstd", SWISS.encode()][-1]
    assert b"zstd" in asked.split(b", "), f"Chromium asked for {asked!r}"
    assert seen.rendered == ["#promo"]


def test_svg_icon_is_an_image_for_the_restricted_visitor(
        corpus: tuple[str, RawCases], visitors: tuple[Visitor, Visitor]) -> None:
    """An SVG icon without promotions is no 451 and no blank: it renders inside ``<img>``."""
    swedish = visitors[1]
    seen = swedish.load(f"{corpus[0]}/host/icon")
    assert seen.status == 200
    size = swedish.page.evaluate("() => { const i = document.getElementById('icon');"
                                 " return i.complete ? [i.naturalWidth, i.naturalHeight] : null; }")
    assert size == [16, 16], f"the icon did not render as an image for a Swedish visitor: {size}"

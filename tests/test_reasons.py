"""The decision vocabulary lives in one module, decisions are built in one place, and every
answer micafence sends itself comes from one module."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from micafence.policy.model import ROUTE_CLASSES
from micafence.reasons import Reason, RouteClass, reason_code, reason_table

REPO = Path(__file__).resolve().parents[1]

PACKAGE = REPO / "middleware" / "micafence"
#: Where decisions are built: the pure decide step and the pipeline that settles them.
DECISION_BUILDERS = {"decide.py", "pipeline.py"}
#: Where micafence's own answers are sent: answers.py, and the probe endpoints' own answers.
ANSWERERS = {"answers.py", "live/health.py"}
_TOOLS = ("bench/", "demo/")  # floor 8: they leave the core package (issue 16 item 5)


def _modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith(_TOOLS):
            found.append((name, ast.parse(path.read_text(encoding="utf-8"), name)))
    return found


def test_the_manual_reason_table_is_the_enum() -> None:
    """The manual's reason table is exactly what micafence.reasons.reason_table() generates."""
    page = (REPO / "docs" / "reasons.md").read_text(encoding="utf-8")
    assert reason_table() in page, (
        "docs/reasons.md's reason table differs from micafence.reasons: paste reason_table()")


def test_route_classes_are_the_policy_classes() -> None:
    assert [c.value for c in RouteClass] == list(ROUTE_CLASSES)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_every_refusing_reason_has_visitor_text(reason: Reason) -> None:
    passing = {Reason.PASS, Reason.IN_SCOPE, Reason.ONBOARDING, Reason.PROMOTION_APPROVED}
    assert bool(reason.text) is (reason not in passing)
    assert "EU" not in reason.text and "country" not in reason.text  # names no country


def test_reason_codes() -> None:
    assert reason_code("eu", Reason.NO_GRANT) == "eu.no_grant"
    assert reason_code("uk", Reason.PROMOTION_APPROVED) == "uk.promotion.approved"
    assert reason_code(None, Reason.PASS) == "pass"
    assert reason_code("eu", Reason.AUDIT_UNAVAILABLE) == "audit_unavailable"


def test_decisions_are_built_only_in_the_pipeline() -> None:
    """No module but decide.py and pipeline.py calls Decision(...) or ._replace(...) on one."""
    offenders = []
    for name, tree in _modules():
        if name in DECISION_BUILDERS:
            continue
        imports_decision = any(
            isinstance(node, ast.ImportFrom) and node.module == "micafence.decision"
            and any(alias.name == "Decision" for alias in node.names)
            for node in ast.walk(tree))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "Decision") or (
                    imports_decision and isinstance(func, ast.Attribute)
                    and func.attr == "_replace"):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


_ANSWER_TYPES = {"http.response.start", "websocket.http.response.start", "websocket.close"}


def test_answers_are_sent_only_from_answers_module() -> None:
    """A response start with a status of micafence's own, or a websocket refusal, is written
    only in answers.py (and by the probe endpoints)."""
    offenders = []
    for name, tree in _modules():
        if name in ANSWERERS:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant)}
            kind = keys.get("type")
            if isinstance(kind, ast.Constant) and kind.value in _ANSWER_TYPES and (
                    "status" in keys or kind.value == "websocket.close"):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


# Not the route class names, "onboarding" (a policy section) or "pass" (a word): those say
# more than a reason code.
_CODES = {r.suffix for r in Reason if r.suffix not in {c.value for c in RouteClass}} - {
    "onboarding", "pass"}


def test_reason_codes_are_written_only_in_reasons_module() -> None:
    """No string in the package (docstrings aside) spells a reason code or its tail:
    codes are made by reason_code()."""
    offenders = []
    for name, tree in _modules():
        if name == "reasons.py":
            continue
        docstrings = {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                text = node.value
                if text in _CODES or any(text.endswith("." + code) for code in _CODES):
                    offenders.append(f"{name}:{node.lineno} {text!r}")
    assert offenders == []


async def test_451_text_comes_from_the_reason(make_app: object) -> None:
    """A visitor refused for want of a grant reads the no-grant sentence; an unidentified one
    on a wind-down route the signed-in sentence."""
    app = make_app()  # type: ignore[operator]
    transport = httpx.ASGITransport(app=app, client=("89.160.20.112", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        orders = await client.post("/api/orders", json={"pair": "BTC-EUR"},
                                   headers={"accept": "application/json"})
        withdrawal = await client.post("/api/withdrawals", json={"asset": "BTC"},
                                       headers={"accept": "application/json"})
    assert orders.status_code == 451
    assert orders.json()["reason"] == "eu.no_grant"
    assert orders.json()["detail"] == Reason.NO_GRANT.text
    assert withdrawal.status_code == 451
    assert withdrawal.json()["reason"] == "eu.wind_down.unidentified"
    assert withdrawal.json()["detail"] == Reason.UNIDENTIFIED.text


def test_no_module_outside_the_tools_is_missed() -> None:
    """The scans above read the package (a sanity check that they see its modules)."""
    names = {name for name, _ in _modules()}
    assert {"decide.py", "pipeline.py", "answers.py", "reasons.py", "middleware.py"} <= names
    assert Path(PACKAGE / "reasons.py").is_file()

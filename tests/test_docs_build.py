"""The documentation site builds cleanly, and its policy reference covers the bundled policy.

``mkdocs build --strict`` turns every warning (a page missing from the nav, a dead link or
anchor, a snippet file that moved) into a failure; the test also fails on any WARNING line,
so a warning mkdocs does not count as strict still shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from micafence.reasons import RULE_CODES, Reason

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
POLICY_PAGE = DOCS / "policy.md"
DEFAULT_POLICY = ROOT / "middleware" / "micafence" / "data" / "default-policy.yaml"


def test_mkdocs_build_strict_has_no_warning(tmp_path: Path) -> None:
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as exc:  # a failure, not a skip: the docs build is part of the suite
        pytest.fail(f"{exc.name} is missing: pip install -e '.[docs]' (or '.[test]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    built = [p for p in pages if (site / (
        "index.html" if p == "index.md" else f"{p.removesuffix('.md')}/index.html"
    )).is_file()]
    assert built == pages


def _documented_keys(node: object, path: str = "") -> list[str]:
    """Key paths of the policy's sections and their settings (not data like zone names)."""
    keys: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            keys.append(here)
            # zones, assets, services and per-route settings are data: their own keys are
            # what the page documents, once, under a placeholder.
            if here in {"zones", "assets", "services", "promotions.routes", "promotions.approved",
                        "anonymizers", "scopes.related_services"}:
                continue
            keys.extend(_documented_keys(value, here))
    return keys


def test_policy_reference_names_every_key_of_the_bundled_policy() -> None:
    policy = YAML(typ="safe").load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    named = set(re.findall(r"`([a-z0-9_.]+)`", POLICY_PAGE.read_text(encoding="utf-8")))
    missing = [key for key in _documented_keys(policy) if key not in named]
    assert not missing, f"docs/policy.md does not name: {', '.join(missing)}"


def test_the_reason_page_names_exactly_the_reasons_of_the_module() -> None:
    """Every reason code of micafence.reasons is a row of docs/reasons.md, and every row is one
    of them: the page's table is generated (reason_table(), tests/test_reasons.py), and no row
    written by hand beside it names a code the module does not have."""
    page = (DOCS / "reasons.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([^`]+)` \|", page, re.MULTILINE))
    codes = {reason.pattern for reason in Reason} | {code for code, _ in RULE_CODES}
    assert not codes - rows, f"docs/reasons.md lacks: {sorted(codes - rows)}"
    assert not rows - codes, f"docs/reasons.md names codes it lacks: {sorted(rows - codes)}"

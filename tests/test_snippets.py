"""Every code block of README.md and docs/*.md is checked, so a wrong import, a stale flag or a
policy key that no longer exists fails the suite. A block's test id is ``file:line`` (the line
of its opening fence). How each language is checked (docs/layout.md says the same):

``python``
    Compiled (top-level ``await`` allowed). Every import runs and every imported name must
    exist. Every call of a micafence callable (imported, or used without an import and named in
    ``micafence.__all__``) must bind to its signature: no unknown keyword, no missing required
    argument (``Middleware(X, ...)`` and ``app.add_middleware(X, ...)`` bind ``X`` with the app
    first). A block that binds every name it uses and has no ``...`` is also run, in a fresh
    interpreter from the repository root with ``$MICAFENCE_AUDIT_KEY`` set (the production
    examples take their audit key from the environment, as the pages say).
``sh``, ``bash``, ``console``
    The command lines (in ``console``, the lines after ``$ ``; the rest is output), with
    continuations joined, comments dropped, split at ``&&``, ``||``, ``;`` and ``|``, leading
    ``NAME=value`` assignments dropped. A ``micafence`` command (``.venv/bin/micafence`` too)
    must parse with micafence's own parser, sub-commands of micafence-tools included. Synopsis
    notation: ``[...]`` is an optional group whose words are checked; ``a|b`` (or ``[a | b]``)
    are alternatives, each checked; ``POLICY...`` / ``PATH…`` is repeatable; a bare ``…`` or
    ``...`` leaves arguments out, so required ones may be missing; CAPITALS, ``$VAR``,
    ``$(…)`` and values with ``…`` are placeholders (no type conversion, but a ``choices``
    option needs a real choice). ``pip install`` names only distributions of this repository
    with extras they define, or other packages. In ``console`` output, reason codes
    (``micafence-reason: X``, ``"reason": "X"``) must be codes micafence gives.
``yaml``
    By shape: comments only must be an editor's schema line naming micafence's schema file; a
    mapping with ``cases`` is a ``micafence test`` cases file; a list of ``run:`` steps, or a
    workflow's ``jobs``, is CI, each ``run`` checked as ``sh``; ``groups`` is Prometheus alert
    rules, whose ``micafence_*`` metrics must be ones micafence exports;
    ``containers``/``initContainers``/``volumes`` is a Kubernetes manifest, parsed only. Anything
    else is a policy fragment: it is merged into the bundled default policy (a mapping key by key; a
    list of entries with ``id``, such as ``routes``, by id: an entry replaces the default's of the
    same id, the others are added; any other value replaces the default's) and the result must load
    without an error.
``json``
    Parsed.
``http``
    A response: its reason codes, as in ``console`` output.
``jinja``
    Parsed by Jinja2; every function it calls is a Jinja2 global once micafence's
    ``install_jinja2`` hook has run.

A block that is only ``--8<-- "file"`` (the site shows that file of the repository) is checked
as that file's text, where the file is: a whole policy file when no other shape fits; a
python file is not run (the test of its example runs it).

Not checked, with the reason: see :data:`NOT_CHECKED`. A fence without a language fails, as
does a language in neither list. A block that cannot be checked goes in :data:`EXEMPT`, by
file and a line of its text, with the reason.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2 import nodes
from ruamel.yaml import YAML

import micafence
from micafence.metrics import Metrics
from micafence.policy.casefile import check_cases
from micafence.policy.loader import check_policy, default_policy_path, load_policy
from micafence.policy.schema import schema_path
from micafence.promotions.templating import install_jinja2
from micafence.reasons import RULE_CODES, Reason, RouteClass
from tests.snippet_commands import ROOT, check_shell

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Languages whose blocks are not checked, and why.
NOT_CHECKED = {
    "ini": "geoipupdate's configuration file (docs/maxmind.md): MaxMind's format, which "
           "nothing in this repository reads",
}
#: Blocks that cannot be checked: (file, a line of the block) -> why.
EXEMPT: dict[tuple[str, str], str] = {}

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, dedented to their fence."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    at = 0
    while at < len(lines):
        opening = _FENCE.match(lines[at])
        if opening is None:
            at += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = at + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = "\n".join(line[indent:] for line in lines[at + 1:end])
        found.append(Block(path.relative_to(ROOT).as_posix(), at + 1, opening["lang"], body))
        at = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


# -- python ---------------------------------------------------------------------------------


def check_python(text: str, run: bool = True) -> None:
    tree = compile(text, "<block>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = _attribute(module, alias.name)
    free = _free_names(tree)
    names.update({n: getattr(micafence, n) for n in free if n in micafence.__all__})
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        _bind(call, names)
    awaits = any(isinstance(node, ast.Await) for node in ast.walk(tree))
    ellipsis = any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(tree))
    if run and not free and not ellipsis and not awaits:
        done = subprocess.run([sys.executable, "-c", text], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False, env=_RUN_ENVIRONMENT)
        assert done.returncode == 0, f"the block fails when run:\n{done.stderr}"


# The environment a production example expects (its audit key), and nothing else of micafence's.
_RUN_ENVIRONMENT = {**{k: v for k, v in os.environ.items() if not k.startswith("MICAFENCE_")},
                    "MICAFENCE_AUDIT_KEY": secrets.token_hex(32)}


def _attribute(module: Any, name: str) -> Any:
    if hasattr(module, name):
        return getattr(module, name)
    try:
        return importlib.import_module(f"{module.__name__}.{name}")
    except ModuleNotFoundError:
        raise AssertionError(f"{module.__name__} has no {name}") from None


def _free_names(tree: ast.AST) -> set[str]:
    """Names the block reads but never binds (nor are builtins)."""
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return read - bound - set(dir(builtins))


def _bind(call: ast.Call, names: dict[str, Any]) -> None:
    """Bind a call of a micafence callable to its signature, with placeholder values."""
    args: list[ast.expr] = list(call.args)
    func = call.func
    target = names.get(func.id) if isinstance(func, ast.Name) else None
    mounts = (isinstance(func, ast.Name) and func.id == "Middleware") or (
        isinstance(func, ast.Attribute) and func.attr == "add_middleware")
    if mounts and args and isinstance(args[0], ast.Name) and args[0].id in names:
        target, args = names[args[0].id], [ast.Constant("the app"), *args[1:]]
    if not callable(target) or not getattr(target, "__module__", "").startswith("micafence"):
        return
    if any(isinstance(a, ast.Starred) for a in args) or any(k.arg is None for k in call.keywords):
        return
    try:
        inspect.signature(target).bind(*args, **{k.arg: k.value for k in call.keywords
                                                 if k.arg is not None})
    except TypeError as exc:
        raise AssertionError(f"line {call.lineno}: {target.__qualname__}(): {exc}") from None


# -- yaml, reason codes, jinja ----------------------------------------------------------------

_KUBERNETES = {"containers", "initContainers", "volumes"}


def check_yaml(text: str, tmp_path: Path, source: Path | None = None) -> None:
    """``source``: the file the block includes (checked where it is, so its relative paths
    hold); an included mapping that is no cases file, CI or rules is a whole policy file."""
    data = YAML(typ="safe").load(text)
    if data is None:  # comments only: an editor's modeline naming the schema micafence ships
        lines = [line for line in text.splitlines() if line.strip()]
        named = [re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", line) for line in lines]
        assert lines and all(named), "a yaml block of comments only (none is a schema modeline)"
        for found in named:
            assert found and Path(found[1]).name == schema_path().name, \
                f"{found and found[1]}: not micafence's {schema_path().name}"
    elif isinstance(data, list) and data and all(isinstance(i, dict) and "run" in i for i in data):
        for step in data:
            check_shell(step["run"], console=False)
    elif isinstance(data, dict) and isinstance(data.get("jobs"), dict):  # a CI workflow
        for job in data["jobs"].values():
            for step in job.get("steps") or ():
                if "run" in step:
                    check_shell(step["run"], console=False)
    elif isinstance(data, dict) and "cases" in data:
        cases = source
        if cases is None:
            cases = tmp_path / "cases.yaml"
            cases.write_text(text, encoding="utf-8")
        _, errors = check_cases(str(cases))
        assert not errors, "\n".join(map(str, errors))
    elif source is not None:
        _policy_loads(source)
    elif isinstance(data, dict) and set(data) == {"groups"}:
        exported = _exported_metrics()
        named = set(re.findall(r"\bmicafence_[a-z_]+", text))
        assert named <= exported, f"not exported by micafence: {sorted(named - exported)}"
    elif isinstance(data, dict) and set(data) <= _KUBERNETES:
        pass  # Kubernetes' schema, not ours: parsed only
    else:
        assert isinstance(data, dict), "a policy fragment is a mapping"
        default = YAML(typ="safe").load(default_policy_path().read_text(encoding="utf-8"))
        merged = tmp_path / "policy.yaml"
        YAML(typ="safe").dump(_merge(default, data), merged)
        _policy_loads(merged)


def _merge(base: Any, fragment: Any) -> Any:
    if isinstance(base, dict) and isinstance(fragment, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in fragment.items()}}
    if _entries(base) and _entries(fragment):  # routes, rules: by id
        replaced = {entry["id"]: entry for entry in fragment}
        kept = [replaced.pop(entry["id"], entry) for entry in base]
        return kept + list(replaced.values())
    return fragment


def _entries(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "id" in i for i in value)


def _policy_loads(path: Path) -> None:
    _, errors = check_policy(path)
    assert not errors, "\n".join(map(str, errors))


def _exported_metrics() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "info": ("_info",)}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def _reason_codes() -> set[str]:
    policy = load_policy(default_policy_path())
    zones = [z.name for z in policy.zones] + ["anonymizer"]
    codes = {r.suffix for r in Reason if not r.zoned}
    codes |= {f"{zone}.{r.suffix}" for zone in zones for r in Reason if r.zoned}
    codes |= {code for code, _ in RULE_CODES if "<" not in code}
    codes |= {rule.reason for rule in policy.rules if rule.reason}
    return codes


_ANONYMIZER_CODE = re.compile(rf"anonymizer\.[a-z_]+\.({'|'.join(c.value for c in RouteClass)})")


def check_reasons(text: str) -> None:
    """Reason codes in a response or a console's output are codes micafence gives."""
    shown = re.findall(r"(?im)^micafence-reason:\s*(\S+)|\"reason\":\s*\"([^\"…]+)\"", text)
    known = _reason_codes()
    for code in {header or body for header, body in shown}:
        assert code in known or _ANONYMIZER_CODE.fullmatch(code), f"no such reason: {code}"


def check_jinja(text: str) -> None:
    environment = jinja2.Environment(autoescape=True)
    install_jinja2(environment)
    for call in environment.parse(text).find_all(nodes.Call):
        if isinstance(call.node, nodes.Name):
            assert call.node.name in environment.globals, f"no template function {call.node.name}"


# -- the test ---------------------------------------------------------------------------------


def check_block(block: Block, tmp_path: Path) -> None:
    # ``--8<-- "file"``: the site shows that file of the repository; its text is checked (a
    # python module is not run: the test of its example imports and runs it).
    included = re.fullmatch(r'--8<-- "([^"]+)"\s*', block.text)
    source = ROOT / included[1] if included else None
    text = block.text if source is None else source.read_text(encoding="utf-8")
    checks: dict[str, Callable[[], object]] = {
        "python": lambda: check_python(text, run=source is None),
        "sh": lambda: check_shell(text, console=False),
        "bash": lambda: check_shell(text, console=False),
        "console": lambda: (check_shell(text, console=True), check_reasons(text)),
        "yaml": lambda: check_yaml(text, tmp_path, source),
        "json": lambda: json.loads(text),
        "http": lambda: check_reasons(text),
        "jinja": lambda: check_jinja(text),
    }
    assert block.lang, "a code block names its language"
    if block.lang in NOT_CHECKED:
        return
    assert block.lang in checks, f"no check for {block.lang!r}: add one, or to NOT_CHECKED"
    checks[block.lang]()


def _params() -> list[Any]:
    """One param per block; an exempt block is skipped with its reason, visibly."""
    params, unused = [], set(EXEMPT)
    for block in ALL_BLOCKS:
        why = next((key for key in EXEMPT
                    if key[0] == block.page and key[1] in block.text.splitlines()), None)
        unused.discard(why)
        marks = [pytest.mark.skip(reason=f"exempt: {EXEMPT[why]}")] if why else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    assert not unused, f"EXEMPT names no block: {unused}"
    return params


@pytest.mark.parametrize("block", _params())
def test_code_block(block: Block, tmp_path: Path) -> None:
    check_block(block, tmp_path)


# -- the checks fail when they should -----------------------------------------------------------

BAD = [
    ("python", "from micafence import NoSuchMiddleware"),
    ("python", "from micafence.nowhere import MicafenceMiddleware"),
    ("python", "MicafenceMiddleware(app, policy='p.yaml', geoip_db='g.mmdb', no_such=1)"),
    ("python", "Middleware(MicafenceMiddleware, policy='p.yaml')"),
    ("python", "import sys\nsys.exit(3)"),
    ("sh", "micafence check --no-such-flag policies/default.yaml"),
    ("sh", "micafence check --format yaml policies/default.yaml"),
    ("sh", "micafence routes"),
    ("sh", "micafence demo [--audit-dir DIR | --no-such-flag]"),
    ("sh", "micafence grant add --client c --country FR --evidence e"),
    ("sh", "MICAFENCE_OFFICER=a micafence grant approve"),
    ("sh", "python3 -m venv .venv && .venv/bin/micafence explain --ip"),
    ("sh", "pip install 'micafence[no-such-extra]'"),
    ("sh", "pip install -e ./nowhere"),
    ("console", "$ micafence tset p.yaml cases.yaml\n1 passed"),
    ("console", "$ curl -i http://127.0.0.1:8000/\nmicafence-reason: eu.no_such_reason"),
    ("http", 'HTTP/1.1 451 Unavailable For Legal Reasons\n\n{"reason": "eu.acount_creation"}'),
    ("yaml", "promotions: {no_such_key: 1}"),
    ("yaml", "# yaml-language-server: $schema=https://example.com/other.schema.json"),
    ("yaml", "# a comment and nothing else"),
    ("yaml", "routes:\n  - {id: r, class: no_such_class, path: /x}"),
    ("yaml", "cases:\n  - {name: n, request: {ip: 1.2.3.4}, expect: {no_such: 1}}"),
    ("yaml", "- run: micafence check --strict policies/*.yaml"),
    ("yaml", "groups:\n  - rules:\n      - expr: micafence_no_such_total > 0"),
    ("json", "{'single': 'quotes'}"),
    ("jinja", "{% if promotion_alowed('uk') %}x{% endif %}"),
    ("toml", "a = 1"),
    ("", "micafence check policies/default.yaml"),
]
GOOD = [
    ("python", "from micafence import AuditLog, MicafenceMiddleware"),
    ("sh", "micafence --version"),
    ("sh", "micafence check POLICY... [--format text|json|github]"),
    ("sh", "micafence grant add --client c --country FR … --evidence e   # elided"),
    ("sh", 'micafence grant add --client c --service s --asset BTC --channel email \\\n'
           '    --initiated-at "$(date -u +%FT%TZ)" --evidence e'),
    ("console", "$ MICAFENCE_OFFICER=b micafence grant approve grt_1\nmicafence-reason: pass"),
    ("yaml", "routes:\n  - {id: r, class: service, path: /x}"),
    ("yaml", "- run: micafence check --format github policies/*.yaml"),
]


@pytest.mark.parametrize(("lang", "text"), BAD, ids=[f"{lang}:{text[:40]}" for lang, text in BAD])
def test_a_wrong_block_fails(lang: str, text: str, tmp_path: Path) -> None:
    with pytest.raises((AssertionError, ImportError, ValueError, SyntaxError)):
        check_block(Block("example.md", 1, lang, text), tmp_path)


@pytest.mark.parametrize(("lang", "text"), GOOD, ids=[f"{lang}:{text[:40]}" for lang, text in GOOD])
def test_a_right_block_passes(lang: str, text: str, tmp_path: Path) -> None:
    check_block(Block("example.md", 1, lang, text), tmp_path)

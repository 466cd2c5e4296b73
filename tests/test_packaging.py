"""The core wheel holds the middleware and needs only what the middleware needs.

The demo and the benchmark are micafence-tools (``bench/``), a distribution of its own that adds
``micafence demo`` and ``micafence bench`` through the ``micafence.subcommands`` entry-point
group. Both wheels are built here from a copy of the sources (pip, no build isolation, no
index), their contents and metadata read, and the core wheel installed in a virtual environment
holding nothing but it and its required dependencies, where its commands run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from email.message import Message
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import micafence
from micafence.policy.loader import SCHEMA_VERSIONS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "middleware" / "micafence" / "data" / "default-policy.yaml"

# What the middleware needs, by name: the MaxMind reader, the policy YAML, metrics, the promotion
# rewriter's engine (lol-html), the compressions it decodes, the signatures of exports and grants.
CORE_REQUIRES = {"maxminddb", "ruamel-yaml", "prometheus-client", "python-lolhtml", "brotli",
                 "zstandard", "cryptography"}
# Never imported by the core: the tools and what only they (or the tests) need.
NEVER_IMPORTED = {"micafence_tools", "starlette", "uvicorn", "gunicorn", "fastapi", "httpx",
                  "geoip2", "locust"}
# The extras' packages: imported only inside functions (lazily), but for the gunicorn worker.
EXTRAS = {"redis", "hiredis", "uvicorn_worker"}


def _copy_sources(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", ".venv", ".*_cache"))
    return target


def _build_wheel(source: Path, out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob(f"{source.name.replace('-', '_')}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wheels")
    core = root / "micafence"
    core.mkdir()
    shutil.copy(REPO / "pyproject.toml", core)
    shutil.copy(REPO / "README.md", core)
    shutil.copy(REPO / "LICENSE", core)
    _copy_sources(REPO / "middleware", core / "middleware")
    tools = _copy_sources(REPO / "bench", root / "micafence_tools")
    return {"core": _build_wheel(core, root / "out"), "tools": _build_wheel(tools, root / "out")}


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _read(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()


def _metadata(wheel: Path) -> Message:
    return Parser().parsestr(_read(wheel, ".dist-info/METADATA"))


def _requirements(metadata: Message) -> list[Requirement]:
    return [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]


def _unconditional(metadata: Message) -> set[str]:
    return {canonicalize_name(r.name) for r in _requirements(metadata)
            if r.marker is None or r.marker.evaluate({"extra": ""})}


def _extra(metadata: Message, extra: str) -> set[str]:
    return {canonicalize_name(r.name) for r in _requirements(metadata)
            if r.marker is not None and r.marker.evaluate({"extra": extra})
            and not r.marker.evaluate({"extra": ""})}


def _imports(source: str) -> tuple[set[str], set[str]]:
    """Top-level names a module imports anywhere, and those it imports when it is itself
    imported (module level, ``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(source)
    anywhere = _roots(ast.walk(tree))
    on_import: list[ast.AST] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        statement = todo.pop()
        on_import.append(statement)
        if isinstance(statement, ast.If) and not (
            isinstance(statement.test, ast.Name) and statement.test.id == "TYPE_CHECKING"
        ):
            todo += statement.body + statement.orelse
        elif isinstance(statement, ast.Try):
            todo += statement.body + statement.orelse + statement.finalbody
            for handler in statement.handlers:
                todo += handler.body
        elif isinstance(statement, ast.ClassDef):
            todo += statement.body
    return anywhere, _roots(on_import)


def _roots(nodes: Iterable[ast.AST]) -> set[str]:
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


# -- the core wheel ----------------------------------------------------------------------------


def test_core_wheel_holds_the_middleware_and_neither_demo_nor_benchmark(
    wheels: dict[str, Path],
) -> None:
    names = _names(wheels["core"])
    assert {n.split("/")[0] for n in names} == {"micafence", "micafence-0.1.0.dist-info"}
    for wanted in ("micafence/__init__.py", "micafence/middleware.py", "micafence/cli.py",
                   "micafence/workers.py", "micafence/py.typed",
                   "micafence/data/GeoLite2-Country-Test.mmdb",
                   "micafence/data/default-policy.yaml", "micafence/data/policy.schema.json",
                   "micafence-0.1.0.dist-info/licenses/LICENSE"):
        assert wanted in names
    assert not [n for n in names if n.startswith(("micafence/bench/", "micafence/demo/"))]
    # No module imports the tools, Starlette or uvicorn, even lazily; Redis is imported only
    # inside functions (the redis extra), uvicorn-worker only by the gunicorn worker class.
    with zipfile.ZipFile(wheels["core"]) as archive:
        imports = {name: _imports(archive.read(name).decode())
                   for name in archive.namelist() if name.endswith(".py")}
    assert {n for n, (anywhere, _) in imports.items() if anywhere & NEVER_IMPORTED} == set()
    assert {n: on_import & EXTRAS for n, (_, on_import) in imports.items()
            if on_import & EXTRAS} == {"micafence/workers.py": {"uvicorn_worker"}}
    assert any("redis" in anywhere for anywhere, _ in imports.values())  # lazily, as above


def test_core_wheel_requires_only_what_the_middleware_needs(wheels: dict[str, Path]) -> None:
    metadata = _metadata(wheels["core"])
    assert _unconditional(metadata) == CORE_REQUIRES
    assert _extra(metadata, "redis") == {"redis"}
    assert _extra(metadata, "gunicorn") == {"gunicorn", "uvicorn-worker"}
    for name in ("starlette", "uvicorn", "redis"):  # never without an extra
        assert name not in _unconditional(metadata)
    assert _extra(metadata, "docs") == {"mkdocs", "mkdocs-material"}
    assert set(metadata.get_all("Provides-Extra") or []) == {"redis", "gunicorn", "docs", "test"}
    entry_points = _read(wheels["core"], ".dist-info/entry_points.txt")
    assert "micafence = micafence.cli:main" in entry_points
    assert "micafence.subcommands" not in entry_points


def test_core_wheel_is_proprietary_and_never_uploaded(wheels: dict[str, Path]) -> None:
    metadata = _metadata(wheels["core"])
    # PyPI refuses an upload carrying this classifier: a `twine upload` by mistake fails.
    assert "Private :: Do Not Upload" in (metadata.get_all("Classifier") or [])
    assert metadata["License-Expression"] == "LicenseRef-Proprietary"
    assert metadata.get_all("License-File") == ["LICENSE"]
    licence = _read(wheels["core"], ".dist-info/licenses/LICENSE")
    assert licence == (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "micafence authors. All rights reserved." in licence


_RELEASE = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2}|Unreleased)$",
                      re.MULTILINE)


def test_changelog_has_a_section_for_the_current_version_on_top() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog\n")
    releases = [match["version"] for match in _RELEASE.finditer(changelog)]
    assert releases and releases[0] == micafence.__version__, releases
    assert len(releases) == len(set(releases))
    # and the policy format versions this one reads each have their migration notes
    for version in SCHEMA_VERSIONS:
        assert f"\n### Format {version} (read since " in changelog


# -- the tools wheel ---------------------------------------------------------------------------


def test_tools_wheel_carries_demo_and_benchmark_as_subcommands(wheels: dict[str, Path]) -> None:
    names = _names(wheels["tools"])
    assert {n.split("/")[0] for n in names} == {"micafence_tools",
                                                "micafence_tools-0.1.0.dist-info"}
    for wanted in ("micafence_tools/demo/app.py", "micafence_tools/demo/command.py",
                   "micafence_tools/bench/runner.py", "micafence_tools/bench/command.py",
                   "micafence_tools/py.typed"):
        assert wanted in names
    entry_points = _read(wheels["tools"], ".dist-info/entry_points.txt")
    group = entry_points.split("[micafence.subcommands]", 1)[1].split("[", 1)[0]
    assert {line.strip() for line in group.splitlines() if line.strip()} == {
        "demo = micafence_tools.demo.command:register",
        "bench = micafence_tools.bench.command:register",
    }
    metadata = _metadata(wheels["tools"])
    core_version = _metadata(wheels["core"])["Version"]
    requires = {canonicalize_name(r.name): r for r in _requirements(metadata)}
    assert str(requires["micafence"].specifier) == f"=={core_version}"  # the same repository
    assert {"micafence", "starlette", "uvicorn"} <= _unconditional(metadata)
    assert {"micafence", "geoip2", "locust"} <= _extra(metadata, "bench")


# -- the core alone ----------------------------------------------------------------------------


def _closure(names: set[str]) -> set[str]:
    """Installed distributions ``names`` need, with what they need in turn (no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        todo += [r.name for r in (Requirement(t) for t in distribution(name).requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def _link_distribution(name: str, site: Path) -> None:
    dist = distribution(name)
    for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
        if not (site / top).exists():
            (site / top).symlink_to(Path(str(dist.locate_file(top))))


@pytest.fixture(scope="module")
def core_alone(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the core wheel and its required dependencies, nothing else
    (the dependencies linked from this environment: no index)."""
    venv = tmp_path_factory.mktemp("core-alone") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(wheels["core"])],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip())
    for name in _closure(CORE_REQUIRES):
        _link_distribution(name, site)
    return venv


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, timeout=120, env=env, cwd=venv)


def test_core_alone_checks_and_explains(core_alone: Path) -> None:
    absent = _run(core_alone, "python", "-c", "import starlette")
    assert absent.returncode != 0 and "No module named 'starlette'" in absent.stderr
    check = _run(core_alone, "micafence", "check", str(DEFAULT_POLICY))
    assert check.returncode == 0, check.stderr
    assert "OK — policy 'default'" in check.stdout
    explain = _run(core_alone, "micafence", "explain", "--ip", "89.160.20.112", "--method",
                   "POST", "--path", "/api/accounts", "--json")
    assert explain.returncode == 0, explain.stderr
    assert json.loads(explain.stdout)["reason"] == "eu.account_creation"


def test_core_alone_names_what_to_install_for_demo_bench_and_gunicorn(core_alone: Path) -> None:
    for command in ("demo", "bench"):
        run = _run(core_alone, "micafence", command)
        assert run.returncode == 1
        assert f"`micafence {command}` comes with micafence-tools" in run.stderr
        assert "pip install -e ./bench" in run.stderr
    worker = _run(core_alone, "python", "-c", "import micafence.workers")
    assert worker.returncode == 1
    assert "pip install 'micafence[gunicorn]'" in worker.stderr


# -- micafence check, with everything installed ------------------------------------------------

_CHECK_IMPORTS = """
import json, sys
before = set(sys.modules)
from micafence.cli import main
code = main(["check", sys.argv[2]])
new = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n not in before}
open(sys.argv[1], "w").write(json.dumps({"code": code, "modules": new}))
"""


@pytest.fixture
def check_imports(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "imports.json"
    done = subprocess.run([sys.executable, "-c", _CHECK_IMPORTS, str(out), str(DEFAULT_POLICY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_check_imports_nothing_outside_the_core(check_imports: dict[str, Any]) -> None:
    # micafence-tools, Starlette, uvicorn and Redis are installed here (tests/run installs
    # everything), so leaving them out is the command's doing.
    for name in ("micafence-tools", "starlette", "uvicorn", "redis"):
        distribution(name)
    assert check_imports["code"] == 0
    modules: dict[str, str | None] = check_imports["modules"]
    assert {n.split(".")[0] for n in modules} & (NEVER_IMPORTED | EXTRAS) == set()
    # Every module file imported is the standard library's, micafence's, or a file of a
    # distribution the core requires (modules without a file are built in or made by one).
    stdlib = {Path(sysconfig.get_path(key)).resolve() for key in ("stdlib", "platstdlib")}
    core = (REPO / "middleware" / "micafence").resolve()
    required = {Path(str(dist.locate_file(f))).resolve()
                for dist in map(distribution, _closure(CORE_REQUIRES)) for f in dist.files or []}
    outside = sorted(
        name for name, file in modules.items()
        if file is not None and (path := Path(file).resolve()) not in required
        and not any(path.is_relative_to(root) for root in (*stdlib, core))
    )
    assert outside == []

"""The demo's container recipe (examples/container/Containerfile), read without a container
engine: this machine has none running, so the image is not built here. What a build needs from
the repository is checked instead: every COPY source exists in the build context the docs
give, the image runs as an unprivileged user, and its command is one the ``micafence``
command accepts, serving the port the image exposes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from micafence.cli import build_parser
from tests.test_packaging import _copy_sources

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "examples" / "container" / "Containerfile"
SECTION = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8").split(
    "## The demo in a container")[1].split("\n## ")[0]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def documented(word: str) -> list[str]:
    """The docs' first ``docker WORD ...`` line, as argv."""
    return shlex.split(next(line for line in SECTION.splitlines()
                            if line.startswith(f"docker {word} ")))


def test_the_image_starts_from_python_3_11_slim() -> None:
    assert instructions()[0] == ("FROM", "python:3.11-slim")


def test_every_copy_source_is_in_the_documented_build_context() -> None:
    build = documented("build")
    assert Path(ROOT / build[build.index("-f") + 1]) == CONTAINERFILE
    context = ROOT / build[-1]  # the command runs from the repository root
    copies = [shlex.split(arguments) for word, arguments in instructions() if word == "COPY"]
    assert copies
    for *sources, _destination in copies:
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context"


def test_the_package_metadata_the_build_reads_is_copied() -> None:
    copied = {source for word, arguments in instructions() if word == "COPY"
              for source in shlex.split(arguments)[:-1]}
    # pyproject.toml names README.md as the readme (the installed package's description).
    assert {"pyproject.toml", "README.md", "bench/pyproject.toml"} <= copied


def copy_as_the_build_does(context: Path, workdir: Path) -> None:
    """The COPY lines, with their meaning for these forms: a directory's contents go to the
    destination; a file goes into a destination ending in "/", else to it."""
    for word, arguments in instructions():
        if word != "COPY":
            continue
        *sources, destination = shlex.split(arguments)
        for item in sources:
            source, target = context / item, workdir / destination
            if source.is_dir():
                _copy_sources(source, target)
                continue
            if destination.endswith("/"):
                target = target / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)


def test_what_is_copied_is_enough_to_build_what_pip_installs(tmp_path: Path) -> None:
    # The build's first steps, without the engine: the COPY lines into a fresh directory, then
    # each distribution the RUN line installs built from there (wheels, no index).
    workdir = tmp_path / "src"
    workdir.mkdir()
    copy_as_the_build_does(ROOT, workdir)
    [install] = [shlex.split(arguments) for word, arguments in instructions()
                 if word == "RUN" and arguments.startswith("pip install")]
    targets = [word for word in install[2:] if not word.startswith("-")]
    assert targets == [".", "./bench"]
    for target in targets:
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheels"),
             str(workdir / target)], capture_output=True, text=True, timeout=300, check=False)
        assert built.returncode == 0, built.stderr
    wheels = sorted(path.name.split("-")[0] for path in (tmp_path / "wheels").glob("*.whl"))
    assert wheels == ["micafence", "micafence_tools"]


def test_the_demo_runs_as_an_unprivileged_user() -> None:
    words = [word for word, _ in instructions()]
    users = [arguments for word, arguments in instructions() if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert words.index("USER") < words.index("CMD")


def test_the_command_is_a_micafence_demo_on_the_exposed_port() -> None:
    [command] = [arguments for word, arguments in instructions() if word == "CMD"]
    argv = json.loads(command)  # the exec form: no shell between the signal and the server
    assert argv[0] == "micafence"
    args = build_parser(argv[1]).parse_args(argv[1:])
    assert args.command == "demo"
    assert args.func.__module__ == "micafence_tools.demo.command"
    assert args.host == "0.0.0.0"
    [exposed] = [arguments for word, arguments in instructions() if word == "EXPOSE"]
    assert args.port == int(exposed)
    run = documented("run")
    assert f"127.0.0.1:{args.port}:{args.port}" in run  # published on the host's loopback only


def test_the_documented_host_network_command_is_a_micafence_demo_on_loopback() -> None:
    [line] = [line for line in SECTION.splitlines() if "--network host" in line]
    argv = shlex.split(line)
    command = argv[argv.index("micafence-demo") + 1:]
    assert command[0] == "micafence"
    args = build_parser(command[1]).parse_args(command[1:])
    assert (args.command, args.host) == ("demo", "127.0.0.1")


@pytest.mark.parametrize("word", ["build", "run"])
def test_the_docs_use_the_image_name_the_recipe_says(word: str) -> None:
    assert "micafence-demo" in documented(word)
    assert "-t micafence-demo" in CONTAINERFILE.read_text(encoding="utf-8")

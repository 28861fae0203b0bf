"""The environment is what uv.lock says, and generated artefacts do not depend on library versions.

- every installed distribution is pinned by uv.lock at the installed version (and nothing the project
  declares is missing);
- the uv the Makefile and the Dockerfile bootstrap is the locked one;
- the oldest and the newest msgspec that pyproject allows generate byte-identical ``schemas/``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked_versions() -> dict[str, set[str]]:
    versions: dict[str, set[str]] = defaultdict(set)
    for package in LOCK["package"]:
        versions[_normalise(package["name"])].add(package["version"])
    return versions


def _declared() -> list[Requirement]:
    declared = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    declared += [Requirement(r) for r in PYPROJECT["dependency-groups"]["dev"]]
    return declared


def test_every_installed_distribution_is_the_locked_version() -> None:
    locked = _locked_versions()
    project = _normalise(PYPROJECT["project"]["name"])
    installed = {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    unlocked = sorted(f"{n}=={v}" for n, v in installed.items() if n != project and n not in locked)
    assert not unlocked, f"installed but not in uv.lock (run `make venv`): {unlocked}"
    drifted = sorted(
        f"{n}: installed {v}, locked {sorted(locked[n])}"
        for n, v in installed.items()
        if n != project and v not in locked[n]
    )
    assert not drifted, f"installed versions differ from uv.lock (run `make venv`): {drifted}"


def test_every_declared_dependency_is_installed_within_its_range() -> None:
    installed = {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    for requirement in _declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = _normalise(requirement.name)
        assert name in installed, f"{requirement} is declared but not installed"
        assert requirement.specifier.contains(installed[name], prereleases=True), (
            f"{name} {installed[name]} is outside the declared {requirement.specifier}"
        )


def test_the_bootstrapped_uv_is_the_locked_one() -> None:
    (uv_lock_version,) = _locked_versions()["uv"]
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert makefile and dockerfile
    assert makefile.group(1) == dockerfile.group(1) == uv_lock_version


def _msgspec_range() -> Requirement:
    (requirement,) = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == "msgspec"]
    return requirement


GENERATE = """
import json
import msgspec
from pipeline.contracts.topics import load_registry, schema_text
schemas = {topic.schema_path.name: schema_text(topic) for topic in load_registry()}
print(json.dumps({"msgspec": msgspec.__version__, "schemas": schemas}))
"""


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_schemas_are_the_same_under_the_oldest_and_newest_allowed_msgspec(which: str, tmp_path: Path) -> None:
    """Installs that msgspec into a throwaway directory (from the package registry) and regenerates."""
    requirement = _msgspec_range()
    floor = next(s.version for s in requirement.specifier if s.operator == ">=")
    wanted = f"msgspec=={floor}" if which == "oldest" else f"msgspec{requirement.specifier}"
    uv = Path(sys.executable).parent / "uv"
    target = tmp_path / "site"
    install = subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(target),
            wanted,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        pytest.fail(f"could not install {wanted} from the package registry: {install.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", GENERATE], capture_output=True, text=True, env=env, check=True)
    generated = json.loads(done.stdout)
    assert requirement.specifier.contains(generated["msgspec"])
    if which == "oldest":
        assert Version(generated["msgspec"]) == Version(floor)
    stale = [name for name, text in generated["schemas"].items() if (ROOT / "schemas" / name).read_text() != text]
    assert not stale, f"msgspec {generated['msgspec']} generates different {stale}"

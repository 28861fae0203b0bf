"""The forge workflows (.github/workflows) pass actionlint, and every step that runs something runs one
`make` target that exists, so a forge run and a local run cannot drift apart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
# forge plumbing a step may use instead of a make target: checkout, cache, Python, registry login, artefacts
PLUMBING = {
    "actions/checkout",
    "actions/cache",
    "actions/setup-python",
    "docker/login-action",
    "actions/upload-artifact",
}
REQUIRED = {"ci.yml", "image.yml", "release.yml", "nightly.yml", "config.yml"}


def _steps(workflow: Path) -> list[dict[str, Any]]:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return [step for job in jobs.values() for step in job["steps"]]


def test_the_workflows_exist() -> None:
    assert {w.name for w in WORKFLOWS} >= REQUIRED


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = Path(sys.executable).parent / "actionlint"
    done = subprocess.run(
        [str(actionlint), "-color=false", *map(str, WORKFLOWS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_step_is_a_make_target_or_plumbing(workflow: Path) -> None:
    for step in _steps(workflow):
        if "uses" in step:
            action, _, version = step["uses"].partition("@")
            assert action in PLUMBING, f"{workflow.name}: {action} is not plumbing: make it a make target"
            assert re.fullmatch(r"v\d+", version), f"{workflow.name}: pin {action} to a major version"
            continue
        command = step["run"].strip()
        match = re.fullmatch(r"make ([a-z][a-z0-9-]*)(?: [A-Z_]+=(?:\S+|\$\{\{ [a-z.]+ \}\}))*", command)
        assert match, f"{workflow.name}: `{command}` must be one make target (with VAR=value settings)"
        assert match.group(1) in MAKE_TARGETS, f"{workflow.name}: no make target {match.group(1)!r}"

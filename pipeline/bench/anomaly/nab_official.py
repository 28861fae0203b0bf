"""Runs numenta/NAB's own scorer (``run.py --optimize --score --normalize``) on results written by the NAB harness,
in a virtual environment of its own (NAB's scorer needs pandas < 2, which the project does not use).

NAB pins pandas 0.23.3, numpy and simplejson 3.11.1 (requirements.txt): wheels exist up to Python 3.7, so on a 3.7
interpreter the venv gets exactly those pins; on Python 3.8+ (no pandas 0.23 wheels, and it does not build) it gets
the closest set that runs NAB's scorer unchanged: pandas 1.5.3, numpy 1.26.4, simplejson 3.19.3. The scorer runs in
a scratch results directory (NAB's null-detector baselines copied from the checkout, our results beside them), so
the checkout's ``results/`` and ``config/thresholds.json`` are left as they were.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

NAB_PINS = ("pandas==0.23.3", "numpy==1.16.6", "simplejson==3.11.1")  # NAB's requirements.txt (scorer part)
CLOSEST_PINS = ("pandas==1.5.3", "numpy==1.26.4", "simplejson==3.19.3")  # Python >= 3.8


class OfficialScorerError(RuntimeError):
    """The NAB checkout, its venv or its scorer run is not usable."""


@dataclass(frozen=True)
class OfficialRun:
    scores: dict[str, float]  # profile -> normalised score, from NAB's final_results.json
    python: str  # interpreter version of the venv
    packages: str  # pandas/numpy versions the scorer ran with
    output: str  # the scorer's console output


def check_checkout(nab: Path) -> None:
    missing = [
        p for p in ("run.py", "nab/runner.py", "results/null", "labels/combined_windows.json") if not (nab / p).exists()
    ]
    if missing:
        raise OfficialScorerError(f"{nab} is not a numenta/NAB checkout (missing {', '.join(missing)})")


def _run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603 - fixed args
    if done.returncode != 0:
        raise OfficialScorerError(f"{' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def ensure_venv(venv: Path, python: str) -> Path:
    """The venv's interpreter, creating the venv with ``python -m venv`` and pip (PyPI) when it has no pandas."""
    exe = venv / "bin" / "python"
    if exe.exists() and subprocess.run([str(exe), "-c", "import pandas"], check=False).returncode == 0:  # noqa: S603
        return exe
    _run([python, "-m", "venv", "--clear", str(venv)])
    minor = _run([str(exe), "-c", "import sys; print(sys.version_info[1])"]).strip()
    pins = NAB_PINS if int(minor) <= 7 else CLOSEST_PINS
    _run([str(exe), "-m", "pip", "install", "-q", "--only-binary", "pandas,numpy", *pins])
    return exe


def run_official(nab: Path, results: Path, detector: str, venv_python: Path, jobs: int = 1) -> OfficialRun:
    """Score ``results/<detector>/...`` with the checkout's ``run.py --optimize --score --normalize``."""
    check_checkout(nab)
    if not (results / detector).is_dir():
        raise OfficialScorerError(f"no results in {results / detector}")
    with tempfile.TemporaryDirectory(prefix="mp-nab-official-") as tmp:
        scratch = Path(tmp)
        (scratch / "null").mkdir()
        for baseline in (nab / "results" / "null").glob("null_*_scores.csv"):
            shutil.copy(baseline, scratch / "null" / baseline.name)
        shutil.copytree(results / detector, scratch / detector)
        thresholds = scratch / "thresholds.json"
        thresholds.write_text("{}")
        args = [str(venv_python), "run.py", "--optimize", "--score", "--normalize", "--skipConfirmation"]
        args += ["-d", detector, "--resultsDir", str(scratch), "-t", str(thresholds), "-n", str(max(1, jobs))]
        output = _run(args, cwd=nab)
        final = json.loads((scratch / "final_results.json").read_text())
    version = _run([str(venv_python), "-c", "import sys; print(sys.version.split()[0])"]).strip()
    packages = _run(
        [
            str(venv_python),
            "-c",
            "import pandas, numpy; print(f'pandas {pandas.__version__}, numpy {numpy.__version__}')",
        ]
    )
    return OfficialRun({k: float(v) for k, v in final[detector].items()}, version, packages.strip(), output)

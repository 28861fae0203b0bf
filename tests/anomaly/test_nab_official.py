"""NAB's own scorer (numenta/NAB ``run.py``) against ours: they agree to 0.01 on every profile.

Needs a numenta/NAB checkout named by ``MARKETPRISM_NAB_CHECKOUT`` and a Python to build the scorer's venv from
(``MARKETPRISM_NAB_PYTHON``, default ``python3``; the venv is made under the temporary directory on first use,
from PyPI). Skipped without the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.bench.anomaly.nab import DETECTOR_NAME, list_files, load_windows, read_file, score_results, write_result
from pipeline.bench.anomaly.nab_official import OfficialScorerError, check_checkout, ensure_venv, run_official
from tests.conftest import NAB_DIR

CHECKOUT = os.environ.get("MARKETPRISM_NAB_CHECKOUT")


def test_a_directory_that_is_not_a_nab_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OfficialScorerError, match="not a numenta/NAB checkout"):
        check_checkout(tmp_path)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not CHECKOUT, reason="MARKETPRISM_NAB_CHECKOUT (a numenta/NAB checkout) not set")
def test_official_scorer_agrees_with_ours_to_a_hundredth(tmp_path: Path) -> None:
    from pipeline.anomaly.ensemble import SeriesDetector

    assert CHECKOUT is not None
    relpaths = list_files(NAB_DIR)
    windows = load_windows(NAB_DIR)
    config = DetectorConfig(robust_window=100, detectors=("robust",), warmup=50)  # cheap but a real detector
    for relpath in relpaths:
        nab = read_file(NAB_DIR, relpath)
        detector = SeriesDetector(config)
        scores = [detector.update(v).score for v in nab.values]
        write_result(tmp_path / "results", nab, scores, windows.get(relpath, []))
    ours = {r.profile: r.score for r in score_results(NAB_DIR, tmp_path / "results", relpaths)}
    python = os.environ.get("MARKETPRISM_NAB_PYTHON", "python3")
    run = run_official(Path(CHECKOUT), tmp_path / "results", DETECTOR_NAME, ensure_venv(tmp_path / "venv", python), 2)
    assert set(run.scores) == set(ours)
    for profile, score in run.scores.items():
        assert ours[profile] == pytest.approx(score, abs=0.01), profile

"""The NAB cross-validation protocol (docs/anomaly.md): folds and the selection, on real NAB files."""

from __future__ import annotations

import pytest

from pipeline.bench.anomaly.nab import list_files
from pipeline.bench.anomaly.nab_cv import GRID, folds, run_cv
from tests.conftest import NAB_DIR


def test_folds_alternate_within_each_category_and_cover_every_file() -> None:
    names = ["b/1.csv", "a/2.csv", "a/1.csv", "a/3.csv", "b/2.csv", "c/1.csv"]
    a, b = folds(names)
    assert a == ["a/1.csv", "a/3.csv", "b/1.csv", "c/1.csv"]
    assert b == ["a/2.csv", "b/2.csv"]
    assert sorted(a + b) == sorted(names)


def test_grid_holds_the_options_off() -> None:
    assert {"record_halflife": 0, "spatial_tolerance": 0.0} in GRID


@pytest.mark.shared
def test_folds_of_the_corpus_both_hold_every_category() -> None:
    a, b = folds(list_files(NAB_DIR))
    assert {r.split("/")[0] for r in a} == {r.split("/")[0] for r in b}
    assert not set(a) & set(b)
    assert len(a) + len(b) == 58


@pytest.mark.shared
def test_cross_validation_picks_on_one_fold_and_scores_the_other(tmp_path: object) -> None:
    files = [
        "artificialWithAnomaly/art_daily_jumpsup.csv",
        "artificialWithAnomaly/art_daily_flatmiddle.csv",
        "realKnownCause/ec2_request_latency_system_failure.csv",
        "realKnownCause/machine_temperature_system_failure.csv",
    ]
    grid = [{"record_halflife": 0}, {"record_halflife": 500}]
    result = run_cv(NAB_DIR, grid=grid, jobs=1, files=files)
    assert [(f.tuned_on, f.scored_on) for f in result.folds] == [("A", "B"), ("B", "A")]
    for fold in result.folds:
        best = max(s[fold.tuned_on] for s in result.grid_scores)
        assert fold.tuning_score == pytest.approx(best)  # the tuning fold's best candidate was picked
        assert fold.params in grid
        for profile, score in fold.scores.items():
            assert fold.carried[profile] <= score + 1e-9  # a carried threshold never beats the re-optimised one
    assert result.final_params in grid
    assert result.full["standard"] == pytest.approx(max(s["all"] for s in result.grid_scores))

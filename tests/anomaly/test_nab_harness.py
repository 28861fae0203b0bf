"""The NAB harness end to end on three real NAB files: detector -> NAB result layout -> our scorer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.bench.anomaly.nab import (
    DETECTOR_NAME,
    load_windows,
    read_file,
    run_benchmark,
    score_results,
    write_result,
)
from pipeline.bench.anomaly.nab_scorer import window_indices
from tests.conftest import NAB_DIR

FILES = [
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realAWSCloudwatch/ec2_network_in_257a54.csv",
]


@pytest.mark.shared
def test_three_files_stream_through_the_detector_into_nab_layout_and_score(tmp_path: Path) -> None:
    results = run_benchmark(NAB_DIR, tmp_path, DetectorConfig(), files=FILES)
    for relpath in FILES:
        category, name = relpath.split("/")
        path = tmp_path / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{name}"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
        assert len(rows) == len(read_file(NAB_DIR, relpath).values)
        assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
        assert {r["label"] for r in rows} == {"0", "1"}
    assert [r.profile for r in results] == ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]
    standard = results[0]
    assert standard.tp + standard.fn == 5  # the windows of the three files
    assert standard.score > 0.0  # better than the null detector on these files


@pytest.mark.shared
def test_scorer_gives_perfect_100_and_null_0_on_real_nab_files(tmp_path: Path) -> None:
    windows = load_windows(NAB_DIR)
    for kind in ("perfect", "null"):
        for relpath in FILES:
            nab = read_file(NAB_DIR, relpath)
            scores = [0.0] * len(nab.values)
            if kind == "perfect":
                for first, _ in window_indices(nab.timestamps, windows[relpath]):
                    scores[first] = 1.0
            write_result(tmp_path / kind, nab, scores, windows[relpath])
        for result in score_results(NAB_DIR, tmp_path / kind, FILES):
            assert result.score == pytest.approx(100.0 if kind == "perfect" else 0.0), result

"""The NAB harness: streams each NAB file through :class:`~pipeline.anomaly.ensemble.SeriesDetector`,
writes NAB's result layout (``results/<detector>/<category>/<detector>_<file>.csv`` with columns
``timestamp,value,anomaly_score,label``) and scores the results with :mod:`pipeline.bench.anomaly.nab_scorer`.

The NAB data is read where it lies (``../shared/nab``); nothing is copied.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector
from pipeline.bench.anomaly.nab_scorer import (
    FileRows,
    ProfileResult,
    parse_time,
    profiles_from_json,
    score_corpus,
    sweep_file,
)

log = logging.getLogger(__name__)

DETECTOR_NAME = "marketprism"


@dataclass(frozen=True)
class NabFile:
    relpath: str  # "<category>/<file>.csv", the key of NAB's label files
    timestamps: list[datetime]
    raw_timestamps: list[str]
    values: list[float]


def list_files(nab_dir: Path, limit: Sequence[str] | None = None) -> list[str]:
    data = nab_dir / "data"
    names = sorted(str(p.relative_to(data)) for p in data.glob("*/*.csv"))
    if limit:
        names = [n for n in names if n in limit]
    return names


def read_file(nab_dir: Path, relpath: str) -> NabFile:
    stamps: list[str] = []
    values: list[float] = []
    with (nab_dir / "data" / relpath).open(newline="") as fh:
        for row in csv.DictReader(fh):
            stamps.append(row["timestamp"])
            values.append(float(row["value"]))
    return NabFile(relpath, [parse_time(s) for s in stamps], stamps, values)


def load_windows(nab_dir: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    doc = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    return {name: [(parse_time(a), parse_time(b)) for a, b in windows] for name, windows in doc.items()}


def run_detector(values: Sequence[float], config: DetectorConfig, times: Sequence[datetime]) -> list[float]:
    detector = SeriesDetector(config)
    return [detector.update(v, t.replace(tzinfo=UTC).timestamp()).score for v, t in zip(values, times, strict=True)]


Windows = list[tuple[datetime, datetime]]


def _run_one(args: tuple[Path, str, DetectorConfig, Path | None, Windows]) -> tuple[str, list[float]]:
    nab_dir, relpath, config, results_dir, windows = args
    nab = read_file(nab_dir, relpath)
    scores = run_detector(nab.values, config, nab.timestamps)
    if results_dir is not None:
        write_result(results_dir, nab, scores, windows)
    return relpath, scores


def write_result(
    results_dir: Path, nab: NabFile, scores: Sequence[float], windows: Sequence[tuple[datetime, datetime]]
) -> Path:
    category, filename = nab.relpath.split("/", 1)
    out = results_dir / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{filename}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for raw_ts, ts, value, score in zip(nab.raw_timestamps, nab.timestamps, nab.values, scores, strict=True):
            label = int(any(a <= ts <= b for a, b in windows))
            writer.writerow([raw_ts, repr(value), f"{score:.6f}", label])
    return out


def read_result(path: Path) -> tuple[list[datetime], list[float]]:
    stamps: list[datetime] = []
    scores: list[float] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stamps.append(parse_time(row["timestamp"]))
            scores.append(float(row["anomaly_score"]))
    return stamps, scores


def score_results(nab_dir: Path, results_dir: Path, relpaths: Sequence[str]) -> list[ProfileResult]:
    """Score the result files written for ``relpaths`` with every profile of NAB's ``profiles.json``."""
    windows = load_windows(nab_dir)
    files: list[FileRows] = []
    next_window = 0
    for relpath in relpaths:
        category, filename = relpath.split("/", 1)
        stamps, scores = read_result(results_dir / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{filename}")
        rows = sweep_file(relpath, stamps, scores, windows.get(relpath, []), next_window)
        next_window += len(windows.get(relpath, []))
        files.append(rows)
    profiles = profiles_from_json(json.loads((nab_dir / "profiles.json").read_text()))
    return [score_corpus(files, profile) for profile in profiles]


def run_benchmark(
    nab_dir: Path, results_dir: Path, config: DetectorConfig, files: Sequence[str] | None = None, jobs: int = 1
) -> list[ProfileResult]:
    """Detect on every (or the given) NAB file, write the results, and score them."""
    relpaths = list_files(nab_dir, files)
    windows = load_windows(nab_dir)
    tasks = [(nab_dir, relpath, config, results_dir, windows.get(relpath, [])) for relpath in relpaths]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(_run_one, tasks))
    else:
        for task in tasks:
            _run_one(task)
    log.info("detected on %d NAB files into %s", len(relpaths), results_dir)
    return score_results(nab_dir, results_dir, relpaths)

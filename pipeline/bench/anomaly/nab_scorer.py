"""Our implementation of the published NAB scoring method (Numenta Anomaly Benchmark v1.1).

Per file: the first 15% of rows (at most 750) are probationary and not scored. A row inside a
labelled window is worth ``tp_weight * scaled_sigmoid(position) / scaled_sigmoid(-1)`` where
``position`` runs from -1 (window start) towards 0 (window end); only the best (first) detection of
a window counts, a window without one costs ``fn_weight``. A detection outside every window costs
``fp_weight * scaled_sigmoid(distance past the preceding window / its width)`` (the full weight
before the first window). One threshold per profile is swept over every distinct score of the whole
corpus to maximise the raw sum; the reported score is ``100 * (raw - null) / (perfect - null)``
with null = never fires and perfect = every window detected at its first row.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

PROBATIONARY_PERCENT = 0.15


@dataclass(frozen=True)
class Profile:
    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


def profiles_from_json(doc: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[Profile]:
    """The profiles of NAB's ``profiles.json``."""
    return [
        Profile(name, costs["CostMatrix"]["tpWeight"], costs["CostMatrix"]["fpWeight"], costs["CostMatrix"]["fnWeight"])
        for name, costs in doc.items()
    ]


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: ~+1 early in a window, 0 at its end, towards -1 well past it."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probationary_length(rows: int) -> int:
    return int(min(math.floor(PROBATIONARY_PERCENT * rows), PROBATIONARY_PERCENT * 5000))


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


@dataclass
class ScoredRow:
    """One row after the sweep: its detector score, its reward if detected, and its window (or None)."""

    score: float
    tp_value: float  # reward if detected inside a window (normalised to tp_weight at the window start)
    fp_value: float  # unweighted FP cost sigmoid if detected outside windows (<= 0)
    window: int | None  # global window id, None outside windows
    probationary: bool


@dataclass
class FileRows:
    name: str
    rows: list[ScoredRow]
    windows: list[int] = field(default_factory=list)


def window_indices(
    timestamps: Sequence[datetime], windows: Iterable[tuple[datetime, datetime]]
) -> list[tuple[int, int]]:
    """Row index ranges ``[first, last]`` of each labelled window (rows within its limits)."""
    out = []
    for start, end in windows:
        first = bisect.bisect_left(timestamps, start)
        last = bisect.bisect_right(timestamps, end) - 1
        if first <= last:
            out.append((first, last))
    return out


def sweep_file(
    name: str,
    timestamps: Sequence[datetime],
    scores: Sequence[float],
    windows: Sequence[tuple[datetime, datetime]],
    first_window_id: int,
) -> FileRows:
    """Assign every row its reward/cost position (NAB's sweeper), before any threshold is chosen."""
    if len(timestamps) != len(scores):
        raise ValueError(f"{name}: {len(timestamps)} timestamps but {len(scores)} scores")
    limits = window_indices(timestamps, windows)
    probation = probationary_length(len(timestamps))
    max_tp = scaled_sigmoid(-1.0)
    rows: list[ScoredRow] = []
    window_of_row: dict[int, int] = {}
    for index, (first, last) in enumerate(limits):
        for i in range(first, last + 1):
            window_of_row[i] = index
    prev_last: int | None = None
    prev_width = 0.0
    used: set[int] = set()
    for i, score in enumerate(scores):
        w = window_of_row.get(i)
        tp_value = 0.0
        fp_value = 0.0
        if w is not None:
            first, last = limits[w]
            width = float(last - first + 1)
            tp_value = scaled_sigmoid(-(last - i + 1) / width) / max_tp
        elif prev_last is None:
            fp_value = -1.0
        else:
            fp_value = scaled_sigmoid(abs(prev_last - i) / max(prev_width - 1.0, 1.0))
        in_probation = i < probation
        window_id = None if w is None or in_probation else first_window_id + w
        if window_id is not None:
            used.add(window_id)
        rows.append(ScoredRow(float(score), tp_value, fp_value, window_id, in_probation))
        if w is not None and i == limits[w][1]:
            prev_last = i
            prev_width = float(limits[w][1] - limits[w][0] + 1)
    return FileRows(name, rows, sorted(used))


@dataclass(frozen=True)
class ThresholdScore:
    threshold: float
    raw: float
    tp: int
    fp: int
    fn: int


def score_at(files: Sequence[FileRows], profile: Profile, threshold: float) -> ThresholdScore:
    """Raw score of the corpus when rows with ``score >= threshold`` are detections."""
    raw = 0.0
    tp = fp = fn = 0
    for f in files:
        best: dict[int, float] = {}
        for row in f.rows:
            if row.probationary or row.score < threshold:
                continue
            if row.window is None:
                raw += profile.fp_weight * row.fp_value
                fp += 1
            else:
                best[row.window] = max(best.get(row.window, -math.inf), profile.tp_weight * row.tp_value)
        for w in f.windows:
            if w in best:
                raw += best[w]
                tp += 1
            else:
                raw -= profile.fn_weight
                fn += 1
    return ThresholdScore(threshold, raw, tp, fp, fn)


def optimise_threshold(files: Sequence[FileRows], profile: Profile) -> ThresholdScore:
    """Sweep every distinct score (descending) and keep the threshold with the highest raw score."""
    points = sorted(((row.score, row) for f in files for row in f.rows if not row.probationary), key=lambda p: -p[0])
    n_windows = sum(len(f.windows) for f in files)
    best_tp: dict[int, float] = {}
    fp_sum = 0.0
    fp = 0
    best = ThresholdScore(math.inf, -profile.fn_weight * n_windows, 0, 0, n_windows)
    i = 0
    while i < len(points):
        threshold = points[i][0]
        while i < len(points) and points[i][0] == threshold:
            row = points[i][1]
            if row.window is None:
                fp_sum += profile.fp_weight * row.fp_value
                fp += 1
            else:
                best_tp[row.window] = max(best_tp.get(row.window, -math.inf), profile.tp_weight * row.tp_value)
            i += 1
        raw = fp_sum + sum(best_tp.values()) - profile.fn_weight * (n_windows - len(best_tp))
        if raw > best.raw:
            best = ThresholdScore(threshold, raw, len(best_tp), fp, n_windows - len(best_tp))
    return best


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    score: float  # normalised: null 0, perfect 100
    threshold: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int


def score_corpus(files: Sequence[FileRows], profile: Profile) -> ProfileResult:
    best = optimise_threshold(files, profile)
    n_windows = sum(len(f.windows) for f in files)
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    normalised = 100.0 * (best.raw - null) / (perfect - null) if perfect != null else 0.0
    return ProfileResult(profile.name, normalised, best.threshold, best.raw, null, perfect, best.tp, best.fp, best.fn)

"""The honest NAB protocol (docs/anomaly.md): parameters chosen by 2-fold cross-validation over the NAB files.

The files are split into two folds by alternating over each category's sorted file names (fold A: 1st, 3rd, ...;
fold B: 2nd, 4th, ...), so both folds hold every category. Every candidate of :data:`GRID` runs once on every file
(one parameter set for all files; the detector never sees labels or file names). Each fold's candidate is the one
with the best standard score on that fold; it is then scored on the other fold, twice: with the threshold NAB's
rules optimise on the scored fold, and with the threshold carried over from the tuning fold (stricter). The final
parameters are the ones the same selection picks on the whole corpus.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.bench.anomaly.nab import list_files, load_windows, read_file, run_detector
from pipeline.bench.anomaly.nab_scorer import FileRows, Profile, profiles_from_json, score_at, score_corpus, sweep_file

# Candidates (overrides of DetectorConfig): the record gate's half-life (0: off) x the spatial range tolerance (0: off).
GRID: list[dict[str, Any]] = [
    {"record_halflife": h, "spatial_tolerance": t} for h in (0, 300, 500, 1000) for t in (0.0, 0.15)
]


def folds(relpaths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Fold A and fold B: alternate files of each category (sorted by name)."""
    by_category: dict[str, list[str]] = {}
    for relpath in sorted(relpaths):
        by_category.setdefault(relpath.split("/", 1)[0], []).append(relpath)
    a = [r for files in by_category.values() for r in files[0::2]]
    b = [r for files in by_category.values() for r in files[1::2]]
    return a, b


def _detect(args: tuple[Path, str, DetectorConfig]) -> tuple[str, list[float]]:
    nab_dir, relpath, config = args
    nab = read_file(nab_dir, relpath)
    return relpath, run_detector(nab.values, config, nab.timestamps)


@dataclass(frozen=True)
class FoldResult:
    tuned_on: str
    scored_on: str
    params: dict[str, Any]
    tuning_score: float  # standard, on the tuning fold
    scores: dict[str, float]  # profile -> score on the other fold, threshold optimised there (NAB's rule)
    carried: dict[str, float]  # profile -> score on the other fold, threshold from the tuning fold


@dataclass(frozen=True)
class CvResult:
    folds: list[FoldResult]
    final_params: dict[str, Any]
    full: dict[str, float]  # profile -> full-corpus score of the final parameters
    grid: list[dict[str, Any]]
    grid_scores: list[dict[str, float]]  # per candidate: standard on A, B and all


def _rows(nab_dir: Path, scores: dict[str, list[float]], relpaths: Sequence[str]) -> list[FileRows]:
    windows = load_windows(nab_dir)
    out = []
    next_window = 0
    for relpath in relpaths:
        nab = read_file(nab_dir, relpath)
        out.append(sweep_file(relpath, nab.timestamps, scores[relpath], windows.get(relpath, []), next_window))
        next_window += len(windows.get(relpath, []))
    return out


def run_cv(
    nab_dir: Path,
    grid: Sequence[dict[str, Any]] = tuple(GRID),
    base: DetectorConfig | None = None,
    jobs: int = 2,
    files: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CvResult:
    base = base or DetectorConfig()
    relpaths = list_files(nab_dir, files)
    fold_a, fold_b = folds(relpaths)
    profiles = profiles_from_json(json.loads((nab_dir / "profiles.json").read_text()))
    standard = next(p for p in profiles if p.name == "standard")
    per_candidate: list[dict[str, list[FileRows]]] = []
    for params in grid:
        config = replace(base, **params)
        tasks = [(nab_dir, r, config) for r in relpaths]
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                scores = dict(pool.map(_detect, tasks))
        else:
            scores = dict(map(_detect, tasks))
        per_candidate.append({"A": _rows(nab_dir, scores, fold_a), "B": _rows(nab_dir, scores, fold_b)})
        per_candidate[-1]["all"] = _rows(nab_dir, scores, relpaths)
        progress(
            f"{params}: "
            + ", ".join(f"{k} {score_corpus(v, standard).score:.2f}" for k, v in per_candidate[-1].items())
        )
    grid_scores = [{k: score_corpus(v, standard).score for k, v in c.items()} for c in per_candidate]

    def pick(fold: str) -> int:
        return max(range(len(grid)), key=lambda i: grid_scores[i][fold])

    results = []
    for tune, other in (("A", "B"), ("B", "A")):
        i = pick(tune)
        carried = {}
        for profile in profiles:
            threshold = score_corpus(per_candidate[i][tune], profile).threshold
            carried[profile.name] = _normalised(per_candidate[i][other], profile, threshold)
        scored = {p.name: score_corpus(per_candidate[i][other], p).score for p in profiles}
        results.append(FoldResult(tune, other, dict(grid[i]), grid_scores[i][tune], scored, carried))
    final = pick("all")
    full = {p.name: score_corpus(per_candidate[final]["all"], p).score for p in profiles}
    return CvResult(results, dict(grid[final]), full, list(grid), grid_scores)


def _normalised(files: Sequence[FileRows], profile: Profile, threshold: float) -> float:
    n_windows = sum(len(f.windows) for f in files)
    null = -profile.fn_weight * n_windows
    perfect = profile.tp_weight * n_windows
    return 100.0 * (score_at(files, profile, threshold).raw - null) / (perfect - null)

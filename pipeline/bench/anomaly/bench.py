"""``marketprism bench anomaly``: mean update cost and memory per series of the series detector.

Cost: ``series`` detectors each fed ``points`` values of a noisy random walk with spikes, timed
after warm-up; memory: bytes allocated per warmed-up detector (tracemalloc) and its checkpoint
size. Baselines in the same run: River's HalfSpaceTrees (10 trees, height 8) and GaussianScorer
learn+score, the figures DESIGN.md quotes; and the same detector with the range check and the record gate on
(docs/anomaly.md), so the cost of those options stands beside today's default in one run.
"""

from __future__ import annotations

import gc
import pickle
import random
import statistics
import time
import tracemalloc
import zlib
from dataclasses import dataclass, replace

from river import anomaly, preprocessing

from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector


def synthetic(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)  # noqa: S311 - simulation/jitter randomness, not security
    level = 100.0
    out = []
    for i in range(n):
        level += rng.gauss(0, 0.1)
        out.append(level + rng.gauss(0, 0.5) + (8.0 if i % 500 == 499 else 0.0))
    return out


@dataclass
class BenchResult:
    update_us: float
    options_us: float
    hst_baseline_us: float
    gaussian_baseline_us: float
    memory_bytes: float
    checkpoint_bytes: float
    series: int
    points: int

    def rows(self) -> list[tuple[str, str, str]]:
        return [
            ("series detector update", f"{self.update_us:.1f} µs", "mean score+learn per series update; target <= 50"),
            (
                "with range + record gate",
                f"{self.options_us:.1f} µs",
                f"ratio {self.options_us / self.update_us:.2f}x the default (limit 2x)",
            ),
            (
                "baseline HST(10 trees, h 8)",
                f"{self.hst_baseline_us:.1f} µs",
                f"ratio {self.update_us / self.hst_baseline_us:.2f}x",
            ),
            (
                "baseline GaussianScorer",
                f"{self.gaussian_baseline_us:.1f} µs",
                f"ratio {self.update_us / self.gaussian_baseline_us:.1f}x",
            ),
            ("memory per series", f"{self.memory_bytes / 1024:.0f} KiB", "tracemalloc, warmed up; target <= 2 MB"),
            ("checkpoint per series", f"{self.checkpoint_bytes / 1024:.1f} KiB", "pickle + zlib"),
            ("workload", f"{self.series} series x {self.points} points", "noisy random walk with spikes"),
        ]


def _time_detectors(series: int, points: int, config: DetectorConfig) -> float:
    data = [synthetic(points, seed) for seed in range(series)]
    detectors = [SeriesDetector(config) for _ in range(series)]
    warm = min(points // 2, config.warmup * 2)
    for det, values in zip(detectors, data, strict=True):
        for v in values[:warm]:
            det.update(v)
    gc.collect()
    started = time.perf_counter()
    for det, values in zip(detectors, data, strict=True):
        for v in values[warm:]:
            det.update(v)
    return (time.perf_counter() - started) / (series * (points - warm)) * 1e6


def _time_hst(points: int) -> float:
    values = synthetic(points, 99)
    model = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=1)
    scaler = preprocessing.MinMaxScaler()
    started = time.perf_counter()
    for v in values:
        x = {"y": v}
        scaler.learn_one(x)
        x = scaler.transform_one(x)
        model.score_one(x)
        model.learn_one(x)
    return (time.perf_counter() - started) / points * 1e6


def _time_gaussian(points: int) -> float:
    values = synthetic(points, 99)
    model = anomaly.GaussianScorer()
    started = time.perf_counter()
    for v in values:
        model.score_one(None, v)
        model.learn_one(None, v)
    return (time.perf_counter() - started) / points * 1e6


def _memory(config: DetectorConfig, points: int) -> tuple[float, float]:
    values = synthetic(points, 7)
    gc.collect()
    tracemalloc.start()
    detector = SeriesDetector(config)
    for v in values:
        detector.update(v)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return float(current), float(len(zlib.compress(pickle.dumps(detector), 3)))


def run_bench(series: int, points: int, repeats: int, config: DetectorConfig | None = None) -> BenchResult:
    config = config or DetectorConfig()
    with_options = replace(config, spatial_tolerance=0.15, record_halflife=500)
    update, options, hst, gauss = [], [], [], []
    for _ in range(repeats):
        update.append(_time_detectors(series, points, config))
        options.append(_time_detectors(series, points, with_options))
        hst.append(_time_hst(points))
        gauss.append(_time_gaussian(points))
    memory, checkpoint = _memory(config, points)
    return BenchResult(
        statistics.median(update),
        statistics.median(options),
        statistics.median(hst),
        statistics.median(gauss),
        memory,
        checkpoint,
        series,
        points,
    )

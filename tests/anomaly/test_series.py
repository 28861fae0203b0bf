"""The market series added for the simulator's incidents: frozen price (run-length surprise), venue divergence
(from reference prices), and the per-metric minimum effect sizes."""

from __future__ import annotations

import random

import msgspec

from pipeline.anomaly.checkpoint import dumps, loads
from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector
from pipeline.anomaly.registry import SeriesRegistry
from pipeline.anomaly.runs import RunConfig, RunLengthDetector
from pipeline.contracts.records import ReferencePrice
from pipeline.kafka.sealed import Sealer
from tests.anomaly.helpers import T0, bars

SEALER = Sealer("anomaly-series-state", b"test-key-0123456789abcdef")


def test_a_run_of_flat_bars_is_reported_once_when_it_becomes_improbable() -> None:
    det = RunLengthDetector(RunConfig(warmup=50))
    rng = random.Random(1)
    for _ in range(600):  # about one flat bar in 200
        assert det.update(1.0 if rng.random() < 0.005 else 0.0).score < 0.475
    scores = [det.update(float(k)).score for k in range(1, 8)]
    first = next(i for i, s in enumerate(scores) if s >= 0.475)
    assert first in (1, 2)  # the 2nd or 3rd flat bar in a row: p^k below one in a million
    assert sum(s >= 0.475 for s in scores) == 1  # one report per run
    assert det.update(0.0).score == 0.0 and not det.reported  # the run ended: armed again


def test_frozen_bars_series_counts_flat_unchanged_bars_and_reports_the_freeze() -> None:
    registry = SeriesRegistry(DetectorConfig(warmup=50), report_floor=0.475)
    history = bars("binance", "BTC-USDT", 160, seed=7)
    still = history[119].close
    for i in range(120, 140):
        history[i] = msgspec.structs.replace(history[i], open=still, high=still, low=still, close=still)
    reported = []
    for bar in history:
        anomalies, _ = registry.on_bar(bar)
        reported += [(a.metric, a.ts_event, a.value) for a in anomalies if a.metric == "frozen_bars"]
    assert len(reported) == 1, reported
    _, ts, run = reported[0]
    # one flat unchanged bar happened before by chance (p ~ 1.2%): the 4th frozen second is one in ~5e7
    assert ts == history[120 + int(run) - 1].window_end and 2 <= run <= 4  # within 4 s of the freeze
    state = registry.series["binance:BTC-USDT:1s:frozen_bars"]
    assert isinstance(state.detector, RunLengthDetector)
    restored = loads(dumps(state, SEALER), SEALER)  # checkpoints carry the run detector like any other
    assert restored.detector.seen == state.detector.seen and restored.detector.p == state.detector.p


def reference(i: int, coinbase_bps: float) -> ReferencePrice:
    return ReferencePrice(
        asset="BTC-USD", ts_event=T0 + i * 1_000_000, price="30000.00", venues=2,  # type: ignore[arg-type]
        mids={"binance:BTC-USDT": "30000.00", "coinbase:BTC-USD": "30000.00"},  # type: ignore[dict-item]
        divergence_bps={"binance:BTC-USDT": -coinbase_bps / 2, "coinbase:BTC-USD": coinbase_bps},
    )  # fmt: skip


def test_divergence_series_per_venue_from_reference_prices() -> None:
    registry = SeriesRegistry(DetectorConfig(warmup=50), report_floor=0.475)
    rng = random.Random(3)
    found = []
    for i in range(300):
        bps = rng.gauss(2.0, 1.0) + (10.0 * (i - 249) if i >= 250 else 0.0)
        anomalies, _ = registry.on_reference(reference(i, bps))
        found += anomalies
    assert set(registry.series) == {"binance:BTC-USDT:divergence_bps", "coinbase:BTC-USD:divergence_bps"}
    coinbase = [a for a in found if a.series_id == "coinbase:BTC-USD:divergence_bps"]
    assert coinbase and coinbase[0].ts_event in {T0 + 250 * 1_000_000, T0 + 251 * 1_000_000}, coinbase[:3]
    assert coinbase[0].exchange == "coinbase" and coinbase[0].symbol == "BTC-USD"
    assert all(a.ts_event >= T0 + 250 * 1_000_000 for a in found)  # nothing before the divergence


def test_a_stale_venue_is_not_scored_but_a_diverging_one_is() -> None:
    registry = SeriesRegistry(DetectorConfig(warmup=50), report_floor=0.475)
    stale = msgspec.structs.replace(reference(0, 300.0), excluded={"coinbase:BTC-USD": "stale"})
    diverging = msgspec.structs.replace(reference(1, 300.0), excluded={"coinbase:BTC-USD": "diverging"})
    registry.on_reference(stale)
    assert set(registry.series) == {"binance:BTC-USDT:divergence_bps"}  # the stopped venue's old mid is no series
    registry.on_reference(diverging)
    assert "coinbase:BTC-USD:divergence_bps" in registry.series


def test_minimum_effect_keeps_small_but_unusual_moves_unreported() -> None:
    rng = random.Random(5)
    values = [rng.gauss(0.01, 0.001) for _ in range(300)] + [0.05]  # 40 sigma, but only 40 ms of extra lag
    plain = SeriesDetector(DetectorConfig(warmup=50))
    floor = SeriesDetector(DetectorConfig(warmup=50, min_effect=1.0))
    last_plain = [plain.update(v).score for v in values][-1]
    last_floor = [floor.update(v).score for v in values][-1]
    assert last_plain >= 0.475 > last_floor
    assert floor.update(3.0).score >= 0.475  # a 3 s lag passes the 1 s floor


def test_restored_series_take_todays_policy() -> None:
    old = SeriesRegistry(DetectorConfig(warmup=10), report_floor=0.475, policy={})
    state = old.state("okx:trades:collector:lag_p99_s", "feed_lag_p99_s")
    blob = dumps(state, SEALER)
    new = SeriesRegistry(DetectorConfig(warmup=10), report_floor=0.475, loader=lambda _: loads(blob, SEALER))
    restored = new.state("okx:trades:collector:lag_p99_s", "feed_lag_p99_s")
    assert restored.detector.config.min_effect == new.config_for("feed_lag_p99_s").min_effect > 0

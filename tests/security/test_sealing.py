"""Sealed checkpoints without a broker: key rotation, purpose separation, size bounds before and after
decompression, the allow-list unpickler under a leaked key, and the per-host generated key."""

from __future__ import annotations

import os
import pickle
import stat
import zlib
from pathlib import Path

import msgspec
import pytest
from pydantic import SecretStr

from pipeline.anomaly.checkpoint import CheckpointRefused, dumps, loads
from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.anomaly.registry import SeriesRegistry
from pipeline.contracts import FeedMetrics
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import ReferencePrice
from pipeline.kafka.sealed import Sealer, SealError, sealer_for
from pipeline.settings import Settings
from tests.anomaly.helpers import bars

OLD, NEW = b"old-key-0123456789abcdef", b"new-key-0123456789abcdef"


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_rotation_accepts_the_previous_key_until_it_is_dropped() -> None:
    sealed_before = Sealer("p", OLD).seal(b"state")
    rotating = Sealer("p", NEW, previous=[OLD])
    assert rotating.open(sealed_before) == b"state"  # written before the rotation, still readable
    with pytest.raises(SealError) as refused:
        Sealer("p", NEW).open(sealed_before)  # the old key dropped: refused
    assert refused.value.reason == "bad_tag"
    assert Sealer("p", NEW).open(rotating.seal(b"new")) == b"new"  # new records are sealed under the new key


def test_a_record_sealed_for_one_purpose_is_refused_for_another() -> None:
    record = Sealer("alerting-checkpoint", NEW).seal(b"{}")
    with pytest.raises(SealError, match="does not verify"):
        Sealer("anomaly-series-state", NEW).open(record)


def test_size_is_bounded_before_the_tag_and_after_decompression() -> None:
    sealer = Sealer("anomaly-series-state", NEW, max_bytes=1024)
    with pytest.raises(SealError) as big:
        sealer.open(b"MPS1" + b"\0" * 32 + b"x" * 2048)
    assert big.value.reason == "too_large"
    bomb = sealer.seal(zlib.compress(b"\0" * (1 << 24)))  # 16 MiB of zeros compress to ~16 KiB: above 1 KiB
    with pytest.raises(CheckpointRefused) as refused:
        loads(bomb, sealer)
    assert refused.value.reason == "checkpoint_too_large"  # refused before the tag is even computed
    small_bomb = Sealer("anomaly-series-state", NEW, max_bytes=64 * 1024)
    with pytest.raises(CheckpointRefused) as inflated:  # fits on the wire, not once inflated
        loads(small_bomb.seal(zlib.compress(b"\0" * (1 << 24))), small_bomb)
    assert inflated.value.reason == "checkpoint_too_large"


def test_a_leaked_key_still_runs_no_code(tmp_path: Path) -> None:
    sealer = Sealer("anomaly-series-state", NEW)
    marker = tmp_path / "code-ran"
    evil = sealer.seal(zlib.compress(pickle.dumps(RunsCode(marker))))
    with pytest.raises(CheckpointRefused, match=r"posix\.system|os\.system") as refused:
        loads(evil, sealer)
    assert refused.value.reason == "checkpoint_corrupt" and not marker.exists()


def test_every_series_state_round_trips_through_the_allow_list() -> None:
    sealer = Sealer("anomaly-series-state", NEW)
    registry = SeriesRegistry(DetectorConfig(warmup=20), report_floor=0.475)
    history = bars("okx", "ETH-USDT", 80, seed=2, spikes=frozenset({60}))
    feed = EXAMPLES[FeedMetrics]
    for i, bar in enumerate(history):  # bar, feed and reference series: the three tables of the worker
        registry.on_bar(bar)
        registry.on_feed_metrics(
            msgspec.structs.replace(feed, ts_event=bar.window_end, lag_p99_us=1000 + 37 * (i % 7), rate=10.0 + i % 3)
        )
        registry.on_reference(
            ReferencePrice(
                asset="BTC-USD",
                ts_event=bar.window_end,
                price="30000.00",
                venues=2,  # type: ignore[arg-type]
                mids={"binance:BTC-USDT": "30000.00", "okx:BTC-USDT": "30001.00"},  # type: ignore[dict-item]
                divergence_bps={"binance:BTC-USDT": -0.1 * (i % 5), "okx:BTC-USDT": 0.2 * (i % 3)},
            )
        )
    metrics = {state.metric for state in registry.series.values()}
    assert {"volume", "log_return", "divergence_bps", "feed_lag_p99_s", "feed_rate"} <= metrics, metrics
    for state in registry.series.values():
        restored = loads(dumps(state, sealer), sealer)
        assert restored.series_id == state.series_id and restored.detector.seen == state.detector.seen


def test_without_a_configured_key_each_host_generates_a_private_one(tmp_path: Path) -> None:
    settings = Settings(metrics_port=0, state_dir=tmp_path / "state")
    first = sealer_for(settings, "p")
    key_file = tmp_path / "state/secrets/checkpoint.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = sealer_for(settings, "p")  # the next process of the host reads the same key
    assert again.open(first.seal(b"x")) == b"x"
    security = settings.security.model_copy(update={"checkpoint_key": SecretStr("configured-key-0123456789")})
    configured = sealer_for(settings.model_copy(update={"security": security}), "p")
    with pytest.raises(SealError):
        configured.open(first.seal(b"x"))

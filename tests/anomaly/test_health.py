"""Health series against the real broker: consumer-group lag, process memory and disk samples."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.anomaly.health import HealthMonitor, HealthThresholds, process_memory
from pipeline.contracts import FeedMetrics, encode
from pipeline.contracts.examples import EXAMPLES
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings


async def test_consumer_lag_memory_and_disk_are_sampled(topics: Settings) -> None:
    topic = topics.topic("ops.feed_metrics.v1")
    producer = make_producer(topics.kafka)
    await producer.start()
    try:
        for _ in range(10):
            await producer.send_and_wait(topic, encode(EXAMPLES[FeedMetrics]), key=b"binance:trades", partition=0)
    finally:
        await producer.stop()
    group = f"{topics.topic_prefix}lagging"
    consumer = make_consumer(topics.kafka, group_id=group)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: 4})  # 6 of 10 records not yet consumed
    finally:
        await consumer.stop()
    monitor = HealthMonitor(topics, HealthThresholds(memory_warmup_s=0, warmup_s=0), groups={group: [topic]})
    try:
        lags = await monitor.consumer_lags()
        assert lags.get(group) == 6, lags
        await monitor.sample()
        await monitor.sample()
    finally:
        await monitor.stop()
    host = monitor.host
    assert {
        f"health:{host}:memory_bytes",
        f"health:{host}:disk_percent",
        "health:dlq_per_s",
        f"health:consumer_lag:{group}",
    } <= set(monitor.forecasters)
    assert monitor.forecasters[f"health:{host}:memory_bytes"].last_value > 0


async def test_each_health_series_is_sampled_by_one_worker_only(topics: Settings) -> None:
    """Two workers of one deployment on one host: the host series come from the lock holder only, the
    cluster-wide series from the worker told it owns them (the owner of ops.dlq.v1 partition 0)."""
    first = HealthMonitor(topics, HealthThresholds(memory_warmup_s=0, warmup_s=0))
    second = HealthMonitor(topics, HealthThresholds(memory_warmup_s=0, warmup_s=0))
    try:
        for _ in range(2):
            await first.sample(cluster=True)
            await second.sample(cluster=False)
        assert first.host_lock.held() and not second.host_lock.held()
        assert second.forecasters == {}
        assert {f"health:{first.host}:memory_bytes", "health:dlq_per_s"} <= set(first.forecasters)
        first.host_lock.release()  # the holder goes away: the other worker on the host takes over
        await second.sample(cluster=False)
        assert set(second.forecasters) == {f"health:{second.host}:memory_bytes", f"health:{second.host}:disk_percent"}
    finally:
        await first.stop()
        await second.stop()


def test_feed_lag_growth_publishes_a_forecast_before_the_breach(settings: Settings) -> None:
    monitor = HealthMonitor(settings, HealthThresholds(feed_lag_s=5.0))
    base = EXAMPLES[FeedMetrics]
    forecasts = []
    for k in range(60):  # lag grows 50 ms per 10 s interval: 5 s is reached at k = 100
        m = FeedMetrics(
            exchange=base.exchange,
            stream="trades",
            source="aggregator",
            ts_event=(10_000 + k * 10) * 10**6,
            interval_us=10_000_000,
            lag_p99_us=int(k * 50_000),
        )
        forecasts = [a for a in monitor.on_feed_metrics(m) if a.metric == "feed_lag_s"]
    assert forecasts and forecasts[0].kind == "forecast"
    assert abs(forecasts[0].time_to_threshold_s - 410.0) <= 0.2 * 410.0


def _idle_process(tmp_path: Path, name: str, **env: str) -> subprocess.Popen[bytes]:
    """A sleeping Python process with ``marketprism`` in its command line, holding ~40 MB, with ``env``."""
    script = tmp_path / f"marketprism-{name}.py"
    script.write_text("import sys\nblob = bytearray(40 * 1024 * 1024)\nsys.stdin.read()\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPRISM_")} | env
    return subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, env=environ)


def test_process_memory_counts_only_this_deployment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Another run on the same machine (a second demo, a test suite) is not this deployment's memory: it used to
    be summed in, and its start-up looked like this deployment heading for its memory limit."""
    monkeypatch.setenv("MARKETPRISM_STATE_DIR", str(tmp_path / "ours"))
    for name in ("MARKETPRISM_CONFIG", "MARKETPRISM_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    before = process_memory()
    other = _idle_process(tmp_path, "other", MARKETPRISM_STATE_DIR=str(tmp_path / "theirs"))
    ours = _idle_process(tmp_path, "ours", MARKETPRISM_STATE_DIR=str(tmp_path / "ours"))
    try:
        deadline = time.monotonic() + 60
        while (sample := process_memory()).rss_bytes - before.rss_bytes < 30 * 1024 * 1024:
            assert time.monotonic() < deadline, "our idle process never counted"
            time.sleep(0.1)
        # the other deployment's 40 MB are not in it (ours are, about once)
        assert sample.rss_bytes - before.rss_bytes < 70 * 1024 * 1024
        assert sample.youngest_age_s < before.youngest_age_s
    finally:
        for proc in (other, ours):
            proc.kill()
            proc.wait()


async def test_no_memory_trend_is_learnt_while_a_process_is_starting(topics: Settings) -> None:
    monitor = HealthMonitor(topics, HealthThresholds(memory_warmup_s=10 * 365 * 86400.0, warmup_s=0))
    try:
        await monitor.sample(cluster=False)
        await monitor.sample(cluster=False)
    finally:
        await monitor.stop()
    assert f"health:{monitor.host}:memory_bytes" not in monitor.forecasters
    assert f"health:{monitor.host}:disk_percent" in monitor.forecasters


def _lag_metrics(t_s: int, lag_s: float) -> FeedMetrics:
    base = EXAMPLES[FeedMetrics]
    return FeedMetrics(
        exchange=base.exchange, stream="trades", source="collector", ts_event=t_s * 10**6, interval_us=1_000_000,
        lag_p99_us=int(lag_s * 1e6),
    )  # fmt: skip


def test_a_start_up_ramp_forecasts_nothing(settings: Settings) -> None:
    """A collector connecting works off a backlog: its feed lag climbs steeply for its first seconds, then settles.
    The ramp is the series' warm-up, learnt from nothing; the settled series after it has no trend."""
    monitor = HealthMonitor(settings, HealthThresholds(feed_lag_s=5.0))
    forecasts = []
    for t in range(300):
        lag = 0.15 * t if t < 25 else 0.2 + 0.01 * (t % 3)  # 3.6 s by 24 s, heading for 5 s in 10 s
        forecasts += [a for a in monitor.on_feed_metrics(_lag_metrics(1_000 + t, lag)) if a.metric == "feed_lag_s"]
    assert forecasts == []


def test_a_series_with_too_little_history_forecasts_nothing_then_a_sustained_climb_does(settings: Settings) -> None:
    monitor = HealthMonitor(settings, HealthThresholds(feed_lag_s=5.0, warmup_s=10, min_history_s=60))
    first: float | None = None  # seconds of learnt history when the first forecast came
    for t in range(400):
        out = [a for a in monitor.on_feed_metrics(_lag_metrics(1_000 + t, 0.01 * t)) if a.metric == "feed_lag_s"]
        if out and first is None:
            first = monitor.forecasters[out[0].series_id].history_s
            # never further ahead than the history it comes from
            assert out[0].time_to_threshold_s is not None and out[0].time_to_threshold_s <= first
    assert first is not None and first >= 60

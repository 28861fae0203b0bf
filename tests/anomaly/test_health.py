"""Health series against the real broker: consumer-group lag, process memory and disk samples."""

from __future__ import annotations

from aiokafka import TopicPartition

from pipeline.anomaly.health import HealthMonitor, HealthThresholds
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
    monitor = HealthMonitor(topics, HealthThresholds(), groups={group: [topic]})
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
    first = HealthMonitor(topics, HealthThresholds())
    second = HealthMonitor(topics, HealthThresholds())
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

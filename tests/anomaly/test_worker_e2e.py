"""End to end through the real broker: the ``marketprism anomaly`` worker process scores bars produced to
``md.bars.1s.v1`` and publishes ``ops.anomalies.v1``; its models survive a restart via the checkpoint table."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from pipeline.anomaly.checkpoint import loads
from pipeline.contracts import Anomaly, Bar, DeadLetter, decoder_for, encode, market_key
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.sealed import sealer_for
from pipeline.settings import Settings
from tests.anomaly.helpers import bars, collect, worker_process
from tests.conftest import read_records

# Checkpoints by count only (every 10 points), so the checkpointed counts the tests wait for (120, 130, 400) are
# reached exactly: a time-based save in a pause of a loaded machine would shift the count off those marks.
WORKER_ARGS = ("--warmup", "50", "--checkpoint-every", "10", "--checkpoint-interval", "3600", "--health-interval", "60")


async def produce(settings: Settings, records: list[Bar]) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for bar in records:
            await producer.send(settings.topic("md.bars.1s.v1"), encode(bar), key=market_key(bar.exchange, bar.symbol))
        await producer.flush()
    finally:
        await producer.stop()


async def produce_raw(settings: Settings, key: bytes, value: bytes) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("md.bars.1s.v1"), value, key=key)
    finally:
        await producer.stop()


async def read_dead_letters(consumer: AIOKafkaConsumer, timeout_s: float) -> list[DeadLetter]:
    decode = decoder_for(DeadLetter).decode
    dead: list[DeadLetter] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not dead:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    dead += [decode(m.value) for m in messages]
    except TimeoutError:
        pass
    return dead


async def checkpoint_seen(settings: Settings, series_id: str, at_least: int, timeout_s: float) -> int:
    """Points seen by the latest checkpoint of ``series_id`` in the changelog, once >= ``at_least``."""
    topic = settings.topic("anomaly-bar-models-changelog")
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    seen = 0
    sealer = sealer_for(settings, "anomaly-series-state")  # the key the worker generated in the shared state dir
    try:
        async with asyncio.timeout(timeout_s):
            # Subscribe only once the worker created the changelog (subscribing first would auto-create it
            # with the broker's default partition count, which the worker then rejects).
            while topic not in await consumer.topics():  # noqa: ASYNC110 (polling the broker, not local state)
                await asyncio.sleep(0.5)
            consumer.subscribe([topic])
            while seen < at_least:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for m in messages:
                        if m.key == series_id.encode() and m.value:
                            seen = max(seen, loads(m.value, sealer).detector.seen)
    finally:
        await consumer.stop()
    return seen


async def anomaly_consumer(settings: Settings) -> AIOKafkaConsumer:
    consumer = make_consumer(settings.kafka, settings.topic("ops.anomalies.v1"), group_id=None)
    await consumer.start()
    return consumer


async def test_spikes_produce_anomalies_on_the_right_series_and_quiet_data_none(
    topics: Settings, tmp_path: Path
) -> None:
    quiet = bars("binance", "BTC-USDT", 400, seed=3)
    spiky = bars("okx", "ETH-USDT", 400, seed=4, spikes=frozenset({250, 370}))
    consumer = await anomaly_consumer(topics)
    dlq = make_consumer(topics.kafka, topics.topic("ops.dlq.v1"), group_id=None)
    await dlq.start()
    try:
        with worker_process(topics, tmp_path / "worker.log", *WORKER_ARGS):
            await produce_raw(topics, b"okx:ETH-USDT", b'{"not": "a bar"}')  # bad input: DLQ, processing goes on
            await produce(topics, [b for pair in zip(quiet, spiky, strict=True) for b in pair])
            found = await collect(
                consumer,
                lambda seen: {a.ts_event for a in seen} >= {spiky[250].window_end, spiky[370].window_end},
                timeout_s=150,
            )
            # Let the worker finish the rest of both series before judging the quiet one, then judge everything it
            # published (to the log end, not whatever arrives within a few seconds)
            await checkpoint_seen(topics, "binance:BTC-USDT:1s:volume", 400, timeout_s=120)
            found = await read_records(topics, "ops.anomalies.v1", Anomaly)
            dead = await read_dead_letters(dlq, timeout_s=60)
    finally:
        await consumer.stop()
        await dlq.stop()
    assert [(d.source, d.reason, d.payload) for d in dead] == [("anomaly", "undecodable", '{"not": "a bar"}')]
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert found, log[-3000:]
    assert all(a.exchange == "okx" and a.symbol == "ETH-USDT" for a in found), found  # quiet series: none
    spike_times = {spiky[250].window_end, spiky[370].window_end}
    # The price jumps on the spike bar and comes back on the next: both returns may be reported.
    incident_times = spike_times | {spiky[251].window_end, spiky[371].window_end}
    assert spike_times <= {a.ts_event for a in found} <= incident_times, found
    metrics = {a.metric for a in found}
    assert {"volume", "log_return"} <= metrics, metrics
    for a in found:
        assert a.series_id.startswith("okx:ETH-USDT:1s:") and a.kind == "anomaly"
        assert 0.475 <= a.score <= 1.0 and a.detector in {"robust", "predictive", "hst", "seasonal"}
        assert a.lower is not None and a.upper is not None and not a.lower <= a.value <= a.upper


async def test_restart_continues_from_the_checkpoint(topics: Settings, tmp_path: Path) -> None:
    series = "kraken:BTC-USD:1s:volume"
    history = bars("kraken", "BTC-USD", 130, seed=5, spikes=frozenset({125}))
    consumer = await anomaly_consumer(topics)
    try:
        with worker_process(topics, tmp_path / "worker.log", *WORKER_ARGS):
            await produce(topics, history[:120])
            before = await checkpoint_seen(topics, series, 120, timeout_s=150)
        assert before == 120
        # A cold model would still be warming up after restart: it needs 50 points before reporting.
        with worker_process(topics, tmp_path / "worker.log", *WORKER_ARGS):
            await produce(topics, history[120:])
            found = await collect(consumer, lambda seen: any(a.series_id == series for a in seen), timeout_s=150)
            after = await checkpoint_seen(topics, series, 130, timeout_s=120)
    finally:
        await consumer.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    spike = [a for a in found if a.series_id == series]
    assert spike and spike[0].ts_event == history[125].window_end, log[-3000:]
    assert after == 130  # continued counting from the checkpoint, each bar learned once
    assert "restored kraken:BTC-USD:1s:volume" in log

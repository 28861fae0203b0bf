"""SinkFailing end to end: the real ClickHouse sink (embedded chdb) meets a trade whose price Decimal(38, 18) cannot
hold, dead-letters it on ops.dlq.v1 (source ``sink.clickhouse``) and writes the rest; the real rule engine (core
rules) fires SinkFailing from that dead letter and resolves it once its 5-minute window has passed in event time.

A ClickHouse outage is SinkStalled's case, not this one: the sink then pauses and retries without dead-lettering
(tests/sinks/test_server_outage.py); the demo's sink-down fault raises SinkStalled (pipeline/demo/faults.yaml).
Event time moves on reference prices (an input no absence rule watches), as a virtual clock would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pipeline.alerting.rules import load_rules
from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
from pipeline.contracts import load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import Alert, ReferencePrice, Trade
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import ChdbSink
from pipeline.sinks.runner import RunnerOptions as SinkOptions
from pipeline.sinks.runner import SinkRunner

TOO_BIG = "123456789012345678901234.5"  # 24 integer digits: Decimal(38, 18) holds 20


def _reference(ts: int) -> ReferencePrice:
    return ReferencePrice(
        asset="BTC-USD",
        ts_event=ts,
        price="36500.00",
        venues=2,
        mids={"binance:BTC-USDT": "36500.10", "kraken:BTC-USD": "36499.90"},
        divergence_bps={"binance:BTC-USDT": 0.03, "kraken:BTC-USD": -0.03},
    )  # type: ignore[arg-type]


async def test_a_row_the_sink_cannot_store_fires_sink_failing_which_resolves_after_its_window(  # type: ignore[no-untyped-def]
    topics: Settings, tmp_path: Path, kafka_io
) -> None:
    example: Trade = EXAMPLES[Trade]  # type: ignore[assignment]
    now = time.time_ns() // 1000
    trades = [
        Trade(**{f: getattr(example, f) for f in Trade.__struct_fields__} | {"trade_id": str(i), "ts_event": now,
              "ts_recv": now, "price": TOO_BIG if i == 3 else example.price})
        for i in range(6)
    ]  # fmt: skip
    producer = make_record_producer(topics.kafka, topics.topic_prefix)
    await producer.start()
    stop = asyncio.Event()
    sink = ChdbSink(str(tmp_path / "chdb"), load_registry(), topics.topic_prefix)
    sink_task = asyncio.create_task(
        SinkRunner(topics, sink, [topics.topic("md.trades.v1")],
                   SinkOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=100, batch_interval_s=0.2)).run(stop)
    )  # fmt: skip
    engine_task = asyncio.create_task(
        RuleEngineRunner(  # the probe watches the sink this test runs (the default groups run nowhere here)
            topics,
            load_rules(),
            RunnerOptions(start_from="earliest", idle_advance_us=0, lag_groups=(f"{topics.topic_prefix}sink",)),
        ).run(stop)
    )
    try:
        await producer.send("md.reference.v1", b"BTC-USD", _reference(now - 1_000_000))  # event time starts
        for trade in trades:
            await producer.send("md.trades.v1", f"{trade.exchange}:{trade.symbol}".encode(), trade)
        await producer.flush()
        fired = await kafka_io.wait_for(topics, lambda got: any(a.rule == "SinkFailing" for a in got), wait_s=120)
        assert [a.state for a in fired if a.rule == "SinkFailing"] == ["firing"], fired
        assert sink.rows_written == 5, "the other rows are stored"

        # five minutes later in event time the window holds no dead letter: resolved
        await producer.send("md.reference.v1", b"BTC-USD", _reference(now + 6 * 60_000_000))
        await producer.flush()
        alerts = await kafka_io.wait_for(
            topics, lambda got: [a.state for a in got if a.rule == "SinkFailing"][-1:] == ["resolved"], wait_s=60
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(sink_task, engine_task), 60)
        await producer.stop()

    failing: list[Alert] = [a for a in alerts if a.rule == "SinkFailing"]
    assert [a.state for a in failing] == ["firing", "resolved"]
    assert failing[0].labels["source"] == "sink.clickhouse"
    assert failing[0].annotations["summary"] == "sink.clickhouse: 1 rows dead-lettered in 5m"
    # resolved when the window passed the dead letter: its time + 5 minutes, in event time
    assert failing[1].ts_event >= failing[0].fired_at + 5 * 60_000_000  # type: ignore[operator]
    assert {a.rule for a in alerts} == {"SinkFailing"}, "nothing else fired"

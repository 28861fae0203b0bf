"""The rule engine through the real broker: core rules end to end (the same transitions as the engine-level
run), restore from a checkpoint, and the operator commands against a running engine process."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pipeline.alerting import control
from pipeline.alerting.rules import RuleSet, load_rules, parse_rule_file
from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
from pipeline.contracts import encode
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import Alert, ConsumerLag, DeadLetter, Trade
from pipeline.kafka import make_consumer, make_producer
from pipeline.settings import Settings

# SinkFailing is not in this list: its input, ops.dlq.v1, carries wall-clock times that never move the engine's
# event time, so through the broker its transition times depend on when the batch is read. test_sink_failing.py
# drives it end to end from the real sink instead.
REPRESENTATIVE = [
    "VenueDisconnected", "FeedLatencyHigh", "SpreadBlowout", "VenueDivergence", "VenueCloseDivergence",
    "PriceSpikeAnomaly", "BarsStalled", "PipelineStalled", "CapacityBreachPredicted",
]  # fmt: skip


def _pick(scenarios, rule):  # type: ignore[no-untyped-def]
    return next(s for s in scenarios if s.rule == rule)


@pytest.mark.parametrize("rule", REPRESENTATIVE)
async def test_core_rule_end_to_end_matches_the_engine_level_run(  # type: ignore[no-untyped-def]
    rule: str, topics: Settings, scenario, rec, core_scenarios, kafka_io
) -> None:
    case = _pick(core_scenarios, rule)
    reference = scenario()
    reference.run(case.until, case.step, lambda t: case.make(rec, t))
    expected = [(a.fingerprint, a.version, a.state, a.ts_event) for a in reference.alerts]

    records = []
    t = 0.0
    while t <= case.until:
        records += case.make(rec, t)
        t += case.step
    await kafka_io.produce(topics, records)
    options = RunnerOptions(start_from="earliest", idle_advance_us=0)
    alerts = await kafka_io.run_engine_until(topics, load_rules(), options, lambda got: len(got) >= len(expected))
    got = sorted((a.fingerprint, a.version, a.state, a.ts_event) for a in alerts)
    assert got == sorted(expected)
    assert any(a.rule == rule and a.state == "firing" for a in alerts)


async def test_restart_resumes_from_the_checkpoint_without_repeating(topics: Settings, rec, kafka_io) -> None:  # type: ignore[no-untyped-def]
    """First run stops mid keep_firing_for; the second resolves it at the right time, re-publishing nothing."""
    rules = load_rules()
    options = RunnerOptions(start_from="earliest", idle_advance_us=0)
    first = [r for t in range(0, 45) for r in (rec.fm(t, connected=not 10 <= t < 40), rec.fm(t, exchange="okx"))]
    await kafka_io.produce(topics, first)
    stop = asyncio.Event()
    task = asyncio.create_task(RuleEngineRunner(topics, rules, options).run(stop))
    await kafka_io.wait_for(topics, lambda got: any(a.state == "firing" for a in got))
    await asyncio.sleep(2)  # let it read to the end of the first part (40..44: condition cleared, kept firing)
    stop.set()
    await asyncio.wait_for(task, 60)

    second = [r for t in range(45, 90) for r in (rec.fm(t), rec.fm(t, exchange="okx"))]
    await kafka_io.produce(topics, second)
    alerts = await kafka_io.run_engine_until(
        topics, rules, options, lambda got: any(a.state == "resolved" for a in got)
    )
    states = [((a.ts_event - rec.T0) // 1_000_000, a.state, a.version) for a in alerts]
    assert states == [(10, "pending", 1), (20, "firing", 2), (70, "resolved", 3)]


RULE_FILE = """
rules:
  - name: LagHigh
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 1000}
    annotations: {summary: "{exchange} {stream} lag {value:.0f} ms"}
"""


def _latest(alerts: list[Alert]) -> dict[str, Alert]:
    view: dict[str, Alert] = {}
    for a in alerts:
        if a.fingerprint not in view or a.version > view[a.fingerprint].version:
            view[a.fingerprint] = a
    return view


async def test_operator_commands_against_the_running_engine(  # type: ignore[no-untyped-def]
    topics: Settings, tmp_path, rec, kafka_io, engine_process
) -> None:
    """`alerts list|ack|resolve` and `silence add|list|expire` go through topics to a running engine process."""
    from pipeline.contracts.records import FeedMetrics

    rules = tmp_path / "lag.yaml"
    rules.write_text(RULE_FILE)
    await asyncio.to_thread(engine_process, topics, "--no-core", "--rules", str(rules), "--idle-advance", "0")

    def now_fm(exchange: str, lag_ms: int) -> FeedMetrics:
        return (
            rec.fm(0, exchange=exchange, lag_p99_us=lag_ms * 1000).__replace__(ts_event=time.time_ns() // 1000)
            if hasattr(FeedMetrics, "__replace__")
            else _at_now(rec.fm(0, exchange=exchange, lag_p99_us=lag_ms * 1000))
        )

    async def feed(**lags: int) -> None:
        await kafka_io.produce(topics, [now_fm(ex, ms) for ex, ms in lags.items()])

    def state_of(alerts: list[Alert], exchange: str) -> str | None:
        found = [a for a in _latest(alerts).values() if a.labels["exchange"] == exchange]
        return found[0].state if found else None

    async def wait_state(exchange: str, state: str) -> list[Alert]:
        got = await kafka_io.wait_for(topics, lambda alerts: state_of(alerts, exchange) == state)
        assert state_of(got, exchange) == state, [(a.labels, a.state) for a in got]
        return got

    await feed(binance=5000, okx=10)
    alerts = await wait_state("binance", "firing")
    fp = next(a.fingerprint for a in alerts if a.labels["exchange"] == "binance")

    listed = json.loads(await asyncio.to_thread(kafka_io.run_cli, topics, "alerts", "list", "--json"))
    assert [(a["fingerprint"], a["state"]) for a in listed] == [(fp, "firing")]

    await asyncio.to_thread(kafka_io.run_cli, topics, "alerts", "ack", fp, "--actor", "alice", "--comment", "mine")
    alerts = await wait_state("binance", "acked")
    assert _latest(alerts)[fp].actor == "alice" and _latest(alerts)[fp].comment == "mine"

    silence_id = (
        await asyncio.to_thread(
            kafka_io.run_cli,
            topics,
            "silence",
            "add",
            "-M",
            'exchange="okx"',
            "--duration",
            "1h",
            "--author",
            "bob",
            "--comment",
            "okx upgrade",
        )
    ).strip()
    listed = json.loads(await asyncio.to_thread(kafka_io.run_cli, topics, "silence", "list", "--json"))
    assert [(s["silence_id"], s["status"], s["author"]) for s in listed] == [(silence_id, "active", "bob")]
    # no pause for the engine to read the silence first: read after the alert fired, it silences it then
    await feed(okx=9000)
    await wait_state("okx", "silenced")

    await asyncio.to_thread(kafka_io.run_cli, topics, "silence", "expire", silence_id)
    await feed(okx=9000)
    await wait_state("okx", "firing")
    listed = json.loads(await asyncio.to_thread(kafka_io.run_cli, topics, "silence", "list", "--json"))
    assert listed == []

    await asyncio.to_thread(kafka_io.run_cli, topics, "alerts", "resolve", fp, "--actor", "alice")
    alerts = await wait_state("binance", "resolved")
    assert _latest(alerts)[fp].actor == "alice"
    listed = json.loads(await asyncio.to_thread(kafka_io.run_cli, topics, "alerts", "list", "--json"))
    assert [a["labels"]["exchange"] for a in listed] == ["okx"]


def _at_now(record):  # type: ignore[no-untyped-def]
    import msgspec

    return msgspec.structs.replace(record, ts_event=time.time_ns() // 1000)


async def test_bad_input_is_dead_lettered_and_evaluation_goes_on(topics: Settings, rec, kafka_io) -> None:  # type: ignore[no-untyped-def]
    producer = make_producer(topics.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.topic("ops.feed_metrics.v1"), b'{"exchange": "nowhere"}', key=b"x:y")
        await producer.send_and_wait(topics.topic("ops.silences.v1"), b'{"silence_id": "s"}', key=b"s")
    finally:
        await producer.stop()
    await kafka_io.produce(topics, [rec.fm(t, connected=not 10 <= t < 40) for t in range(80)])
    stop = asyncio.Event()
    runner = RuleEngineRunner(topics, load_rules(), RunnerOptions(start_from="earliest", idle_advance_us=0))
    task = asyncio.create_task(runner.run(stop))
    try:
        alerts = await kafka_io.wait_for(topics, lambda got: any(a.state == "resolved" for a in got))
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert [a.state for a in alerts] == ["pending", "firing", "resolved"]
    letters = [d for d in await control.read_all(topics, "ops.dlq.v1", DeadLetter) if d.source == "alerting"]
    assert sorted(d.reason for d in letters) == ["decode_error", "decode_error"]
    assert {d.topic for d in letters} == {topics.topic("ops.feed_metrics.v1"), topics.topic("ops.silences.v1")}


async def test_lag_probe_measures_a_stalled_consumer_group_and_the_rule_fires(  # type: ignore[no-untyped-def]
    topics: Settings, kafka_io
) -> None:
    """A group that stops committing (a sink whose ClickHouse is unreachable) shows its lag on
    ops.consumer_lag.v1, and a lag rule fires from it."""
    group = f"{topics.topic_prefix}sink"
    trades = topics.topic("md.trades.v1")
    tps = [TopicPartition(trades, p) for p in range(6)]
    consumer = make_consumer(topics.kafka, group_id=group)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()
    producer = make_producer(topics.kafka)
    await producer.start()
    try:
        for i in range(150):  # one batch each: Tansu's ListOffsets counts a batch's base offset, not its last
            await producer.send_and_wait(trades, encode(EXAMPLES[Trade]), key=f"binance:BTC-USDT:{i % 7}".encode())
    finally:
        await producer.stop()

    parsed = parse_rule_file(LAG_RULE, "lag.yaml")
    ruleset = RuleSet(rules=tuple(parsed.rules), inhibit_rules=())
    options = RunnerOptions(start_from="earliest", idle_advance_us=0, lag_groups=(group,), lag_interval_us=1_000_000)
    alerts = await kafka_io.run_engine_until(
        topics, ruleset, options, lambda got: any(a.state == "firing" for a in got)
    )
    assert alerts[0].state == "firing"
    assert alerts[0].annotations["summary"] == f"{group} md.trades.v1 150 behind"
    lags = await control.read_all(topics, "ops.consumer_lag.v1", ConsumerLag)
    assert lags
    trade_lags = {(x.group, x.topic, x.lag, x.partitions, x.end) for x in lags if x.topic == "md.trades.v1"}
    assert trade_lags == {(group, "md.trades.v1", 150, 6, 150)}
    # a sink group: the other topics it stores are measured too, an uncommitted partition counting from 0 (the
    # engine's own alerts and lag records land on sink topics while it runs, so their lag is whatever they hold)
    others = [x for x in lags if x.topic != "md.trades.v1"]
    assert all(x.group == group and x.lag == x.end for x in others)


LAG_RULE = """
rules:
  - name: Behind
    severity: P1
    by: [group, topic]
    condition: {type: threshold, source: consumer_lag, metric: lag, op: ">", value: 100}
    annotations: {summary: "{group} {topic} {value:.0f} behind"}
"""


async def test_when_every_input_stops_event_time_advances_on_the_injected_clock(  # type: ignore[no-untyped-def]
    topics: Settings, rec, kafka_io
) -> None:
    """Absence must fire even when nothing arrives at all: after `idle_advance` of (virtual) wall time without
    input, event time moves on at wall speed from the last watermark."""
    from pipeline.clock import VirtualClock

    ruleset = RuleSet(rules=tuple(parse_rule_file(QUIET_RULE, "quiet.yaml").rules), inhibit_rules=())
    await kafka_io.produce(topics, [rec.fm(t) for t in range(6)])
    clock = VirtualClock(1_000_000_000)
    options = RunnerOptions(start_from="earliest", idle_advance_us=30_000_000, lag_interval_us=0)
    runner = RuleEngineRunner(topics, ruleset, options, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(300):  # until it has read the inputs (generous: shared 2-core machines)
            if runner.engine.now >= rec.us(5):
                break
            await asyncio.sleep(0.2)
        assert runner.engine.now == rec.us(5)
        clock.advance(20_000_000)  # 20s idle: below idle_advance, nothing moves
        await asyncio.sleep(1)
        assert runner.engine.now == rec.us(5)
        clock.advance(30_000_000)  # 50s idle: event time = 5s + 50s
        alerts = await kafka_io.wait_for(topics, lambda got: len(got) >= 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert [(a.state, a.ts_event) for a in alerts] == [("firing", rec.us(15))]
    assert runner.engine.now == rec.us(55)


QUIET_RULE = """
rules:
  - name: Quiet
    severity: P1
    by: [exchange, stream]
    condition: {type: absent, source: feed_metrics, after: 10s}
"""

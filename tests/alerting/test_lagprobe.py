"""The lag probe's rounds are bounded: a broker call that never answers is abandoned after the call timeout, the
round goes on with the group's last answered offsets, and the rounds after it run on schedule (real broker; the
hang is injected into the admin client's offset fetch)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from pipeline.alerting import control, lagprobe
from pipeline.clock import SystemClock
from pipeline.contracts import encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import ConsumerLag, Trade
from pipeline.kafka import make_consumer, make_producer
from pipeline.settings import Settings


async def _commit_and_produce(settings: Settings, group: str, count: int) -> None:
    trades = settings.topic("md.trades.v1")
    consumer = make_consumer(settings.kafka, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(trades, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()
    await _produce(settings, count)


async def _produce(settings: Settings, count: int) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for i in range(count):  # one batch each (Tansu's ListOffsets counts a batch's base offset)
            await producer.send_and_wait(
                settings.topic("md.trades.v1"), encode(EXAMPLES[Trade]), key=f"binance:BTC-USDT:{i % 7}".encode()
            )
    finally:
        await producer.stop()


async def test_a_hung_offset_fetch_does_not_stop_the_next_rounds(topics: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    group = f"{topics.topic_prefix}sink"
    await _commit_and_produce(topics, group, 20)

    real = AIOKafkaAdminClient.list_consumer_group_offsets
    calls: list[float] = []
    hung, five_rounds = asyncio.Event(), asyncio.Event()

    async def second_call_hangs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(time.monotonic())
        if len(calls) >= 5:
            five_rounds.set()
        if len(calls) == 2:  # never answered (what a group coordinator busy with a dead member looked like)
            hung.set()
            await asyncio.Event().wait()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaAdminClient, "list_consumer_group_offsets", second_call_hangs)
    producer = make_producer(topics.kafka)
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(
        lagprobe.run_probe(topics, producer, [group], 0.3, SystemClock(), stop, call_timeout_s=1.0)
    )
    try:
        await asyncio.wait_for(hung.wait(), 30)
        await _produce(topics, 10)  # the group commits nothing more: its lag grows
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(five_rounds.wait(), 120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
    assert len(calls) >= 5, "rounds after the hung fetch did not run"
    assert calls[2] - calls[1] < 10, "the hung fetch held the probe past its call timeout"
    lags = [
        x
        for x in await control.read_all(topics, lagprobe.LAG_TOPIC, ConsumerLag)
        if x.group == group and x.topic == "md.trades.v1"  # a sink group: its other topics are measured too
    ]
    # a record for every round, the hung one included (measured from the offsets answered in round one)
    assert len(lags) >= 5
    assert lags[0].lag == 20 and lags[0].committed == 0
    assert lags[-1].lag == 30 and lags[-1].committed == 0
    assert all(x.topic == "md.trades.v1" and x.partitions == 6 for x in lags)


async def test_the_probe_keeps_measuring_a_group_without_a_member(topics: Settings) -> None:
    """A group whose only member is gone (a killed sink) keeps its committed offsets: the probe keeps publishing
    its lag, which grows with the topic."""
    group = f"{topics.topic_prefix}marketprism-sink"
    trades = topics.topic("md.trades.v1")
    consumer = make_consumer(topics.kafka, trades, group_id=group)  # a subscribed member, as the sink is
    await consumer.start()
    try:
        await _produce(topics, 12)
        got = 0
        deadline = time.monotonic() + 120
        while got < 12 and time.monotonic() < deadline:
            got += sum(len(v) for v in (await consumer.getmany(timeout_ms=500)).values())
        await consumer.commit()
    finally:
        await consumer.stop()
    producer = make_producer(topics.kafka)
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(lagprobe.run_probe(topics, producer, [group], 0.5, SystemClock(), stop, 2.0))
    try:
        for step in range(1, 4):
            await _produce(topics, 5)
            # the probe has measured this step (a record with the new log end): waited for, not slept on
            deadline = time.monotonic() + 120
            while not any(
                x.group == group and x.topic == "md.trades.v1" and x.end == 12 + 5 * step
                for x in await control.read_all(topics, lagprobe.LAG_TOPIC, ConsumerLag)
            ):
                assert time.monotonic() < deadline, f"no lag record with end {12 + 5 * step}"
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
    lags = [
        x
        for x in await control.read_all(topics, lagprobe.LAG_TOPIC, ConsumerLag)
        if x.group == group and x.topic == "md.trades.v1"
    ]
    assert len(lags) >= 3
    assert lags[0].committed == 12
    assert lags[-1].lag == 15 and lags[-1].end == 27
    assert [x.lag for x in lags] == sorted(x.lag for x in lags)


async def test_a_sink_that_never_committed_is_measured_behind_by_everything(topics: Settings) -> None:
    """A sink killed (or crash-looping) before its first commit has no committed offsets: it used to publish no
    lag at all, so SinkStalled could not see it. Its partitions count as committed at 0."""
    await _produce(topics, 7)
    sink_group, other_group = f"{topics.topic_prefix}demo-sink", f"{topics.topic_prefix}aggregator"
    producer = make_producer(topics.kafka)
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(
        lagprobe.run_probe(topics, producer, [sink_group, other_group], 0.5, SystemClock(), stop, 5.0)
    )
    try:
        deadline = time.monotonic() + 120
        while not [x for x in await control.read_all(topics, lagprobe.LAG_TOPIC, ConsumerLag) if x.group == sink_group]:
            assert time.monotonic() < deadline, "no lag record of the sink group that never committed"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await producer.stop()
    lags = await control.read_all(topics, lagprobe.LAG_TOPIC, ConsumerLag)
    trades = [x for x in lags if x.group == sink_group and x.topic == "md.trades.v1"]
    assert trades and trades[0].committed == 0 and trades[0].lag == trades[0].end == 7
    stored = {t.name for t in load_registry() if t.sink}
    assert {x.topic for x in lags if x.group == sink_group} == stored
    assert not [x for x in lags if x.group == other_group], "a group that is not a sink stays unmeasured"


async def test_a_sink_that_committed_is_measured_only_on_the_topics_it_stores(topics: Settings) -> None:
    """A sink deployed for some topics commits on those only: the topics it does not store are not counted as
    committed at 0 (they would look behind, and stalled, for ever)."""
    group = f"{topics.topic_prefix}partial-sink"
    await _commit_and_produce(topics, group, 5)  # committed on md.trades.v1 only
    producer = make_producer(topics.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.topic("ops.dlq.v1"), b"{}", key=b"x")  # a stored topic it does not read
        admin = AIOKafkaAdminClient(**lagprobe.client_options(topics.kafka))
        await admin.start()
        try:
            committed = await lagprobe.committed_offsets(topics, admin, group)
        finally:
            await admin.close()
    finally:
        await producer.stop()
    assert {tp.topic for tp in committed} == {topics.topic("md.trades.v1")}
    assert len(committed) == 6

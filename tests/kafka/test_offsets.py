"""``log_end_offsets`` is right on Tansu (whose ListOffsets reports the start of the last batch) and ends on a
topic that is written all the time (real broker)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import TopicPartition

from pipeline.kafka import make_consumer, make_producer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings


async def _list_offsets(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_ends_of_batched_and_empty_partitions(settings: Settings) -> None:
    topic = settings.topic("offsets")
    full = TopicPartition(topic, 0)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"first", partition=1)  # creates the topic with 4 partitions
        await producer.send_and_wait(topic, b"single", partition=0)
        for i in range(1500):
            await producer.send(topic, str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    listed = await _list_offsets(settings, [full])
    empty = TopicPartition(topic, 2)
    ends = await log_end_offsets(settings.kafka, [full, TopicPartition(topic, 1), empty])
    assert ends == {full: 1501, TopicPartition(topic, 1): 1, empty: 0}
    assert listed[full] <= 1501  # Tansu: the last batch's base offset + 1


async def test_ends_while_the_topic_is_written_all_the_time(settings: Settings) -> None:
    topic = settings.topic("offsets")
    tps = [TopicPartition(topic, p) for p in range(4)]
    producer = make_producer(settings.kafka)
    await producer.start()
    sent = [0]
    stop, enough = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            for p in range(4):
                await producer.send(topic, b"x" * 100, partition=p)
            sent[0] += 4
            if sent[0] >= 2000:
                enough.set()
            await asyncio.sleep(0)

    writer = asyncio.create_task(write())
    try:
        await asyncio.wait_for(enough.wait(), 60)
        await producer.flush()
        before = await log_end_offsets(settings.kafka, tps)
        ends = await asyncio.wait_for(log_end_offsets(settings.kafka, tps), 60)  # the guard is against a hang
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await writer
        await producer.flush()
        after = await log_end_offsets(settings.kafka, tps)
        await producer.stop()
    assert all(before[tp] >= 500 for tp in tps)
    assert all(before[tp] <= ends[tp] <= after[tp] for tp in tps)
    assert sum(after.values()) == sent[0]

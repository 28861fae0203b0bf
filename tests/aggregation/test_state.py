"""Reading a partition state back from its changelog: the last record, even when ListOffsets under-reports."""

from __future__ import annotations

from aiokafka import TopicPartition

from pipeline.aggregation.state import last_values
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings


async def test_last_values_reads_past_the_base_of_the_last_batch(topics: Settings) -> None:
    topic = topics.topic("aggregator-state-probe")
    producer = make_producer(topics.kafka, linger_ms=200)  # one record batch per partition
    await producer.start()
    try:
        futures = [await producer.send(topic, f"state-{p}-{i}".encode(), key=b"k", partition=p)
                   for p in (0, 1) for i in range(50)]  # fmt: skip
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in (0, 1, 2)]
    values = await last_values(topics.kafka, tps)
    assert values == {tps[0]: b"state-0-49", tps[1]: b"state-1-49", tps[2]: None}
    # what the broker's ListOffsets says (Tansu: base of the last batch + 1): reading "end - 1" alone is not enough
    consumer = make_consumer(topics.kafka, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps[:2])
    finally:
        await consumer.stop()
    assert all(1 <= ends[tp] <= 50 for tp in tps[:2])

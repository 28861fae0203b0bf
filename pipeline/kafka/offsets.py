"""Log-end offsets that are right on Kafka and on Tansu.

Tansu answers ListOffsets(latest) with the base offset of a partition's last record batch plus one,
not the offset after its last record (1,500 records produced in batches report an end of 1). Code
that reads "to the end" would stop early there. :func:`log_end_offsets` asks ListOffsets, then reads
from the reported end minus one until nothing more comes: on Kafka that is one record, on Tansu the
rest of the last batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings


async def log_end_offsets(kafka: KafkaSettings, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (0 for an empty one)."""
    tps = list(partitions)
    if not tps:
        return {}
    consumer = make_consumer(kafka, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        ends = dict(await consumer.end_offsets(tps))
        probe = [tp for tp in tps if ends[tp] > 0]
        if not probe:
            return ends
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, ends[tp] - 1)
        while True:
            batch = await consumer.getmany(*probe, timeout_ms=300)
            if not batch:
                break
            for tp, messages in batch.items():
                if messages:
                    ends[tp] = max(ends[tp], messages[-1].offset + 1)
        return ends
    finally:
        await consumer.stop()

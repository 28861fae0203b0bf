"""Reading a partition state back: the *last* record of its changelog partition, read to the true end.

Faust restores a table by reading its changelog up to the high-water mark it gets from ListOffsets
(minus one). Tansu answers ListOffsets with the base offset of a partition's last record batch + 1
(docs/development.md), so Faust's recovery stops at the *first* record of the last batch and the
later versions of the state in that batch are not applied; the source offsets Faust committed
after flushing those later versions are then ahead of the restored state, and the records in
between are never applied (whole seconds of bars missing after a SIGKILL). Each changelog partition
of ``bar-state-batches`` holds a single key (the input partition), so the latest state is simply the
last record of the changelog partition: :func:`last_values` seeks to the reported end minus one and
reads until the high-water mark the fetch responses carry (right on Tansu too), not until a poll
comes back empty: on a loaded machine a poll can come back empty in the middle of the partition, and
stopping there restored an old state while the committed offsets were far ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings


def _at_end(
    consumer: AIOKafkaConsumer, tp: TopicPartition, found: dict[TopicPartition, tuple[int, bytes | None]]
) -> bool:
    highwater = consumer.highwater(tp)
    return tp in found and highwater is not None and found[tp][0] + 1 >= highwater


async def last_values(
    kafka: KafkaSettings, partitions: Iterable[TopicPartition], timeout_s: float = 30.0
) -> dict[TopicPartition, bytes | None]:
    """The value of the last record of each partition (``None`` for an empty one or a tombstone)."""
    tps = list(partitions)
    found: dict[TopicPartition, tuple[int, bytes | None]] = {}
    if not tps:
        return {}
    consumer = make_consumer(kafka, group_id=None, max_partition_fetch_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        ends = dict(await consumer.end_offsets(tps))
        probe = [tp for tp in tps if ends[tp] > 0]
        if probe:
            consumer.assign(probe)
            for tp in probe:
                consumer.seek(tp, ends[tp] - 1)
            async with asyncio.timeout(timeout_s):
                while not all(_at_end(consumer, tp, found) for tp in probe):
                    batch = await consumer.getmany(*probe, timeout_ms=1000)
                    for tp, messages in batch.items():
                        if messages and messages[-1].offset >= found.get(tp, (-1, None))[0]:
                            found[tp] = (messages[-1].offset, messages[-1].value)
    finally:
        await consumer.stop()
    return {tp: found[tp][1] if tp in found else None for tp in tps}

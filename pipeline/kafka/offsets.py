"""Log-end offsets that are right on Kafka and on Tansu, in bounded time.

Tansu answers ListOffsets(latest) with the base offset of a partition's last record batch plus one,
not the offset after its last record (1,500 records produced in batches report an end of 1). Code
that reads "to the end" would stop early there. :func:`log_end_offsets` asks ListOffsets, then
fetches each partition once from the reported end minus one: the fetch answer's high-water mark is
the offset after the last record on both brokers, and the records it brings back (the rest of the
last batch on Tansu) agree with it. One answer per partition is enough, so the call ends on a topic
that is written all the time; a time budget bounds it when the broker is slow to answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

BUDGET_S = 10.0  # wall seconds the fetches of one call may take
_POLL_S = 0.1


async def log_end_offsets(
    kafka: KafkaSettings, partitions: Iterable[TopicPartition], budget_s: float = BUDGET_S
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (0 for an empty one), as of this call.

    Each non-empty partition is fetched once; a partition whose fetch is not answered within
    ``budget_s`` keeps the ListOffsets answer (logged: on Tansu that may be short of the end)."""
    tps = list(partitions)
    if not tps:
        return {}
    consumer = make_consumer(kafka, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        ends = dict(await consumer.end_offsets(tps))
        pending = {tp for tp in tps if ends[tp] > 0}
        if not pending:
            return ends
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, ends[tp] - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while pending and (left := deadline - loop.time()) > 0:
            batch = await consumer.getmany(*pending, timeout_ms=max(1, int(min(left, _POLL_S) * 1000)))
            for tp in list(pending):
                if messages := batch.get(tp):
                    ends[tp] = max(ends[tp], messages[-1].offset + 1)
                high = consumer.highwater(tp)  # set by the partition's first fetch answer, records or not
                if high is not None:
                    ends[tp] = max(ends[tp], high)
                if messages or high is not None:
                    pending.discard(tp)
        if pending:
            log.warning("log ends of %d partitions not answered in %.1fs: ListOffsets kept", len(pending), budget_s)
        return ends
    finally:
        await consumer.stop()

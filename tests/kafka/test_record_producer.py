"""RecordProducer against the real broker: the in-flight window refuses and counts, every record sent is
counted as acknowledged once delivered, and records land where aiokafka's default partitioner puts them."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2

from pipeline.contracts import load_registry
from pipeline.kafka import RecordProducer
from pipeline.kafka.clients import make_record_producer
from pipeline.observability.metrics import PRODUCE_ERRORS, PRODUCED
from pipeline.settings import Settings
from tests.conftest import read_to_end

TOPIC = "md.trades.v1"


def _total(counter: object, topic: str, **labels: str) -> float:
    return sum(
        sample.value
        for metric in counter.collect()  # type: ignore[attr-defined]
        for sample in metric.samples
        if sample.name.endswith("_total")
        and sample.labels["topic"] == topic
        and all(sample.labels[k] == v for k, v in labels.items())
    )


async def test_window_refuses_counts_and_every_record_is_acknowledged_on_its_key_partition(topics: Settings) -> None:
    producer = make_record_producer(topics.kafka, topics.topic_prefix, max_in_flight=50)
    acked_before = _total(PRODUCED, TOPIC)
    overflow_before = _total(PRODUCE_ERRORS, TOPIC, reason="overflow")
    keys = [f"venue:SYM-{n % 7}".encode() for n in range(120)]
    await producer.start()
    try:
        # 50 sends fill the window (enqueueing does not yield to the loop, so none is acknowledged yet)
        accepted = [await producer.send_raw(TOPIC, keys[n], f"v{n}".encode()) for n in range(51)]
        assert accepted == [True] * 50 + [False]
        assert producer.overflowed == 1 and producer.failed == 1 and producer.in_flight == 50
        await producer.flush()
        assert producer.in_flight == 0
        assert _total(PRODUCED, TOPIC) - acked_before == 50
        for n in range(51, 120):  # room again; acknowledged while sending, counted without a flush
            assert await producer.send_raw(TOPIC, keys[n], f"v{n}".encode())
            if n % 10 == 0:
                await producer.flush()
        await producer.flush()
    finally:
        await producer.stop()
    assert producer.failed == 1 and producer.in_flight == 0
    assert _total(PRODUCED, TOPIC) - acked_before == 119
    assert _total(PRODUCE_ERRORS, TOPIC, reason="overflow") - overflow_before == 1
    records = await read_to_end(topics, TOPIC)
    sent = {f"v{n}".encode(): keys[n] for n in range(120) if n != 50}
    assert sorted(r.value for r in records) == sorted(sent)  # type: ignore[type-var]
    partitions = load_registry().get(TOPIC).partitions
    for record in records:
        assert record.key == sent[record.value]  # type: ignore[index]
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % partitions  # type: ignore[arg-type]
    for key in set(keys):  # per key, the send order
        values = [int(r.value[1:]) for r in records if r.key == key]  # type: ignore[index]
        assert values == sorted(values)


class _Held:
    """Unit-test stand-in for AIOKafkaProducer: ``send`` hands out futures the test resolves itself."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[object]] = []

    async def send(self, topic: str, value: bytes, key: bytes, partition: int | None = None) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def flush(self) -> None:
        return None


async def test_delivery_is_counted_in_order_per_partition_and_failures_are_counted() -> None:
    held = _Held()
    producer = RecordProducer(held, max_in_flight=4)  # type: ignore[arg-type]
    acked_before = _total(PRODUCED, "unit.t")
    assert [await producer.send_raw("unit.t", b"k", b"v") for _ in range(5)] == [True] * 4 + [False]
    held.futures[1].set_result(None)  # done behind the oldest: counted once the oldest is
    await asyncio.sleep(0)
    assert producer.in_flight == 4 and _total(PRODUCED, "unit.t") - acked_before == 0
    held.futures[0].set_result(None)
    held.futures[2].set_exception(KafkaConnectionError("gone"))
    await asyncio.sleep(0)
    assert producer.in_flight == 1 and producer.failed == 2 and producer.overflowed == 1
    assert _total(PRODUCED, "unit.t") - acked_before == 2
    assert await producer.send_raw("unit.t", b"k", b"v")  # room again
    for future in held.futures[3:]:
        future.set_result(None)
    await producer.flush()  # counts at once, without waiting for the callbacks
    assert producer.in_flight == 0 and producer.failed == 2
    assert _total(PRODUCED, "unit.t") - acked_before == 4
    assert await producer.send_raw("unit.t", b"k", b"v")  # the callback that flush overtook still moves on
    await asyncio.sleep(0)
    held.futures[-1].set_result(None)
    await asyncio.sleep(0)
    assert producer.in_flight == 0 and _total(PRODUCED, "unit.t") - acked_before == 5

"""Round-trip self-check: one example record to every registry topic, read back through a consumer group."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import TopicPartition

from pipeline.contracts import decode, encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings


@dataclass(frozen=True)
class RoundTrip:
    topic: str
    produced: int
    consumed: int
    valid: bool


async def run_selfcheck(settings: Settings, wait_s: float = 30.0) -> list[RoundTrip]:
    """Produce one tagged example per topic, then read them back with a fresh consumer group."""
    registry = load_registry()
    tag = uuid.uuid4().hex.encode()
    producer = make_producer(settings.kafka)
    await producer.start()
    sent: dict[str, tuple[TopicPartition, int]] = {}
    try:
        for topic in registry:
            name = settings.topic(topic.name)
            meta = await producer.send_and_wait(name, encode(EXAMPLES[topic.record_type]), key=b"selfcheck:" + tag)
            sent[name] = (TopicPartition(name, meta.partition), meta.offset)
    finally:
        await producer.stop()

    consumer = make_consumer(settings.kafka, *sent, group_id=f"selfcheck-{tag.decode()}")
    await consumer.start()
    found: dict[str, bool] = {}
    try:
        async with asyncio.timeout(wait_s):
            while len(found) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    for message in messages:
                        if message.key != b"selfcheck:" + tag:
                            continue
                        record_type = registry.get(tp.topic.removeprefix(settings.topic_prefix)).record_type
                        found[tp.topic] = decode(record_type, message.value) == EXAMPLES[record_type]
            await consumer.commit()
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return [RoundTrip(name, 1, int(name in found), found.get(name, False)) for name in sent]

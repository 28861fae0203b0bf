"""A worker started while the broker is unreachable waits for it (a chaos round found it exiting with 1)."""

from __future__ import annotations

import asyncio

from pipeline.aggregation.app import SUMMARY_TOPIC, ensure_internal_topics
from pipeline.bench.chaos import Relay
from pipeline.infra import free_port
from pipeline.kafka.clients import make_consumer
from pipeline.settings import KafkaSettings, Settings


async def test_internal_topics_wait_for_an_unreachable_broker(settings: Settings) -> None:
    host, port = settings.kafka.bootstrap_servers.split(":")
    relay = Relay(host, int(port))  # the way in to the broker, refusing every connection for a while
    await relay.start(free_port())
    outage = asyncio.create_task(relay.drop(3.0))
    async with asyncio.timeout(60):  # the outage has begun (waited for, not assumed)
        while not relay.refusing:  # noqa: ASYNC110 - the relay's own flag, no event to wait on
            await asyncio.sleep(0)
    through = settings.model_copy(update={"kafka": KafkaSettings(bootstrap_servers=f"127.0.0.1:{relay.port}")})
    try:
        await ensure_internal_topics(through)
    finally:
        await outage
        await relay.stop()
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        assert settings.topic(SUMMARY_TOPIC) in await consumer.topics()
    finally:
        await consumer.stop()

"""The consumer-lag probe: measures committed lag of consumer groups (the ClickHouse sink, the Faust
workers) from the broker and publishes it as ``ConsumerLag`` records on ``ops.consumer_lag.v1``.

A sink that cannot reach ClickHouse stops committing, so its lag grows: that is how the rule engine
sees an unreachable database without the sink having to say so. The engine reads the probe's
records back from the topic like any input, so replays stay deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.clock import Clock
from pipeline.contracts import encode, load_registry
from pipeline.contracts.records import ConsumerLag
from pipeline.kafka.clients import client_options
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

LAG_TOPIC = "ops.consumer_lag.v1"


def default_groups(settings: Settings) -> list[str]:
    """The groups MarketPrism runs: the ClickHouse sink and the aggregation and anomaly Faust apps."""
    prefix = settings.topic_prefix
    return [f"{prefix}marketprism-sink", f"{prefix}aggregator", f"{prefix}anomaly"]


async def measure(settings: Settings, admin: AIOKafkaAdminClient, group: str, at: int) -> list[ConsumerLag]:
    """One record per topic the group has committed offsets on (none when the group never committed)."""
    # Ask for the registry's partitions by name: brokers differ in answering "all partitions" (Tansu fails it).
    wanted = [TopicPartition(settings.topic(t.name), p) for t in load_registry() for p in range(t.partitions)]
    answer = await admin.list_consumer_group_offsets(group, partitions=wanted)
    committed = {tp: meta.offset for tp, meta in answer.items() if meta.offset >= 0}
    if not committed:
        return []
    ends = await log_end_offsets(settings.kafka, committed)
    per_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in committed:
        per_topic[tp.topic].append(tp)
    out = []
    for topic, tps in sorted(per_topic.items()):
        done, end = sum(committed[tp] for tp in tps), sum(ends[tp] for tp in tps)
        out.append(
            ConsumerLag(
                group=group,
                topic=topic.removeprefix(settings.topic_prefix),
                ts=at,
                lag=max(0, end - done),
                partitions=len(tps),
                committed=done,
                end=end,
            )
        )
    return out


async def run_probe(
    settings: Settings,
    producer: AIOKafkaProducer,
    groups: list[str],
    interval_s: float,
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """Measure every ``interval_s`` until ``stop``; broker errors are logged and retried next round."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        while not stop.is_set():
            at = clock.now_us()
            for group in groups:
                try:
                    records = await measure(settings, admin, group, at)
                except KafkaError as exc:
                    log.warning("lag of group %s not measured: %s", group, exc)
                    continue
                for record in records:
                    await producer.send(
                        settings.topic(LAG_TOPIC), encode(record), key=f"{record.group}:{record.topic}".encode()
                    )
            await producer.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s / clock.speed)  # interval_s of pipeline time
    finally:
        await admin.close()

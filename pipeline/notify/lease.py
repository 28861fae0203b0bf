"""Active/standby among notifier replicas, through a Kafka consumer group.

Every replica reads all alerts and the notification log, but only the replica the group
``<prefix>marketprism-notify`` gives partition 0 of ``ops.notifications.v1`` sends. A standby keeps
its groups and timers and flushes nothing; when the active replica leaves or dies, the group
rebalances (after the session timeout for a crash), the standby takes the lease and flushes what is
due, and the notification log it kept up to date stops it from re-sending what was already settled.
The partitions are paused: the group is used for membership only, never to consume.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from pipeline.kafka import make_consumer
from pipeline.observability.metrics import gauge
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = gauge("notify_active", "1 while this notifier replica holds the sending lease")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: Lease):
        self._lease = lease

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._lease.set_held(False)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._lease.on_assigned(set(assigned))


class Lease:
    def __init__(self, settings: Settings, topic: str):
        self._topic = topic
        self._consumer: AIOKafkaConsumer = make_consumer(
            settings.kafka, group_id=f"{settings.topic_prefix}marketprism-notify"
        )
        self.held = False

    def set_held(self, held: bool) -> None:
        self.held = held
        ACTIVE.set(int(held))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer.pause(*assigned)
        self.set_held(TopicPartition(self._topic, 0) in assigned)
        log.warning("lease: %s", "ACTIVE" if self.held else "standby")

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=_Listener(self))

    async def poll(self) -> None:
        """Keep the membership alive (the partitions are paused: nothing is fetched)."""
        await self._consumer.getmany(timeout_ms=0)

    async def stop(self) -> None:
        self.set_held(False)
        await self._consumer.stop()

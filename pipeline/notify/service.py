"""The notifier process on Kafka: reads ``ops.alerts.v1`` (every partition, from the start: the
compacted topic is the alert state) and ``ops.notifications.v1`` (the notification log, tailed so
replicas see each other's receipts), drives the :class:`~pipeline.notify.notifier.Notifier` on the
system clock, writes a receipt per attempt to ``ops.notifications.v1`` and dead letters to
``ops.dlq.v1``.

Start-up: both topics are read up to their end offsets first; only the latest record of each
fingerprint then enters the dispatcher, and the rebuilt notification log keeps anything already
settled from being sent again. No consumer-group offsets are needed: state comes from the topics.
A record that does not decode becomes a dead letter and processing goes on.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.contracts import Alert, DecodeError, Notification, decoder_for
from pipeline.kafka import DeadLetterPublisher, RecordProducer, make_consumer, make_producer
from pipeline.kafka.admin import describe
from pipeline.notify.base import Batch, Clock, NotifyError, SystemClock
from pipeline.notify.config import NotifierConfig
from pipeline.notify.group import episode_start
from pipeline.notify.nflog import SETTLED, NotificationLog
from pipeline.notify.notifier import Notifier
from pipeline.observability.metrics import counter, gauge
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ALERTS_TOPIC = "ops.alerts.v1"
NOTIFICATIONS_TOPIC = "ops.notifications.v1"
SOURCE = "notify"
MAX_POLL_MS = 200

ALERTS_SEEN = counter("notify_alert_records_total", "Alert state changes read by the notifier", ["state"])
GROUPS = gauge("notify_groups", "Aggregation groups the notifier holds")


def _ended(firing: Alert, latest: Alert) -> bool:
    """Whether ``latest`` ends (resolves, acknowledges, silences) the episode ``firing`` began."""
    ended = latest.state in ("resolved", "inactive", "acked", "silenced")
    return ended and episode_start(latest) == episode_start(firing)


class KafkaReceipts:
    """Receipts to ``ops.notifications.v1`` (a settled one is flushed before the next message) and
    dead letters to ``ops.dlq.v1``; every receipt also updates the local notification log."""

    def __init__(self, producer: RecordProducer, dlq: DeadLetterPublisher, nflog: NotificationLog, alerts_topic: str):
        self._producer = producer
        self._dlq = dlq
        self._nflog = nflog
        self._alerts_topic = alerts_topic

    async def receipt(self, notification: Notification) -> None:
        self._nflog.observe(notification)
        if not await self._producer.send(NOTIFICATIONS_TOPIC, notification.notification_id.encode(), notification):
            log.error("receipt %s could not be queued", notification.notification_id)
        if notification.status in SETTLED:
            await self._producer.flush()

    async def dead_letter(self, batch: Batch, error: str) -> None:
        await self._dlq.publish(
            "delivery_failed",
            f"{batch.receiver}/{batch.integration}: {error}",
            msgspec.json.encode(batch),
            topic=self._alerts_topic,
        )


async def _partitions(settings: Settings, topics: list[str], wait_s: float = 60.0) -> list[TopicPartition]:
    async with asyncio.timeout(wait_s):
        while True:
            states = await describe(settings.kafka, topics)
            if all(t in states for t in topics):
                return [TopicPartition(t, p) for t in topics for p in range(states[t].partitions)]
            missing = [t for t in topics if t not in states]
            log.warning("waiting for topics %s (run `marketprism topics apply`)", missing)
            await asyncio.sleep(1.0)


class NotifyService:
    def __init__(self, settings: Settings, config: NotifierConfig, clock: Clock | None = None):
        self._settings = settings
        self._config = config
        self._clock = clock or SystemClock()
        self._alerts_topic = settings.topic(ALERTS_TOPIC)
        self._notes_topic = settings.topic(NOTIFICATIONS_TOPIC)
        self._alert_decoder = decoder_for(Alert)
        self._note_decoder = decoder_for(Notification)
        self.nflog = NotificationLog()

    async def run(self, stop: asyncio.Event) -> None:
        producer = RecordProducer(make_producer(self._settings.kafka), self._settings.topic_prefix)
        await producer.start()
        dlq = DeadLetterPublisher(producer, SOURCE)
        consumer = make_consumer(self._settings.kafka, group_id=None, fetch_max_wait_ms=100)
        await consumer.start()
        notifier = Notifier(
            self._config, KafkaReceipts(producer, dlq, self.nflog, self._alerts_topic), self.nflog, self._clock
        )
        try:
            tps = await _partitions(self._settings, [self._alerts_topic, self._notes_topic])
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            latest, last_firing = await self._catch_up(consumer, tps, dlq)
            log.info("notifier ready: %d alerts, %d settled notifications read back", len(latest), len(self.nflog))
            await self._resume(notifier, latest, last_firing)
            await self._loop(consumer, notifier, dlq, stop)
        finally:
            await notifier.aclose()
            await consumer.stop()
            await producer.stop()

    async def _catch_up(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], dlq: DeadLetterPublisher
    ) -> tuple[dict[str, Alert], dict[str, Alert]]:
        """The latest record of each fingerprint and, where it is no longer firing, its last firing one."""
        ends = await consumer.end_offsets(tps)
        latest: dict[str, Alert] = {}
        last_firing: dict[str, Alert] = {}
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                return latest, {fp: a for fp, a in last_firing.items() if _ended(a, latest[fp])}
            for messages in (await consumer.getmany(*behind, timeout_ms=500)).values():
                for message in messages:
                    alert = await self._decode(message, dlq)
                    if alert is not None:
                        previous = latest.get(alert.fingerprint)
                        if previous is None or alert.version >= previous.version:
                            latest[alert.fingerprint] = alert
                            if alert.state == "firing":
                                last_firing[alert.fingerprint] = alert

    @staticmethod
    async def _resume(notifier: Notifier, latest: dict[str, Alert], last_firing: dict[str, Alert]) -> None:
        """Episodes that fired and ended while no notifier ran are announced before their end is: the
        last firing record goes through the groups first (already-announced ones are deduplicated)."""
        for alert in sorted(last_firing.values(), key=lambda a: a.ts_event):
            notifier.replay_firing(alert)
        notifier.run_due()
        await notifier.drain()
        for alert in sorted(latest.values(), key=lambda a: a.ts_event):
            notifier.on_alert(alert)

    async def _loop(
        self, consumer: AIOKafkaConsumer, notifier: Notifier, dlq: DeadLetterPublisher, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            notifier.run_due()
            GROUPS.set(len(notifier.dispatcher.groups))
            deadline = notifier.next_deadline()
            wait_ms = MAX_POLL_MS
            if deadline is not None:
                wait_ms = max(0, min(MAX_POLL_MS, (deadline - self._clock.now()) // 1000))
            batch = await consumer.getmany(timeout_ms=wait_ms, max_records=1000)
            for messages in batch.values():
                for message in messages:
                    alert = await self._decode(message, dlq)
                    if alert is not None:
                        notifier.on_alert(alert)

    async def _decode(self, message: ConsumerRecord, dlq: DeadLetterPublisher) -> Alert | None:
        """An alert record to dispatch; notifications go to the log; bad records become dead letters."""
        if message.value is None:  # a compaction tombstone
            return None
        try:
            if message.topic == self._notes_topic:
                self.nflog.observe(self._note_decoder.decode(message.value))
                return None
            alert = self._alert_decoder.decode(message.value)
        except DecodeError as exc:
            await dlq.publish(
                "schema",
                str(exc),
                message.value or b"",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            return None
        ALERTS_SEEN.labels(state=alert.state).inc()
        return alert


async def serve(settings: Settings, config: NotifierConfig, stop: asyncio.Event) -> None:
    """Run the notifier until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM)."""
    try:
        await NotifyService(settings, config).run(stop)
    except TimeoutError as exc:
        raise NotifyError("topics did not appear; is the broker up and the registry applied?") from exc

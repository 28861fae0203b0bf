"""The notifier process on Kafka: reads ``ops.alerts.v1`` (every partition, from the start: the
compacted topic is the alert state) and ``ops.notifications.v1`` (the notification log, tailed so
replicas see each other's receipts), drives the :class:`~pipeline.notify.notifier.Notifier` on the
system clock, writes a receipt per attempt to ``ops.notifications.v1`` and dead letters to
``ops.dlq.v1``.

Start-up: both topics are read up to their end offsets first; only the latest record of each
fingerprint then enters the dispatcher, and the rebuilt notification log keeps anything already
settled from being sent again. No consumer-group offsets are needed: state comes from the topics.
Only the replica holding the :class:`~pipeline.notify.lease.Lease` sends. A record that does not
decode becomes a dead letter (``schema``), so does one that decodes but breaks routing or grouping
(``processing_error``), and processing goes on. A delivery that keeps failing is retried a bounded number of
times and dead-lettered (``delivery_failed``, :mod:`pipeline.notify.retry`).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.clock import from_settings
from pipeline.contracts import Alert, DecodeError, Notification, decoder_for, encode
from pipeline.contracts.topics import ALERTS, NOTIFICATIONS
from pipeline.kafka import DeadLetterPublisher, RecordProducer, make_consumer, make_record_producer
from pipeline.kafka.admin import describe
from pipeline.kafka.offsets import log_end_offsets
from pipeline.notify.base import Batch, Clock, NotifyError, SystemClock
from pipeline.notify.config import NotifierConfig
from pipeline.notify.durations import micros
from pipeline.notify.group import episode_start
from pipeline.notify.lease import Lease
from pipeline.notify.nflog import INTENT, SETTLED, NotificationLog
from pipeline.notify.notifier import Notifier
from pipeline.observability.health import HEALTH, flag
from pipeline.observability.metrics import counter, gauge
from pipeline.settings import Settings

log = logging.getLogger(__name__)

ALERTS_TOPIC = ALERTS.name
NOTIFICATIONS_TOPIC = NOTIFICATIONS.name
SOURCE = "notify"
MAX_POLL_MS = 200

ALERTS_SEEN = counter("notify_alert_records_total", "Alert state changes read by the notifier", ["state"])
POISON = counter("notify_poison_records_total", "Decoded alert records whose routing or grouping raised")
GROUPS = gauge("notify_groups", "Aggregation groups the notifier holds")


def _ended(firing: Alert, latest: Alert) -> bool:
    """Whether ``latest`` ends (resolves, acknowledges, silences) the episode ``firing`` began."""
    ended = latest.state in ("resolved", "inactive", "acked", "silenced")
    return ended and episode_start(latest) == episode_start(firing)


class KafkaReceipts:
    """Receipts to ``ops.notifications.v1`` (an intent and a settled one are flushed before going on) and
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
        if notification.status in SETTLED or notification.status == INTENT:
            await self._producer.flush()  # an intent is durable before the send it announces

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


class Backlog:
    """Alert state folded from records not yet handed to the dispatcher: the latest record of each
    fingerprint, and its last firing record (to announce an episode that ended unannounced)."""

    def __init__(self) -> None:
        self.latest: dict[str, Alert] = {}
        self.last_firing: dict[str, Alert] = {}

    def add(self, alert: Alert) -> None:
        previous = self.latest.get(alert.fingerprint)
        if previous is None or alert.version >= previous.version:
            self.latest[alert.fingerprint] = alert
            if alert.state == "firing":
                self.last_firing[alert.fingerprint] = alert

    async def hand_over(self, notifier: Notifier) -> list[tuple[Alert, Exception]]:
        """Episodes that fired and ended while no notifier sent go through the groups first (firing,
        flushed, already-announced ones deduplicated), then every fingerprint's latest state. Returns the
        alerts whose routing raised (the caller dead-letters them)."""
        failed: list[tuple[Alert, Exception]] = []
        ended = [a for fp, a in self.last_firing.items() if _ended(a, self.latest[fp])]
        for alert in sorted(ended, key=lambda a: a.ts_event):
            try:
                notifier.replay_firing(alert)
            except Exception as exc:
                failed.append((alert, exc))
        notifier.run_due()
        await notifier.drain()
        for alert in sorted(self.latest.values(), key=lambda a: a.ts_event):
            try:
                notifier.on_alert(alert)
            except Exception as exc:
                failed.append((alert, exc))
        self.latest.clear()
        self.last_firing.clear()
        return failed


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
        self.ready = asyncio.Event()  # caught up on both topics and in the lease group (/readyz)

    async def run(self, stop: asyncio.Event) -> None:
        producer = make_record_producer(self._settings.kafka, self._settings.topic_prefix)
        await producer.start()
        dlq = DeadLetterPublisher(producer, SOURCE)
        consumer = make_consumer(self._settings.kafka, group_id=None, fetch_max_wait_ms=100)
        await consumer.start()
        lease = Lease(self._settings, self._notes_topic)
        notifier = Notifier(
            self._config, KafkaReceipts(producer, dlq, self.nflog, self._alerts_topic), self.nflog, self._clock
        )
        try:
            tps = await _partitions(self._settings, [self._alerts_topic, self._notes_topic])
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            backlog = await self._catch_up(consumer, tps, dlq)
            log.info("notifier caught up: %d alerts, %d settled notifications", len(backlog.latest), len(self.nflog))
            await lease.start()
            self.ready.set()
            await self._loop(consumer, notifier, dlq, stop, lease, backlog)
        finally:
            await lease.stop()
            await notifier.aclose()
            await consumer.stop()
            await producer.stop()

    async def _catch_up(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], dlq: DeadLetterPublisher
    ) -> Backlog:
        """Read both topics to the end offsets they had at start."""
        ends = await log_end_offsets(self._settings.kafka, tps)
        backlog = Backlog()
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                return backlog
            for messages in (await consumer.getmany(*behind, timeout_ms=500)).values():
                for message in messages:
                    if (alert := await self._decode(message, dlq)) is not None:
                        backlog.add(alert)

    async def _loop(
        self,
        consumer: AIOKafkaConsumer,
        notifier: Notifier,
        dlq: DeadLetterPublisher,
        stop: asyncio.Event,
        lease: Lease,
        backlog: Backlog,
    ) -> None:
        """Consume; while this replica holds the lease, flush what is due. Until it first holds it,
        alerts only fold into the backlog, handed to the dispatcher ``takeover_grace`` after the lease
        came (time for the receipts of a previous holder's last messages to arrive)."""
        active_at: int | None = None
        while not stop.is_set():
            await lease.poll()
            now = self._clock.now_us()
            if not lease.held:
                active_at = None
            elif active_at is None:
                active_at = now + micros(self._config.takeover_grace)
            active = active_at is not None and now >= active_at
            if active and (backlog.latest or backlog.last_firing):
                for failed, exc in await backlog.hand_over(notifier):
                    POISON.inc()
                    log.error("alert %s raised while routing: %r", failed.fingerprint, exc)
                    await dlq.publish(
                        "processing_error", f"{type(exc).__name__}: {exc}", encode(failed), topic=self._alerts_topic
                    )
            wait_ms = MAX_POLL_MS
            if active:
                notifier.run_due()
                deadline = notifier.next_deadline()
                if deadline is not None:
                    due_ms = (deadline - self._clock.now_us()) / 1000 / self._clock.speed  # pipeline -> wall
                    wait_ms = max(0, min(MAX_POLL_MS, int(due_ms)))
            GROUPS.set(len(notifier.dispatcher.groups))
            batch = await consumer.getmany(timeout_ms=wait_ms, max_records=1000)
            for messages in batch.values():
                for message in messages:
                    if (alert := await self._decode(message, dlq)) is None:
                        continue
                    if not active:
                        backlog.add(alert)
                        continue
                    try:
                        notifier.on_alert(alert)
                    except Exception as exc:  # a record that decodes but breaks routing/grouping: dead letter
                        POISON.inc()
                        log.exception("alert %s at offset %d raised while routing", alert.fingerprint, message.offset)
                        await dlq.publish(
                            "processing_error",
                            f"{type(exc).__name__}: {exc}",
                            message.value or b"",
                            topic=message.topic,
                            partition=message.partition,
                            offset=message.offset,
                        )

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
        service = NotifyService(settings, config, from_settings(settings.clock))
        HEALTH.attach()  # /healthz: this loop answers; /readyz: caught up and in the lease group
        HEALTH.add("notifier", flag(service.ready, "catching up on ops.alerts.v1 and ops.notifications.v1"))
        await service.run(stop)
    except TimeoutError as exc:
        raise NotifyError("topics did not appear; is the broker up and the registry applied?") from exc

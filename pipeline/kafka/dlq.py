"""Dead-letter publishing: an input that cannot be processed becomes an ``ops.dlq.v1`` record."""

from __future__ import annotations

import logging

from pipeline.clock import Clock, process_clock
from pipeline.contracts import DeadLetter
from pipeline.contracts.topics import DLQ
from pipeline.kafka.producer import RecordProducer
from pipeline.observability.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

DLQ_TOPIC = DLQ.name
MAX_PAYLOAD_CHARS = 65536


class DeadLetterPublisher:
    """Logs, counts and publishes each dead letter, keyed by its source."""

    def __init__(self, producer: RecordProducer, source: str, clock: Clock | None = None):
        self._producer = producer
        self._source = source
        self._clock = clock or process_clock()  # pipeline time: alert rules count dead letters by it

    async def publish(
        self,
        reason: str,
        error: str,
        payload: bytes | str,
        *,
        exchange: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        DEAD_LETTERS.labels(source=self._source, reason=reason).inc()
        log.warning("dead letter from %s (%s): %s", self._source, reason, error)
        record = DeadLetter(
            source=self._source,
            reason=reason,
            error=error[:2000],
            payload=text[:MAX_PAYLOAD_CHARS],
            ts_recv=self._clock.now_us(),
            topic=topic,
            partition=partition,
            offset=offset,
            exchange=exchange,
        )
        await self._producer.send(DLQ_TOPIC, self._source.encode(), record)

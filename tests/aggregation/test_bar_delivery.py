"""Bars are re-sent until the broker takes them, so the state saying they were emitted never runs ahead."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError

from pipeline.aggregation.outputs import publish_bars
from pipeline.contracts import Bar
from pipeline.contracts.examples import EXAMPLES
from pipeline.kafka import RecordProducer


class FlakyKafka:
    """Stands in for AIOKafkaProducer: the first ``failures`` deliveries fail, the rest succeed."""

    def __init__(self, failures: int):
        self.failures = failures
        self.delivered: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(KafkaConnectionError("broker away"))
        else:
            self.delivered.append(value)
            future.set_result(None)
        return future

    async def flush(self) -> None:
        return None


async def test_failed_deliveries_are_counted_and_bars_re_sent_until_delivered(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def no_wait(_: float) -> None:
        return None

    monkeypatch.setattr("pipeline.aggregation.outputs.asyncio.sleep", no_wait)
    kafka = FlakyKafka(failures=3)
    producer = RecordProducer(kafka)  # type: ignore[arg-type]
    bars = [
        EXAMPLES[Bar],
        EXAMPLES[Bar].__replace__(
            window_start=EXAMPLES[Bar].window_end, window_end=EXAMPLES[Bar].window_end + 1_000_000
        ),
    ]
    await publish_bars(producer, bars)
    assert producer.failed == 3
    assert len(kafka.delivered) >= len(bars)  # the last round delivered every bar (earlier rounds may have some)
    assert kafka.delivered[-2:] == [producer_encoded(b) for b in bars]


def producer_encoded(bar: Bar) -> bytes:
    from pipeline.contracts import encode

    return encode(bar)

"""The bar worker's outputs: its one producer of contract records and dead letters (:class:`Outputs`, the shared
holder of :mod:`pipeline.kafka.outputs`), and the delivery of closed bars to their topics with a retry of the
whole set while the broker refuses them (:func:`publish_bars`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from pipeline.backoff import Backoff
from pipeline.contracts import Bar, market_key
from pipeline.contracts.topics import BAR_TOPICS as CONTRACT_BAR_TOPICS
from pipeline.kafka import RecordProducer
from pipeline.kafka.outputs import Outputs as SharedOutputs

log = logging.getLogger(__name__)

BAR_TOPICS = {interval: topic.name for interval, topic in CONTRACT_BAR_TOPICS.items()}
REDELIVERY_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)  # between re-sends of a bar set the broker refused


class Outputs(SharedOutputs):
    """The bar worker's outputs (its dead letters come from source ``aggregator``)."""

    def __init__(self, factory: Callable[[], RecordProducer]):
        super().__init__(factory, "aggregator")


async def publish_bars(producer: RecordProducer, bars: list[Bar]) -> None:
    """Deliver the bars before the state that says they were emitted is saved; while the broker refuses,
    retry the whole set with the shared capped, jittered backoff (:mod:`pipeline.backoff`); a bar delivered
    twice is identical: downstream dedups it."""
    for attempt in itertools.count():
        failed_before = producer.failed
        for bar in bars:
            await producer.send(BAR_TOPICS[bar.interval], market_key(bar.exchange, bar.symbol), bar)
        await producer.flush()
        if producer.failed == failed_before:
            return
        delay = REDELIVERY_BACKOFF.delay(attempt)
        log.error("%d bar(s) not delivered; re-sending the set in %.1fs", producer.failed - failed_before, delay)
        await asyncio.sleep(delay)

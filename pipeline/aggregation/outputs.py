"""The bar worker's outputs: its one producer of contract records and dead letters (:class:`Outputs`), and the
delivery of closed bars to their topics with a retry of the whole set while the broker refuses them
(:func:`publish_bars`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable

from pipeline.backoff import Backoff
from pipeline.contracts import Bar, market_key
from pipeline.contracts.topics import BAR_TOPICS as CONTRACT_BAR_TOPICS
from pipeline.kafka import DeadLetterPublisher, RecordProducer

log = logging.getLogger(__name__)

BAR_TOPICS = {interval: topic.name for interval, topic in CONTRACT_BAR_TOPICS.items()}
REDELIVERY_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)  # between re-sends of a bar set the broker refused


class Outputs:
    """The worker's producer of contract records and dead letters, created in the running loop on first use.

    Work that produces holds it through :meth:`use`; :meth:`stop` (at shutdown) waits for that work to finish
    before it closes the producer, and work that starts after it is skipped. Before, a SIGTERM while the
    timer was mid-tick closed the producer under it: ``AssertionError('Outputs.start() first')``, Faust
    "crashed" instead of stopping (a chaos round, seed 1068 --drops).
    """

    STOP_WAIT_S = 30.0

    def __init__(self, factory: Callable[[], RecordProducer]):
        self._factory = factory
        self._producer: RecordProducer | None = None
        self._dead_letters: DeadLetterPublisher | None = None
        self._starting = asyncio.Lock()
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopped = False

    async def start(self) -> None:
        async with self._starting:  # the agent and the timer both start it: one producer, not one each
            if self._producer is None and not self.stopped:
                producer = self._factory()
                await producer.start()
                self._producer, self._dead_letters = producer, DeadLetterPublisher(producer, "aggregator")

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[bool]:
        """Hold the producer for one unit of work; yields False once the worker is stopping (skip the work)."""
        if self.stopped:
            yield False
            return
        self._users += 1
        self._idle.clear()
        try:
            await self.start()
            yield not self.stopped
        finally:
            self._users -= 1
            if not self._users:
                self._idle.set()

    async def stop(self) -> None:
        self.stopped = True
        try:
            await asyncio.wait_for(self._idle.wait(), self.STOP_WAIT_S)
        except TimeoutError:
            log.warning("outputs still in use after %.0f s; closing the producer anyway", self.STOP_WAIT_S)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def producer(self) -> RecordProducer:
        assert self._producer is not None, "Outputs.start() first"
        return self._producer

    @property
    def dead_letters(self) -> DeadLetterPublisher:
        assert self._dead_letters is not None, "Outputs.start() first"
        return self._dead_letters


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

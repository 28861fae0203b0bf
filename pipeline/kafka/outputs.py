"""The producer holder of a worker process: one :class:`~pipeline.kafka.producer.RecordProducer` and its
:class:`~pipeline.kafka.dlq.DeadLetterPublisher`, started lazily in the running loop, held by each unit of work
and closed only once that work is done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from pipeline.kafka.dlq import DeadLetterPublisher
from pipeline.kafka.producer import RecordProducer

log = logging.getLogger(__name__)


class Outputs:
    """A worker's producer of contract records and dead letters (``source``), created in the running loop on first
    use: the one holder the Faust workers share.

    Work that produces holds it through :meth:`use`; :meth:`stop` (at shutdown) waits for that work to finish
    before it closes the producer, and work that starts after it is skipped. Before, a SIGTERM while the
    timer was mid-tick closed the producer under it: ``AssertionError('Outputs.start() first')``, Faust
    "crashed" instead of stopping (a chaos round, seed 1068 --drops).
    """

    STOP_WAIT_S = 30.0

    def __init__(self, factory: Callable[[], RecordProducer], source: str):
        self._factory = factory
        self.source = source
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
                self._producer, self._dead_letters = producer, DeadLetterPublisher(producer, self.source)

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

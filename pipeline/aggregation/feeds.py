"""The health/reference worker: merges every bar worker's partials and the collectors' feed metrics,
and publishes ``ops.feed_metrics.v1`` (``source="aggregator"``) and ``md.reference.v1`` on each tick (a
reference only for the assets with a newer quote, stamped with that quote's time: :mod:`.reference`).

Its inputs are keyed by ``exchange:stream`` / asset, so one worker owns each venue stream and each
asset whatever the number of workers. Its state is in memory: after a restart it is rebuilt from
the next seconds of partials (a few seconds of feed health may be missing, never doubled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.aggregation.health import FeedHealthTracker
from pipeline.aggregation.outputs import Outputs
from pipeline.aggregation.reference import ReferenceTracker
from pipeline.aggregation.summaries import BacklogPartial, FeedPartial, decode_summary
from pipeline.contracts import DecodeError, FeedMetrics, decoder_for
from pipeline.contracts.topics import FEED_METRICS, REFERENCE

log = logging.getLogger(__name__)

FEED_METRICS_TOPIC = FEED_METRICS.name
REFERENCE_TOPIC = REFERENCE.name

_metrics_decoder = decoder_for(FeedMetrics)


class FeedsWorker:
    """Feed health and reference prices from partials; see the module docstring."""

    def __init__(
        self,
        outputs: Outputs,
        clock: Callable[[], int],
        health: FeedHealthTracker,
        reference: ReferenceTracker,
    ):
        self.outputs = outputs
        self.clock = clock
        self.health = health
        self.reference = reference

    async def on_summary(self, value: bytes) -> None:
        async with self.outputs.use() as usable:
            if usable:  # else the worker is stopping
                await self._on_summary(value)

    async def _on_summary(self, value: bytes) -> None:
        try:
            summary = decode_summary(value)
        except (DecodeError, ValueError) as exc:
            await self.outputs.dead_letters.publish("decode", f"not an aggregator summary: {exc}", value)
            return
        if isinstance(summary, FeedPartial):
            self.health.add_partial(summary)
        elif isinstance(summary, BacklogPartial):
            self.reference.observe_backlog(summary.exchange, summary.symbol, self.clock())
        else:
            self.reference.observe(summary, self.clock())

    async def on_feed_metrics(self, value: bytes) -> None:
        async with self.outputs.use() as usable:
            if usable:  # else the worker is stopping
                await self._on_feed_metrics(value)

    async def _on_feed_metrics(self, value: bytes) -> None:
        try:
            metrics = _metrics_decoder.decode(value)
        except DecodeError as exc:
            error = f"not a FeedMetrics: {exc}"
            await self.outputs.dead_letters.publish("decode", error, value, topic=FEED_METRICS_TOPIC)
            return
        if metrics.source == "collector":
            self.health.add_collector(metrics)

    async def tick(self) -> None:
        async with self.outputs.use() as usable:
            if usable:  # else the worker is stopping
                await self._tick()

    async def _tick(self) -> None:
        now = self.clock()
        for metrics in self.health.due(now):
            key = f"{metrics.exchange}:{metrics.stream}".encode()
            await self.outputs.producer.send(FEED_METRICS_TOPIC, key, metrics)
        for price in self.reference.compute(now):
            await self.outputs.producer.send(REFERENCE_TOPIC, price.asset.encode(), price)

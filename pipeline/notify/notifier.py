"""The notifier engine without I/O of its own: alert state changes in, due groups out through each
receiver's stage chain. ``service`` drives it from Kafka on the system clock; tests drive it on a
manual clock (``on_alert``, then ``run_due`` at each deadline and ``drain``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pipeline.contracts import Alert
from pipeline.notify.base import Batch, Clock, ReceiptSink, Stage
from pipeline.notify.channels import Channel
from pipeline.notify.config import NotifierConfig, compile_routes
from pipeline.notify.escalate import Escalator
from pipeline.notify.group import AggregationGroup, Dispatcher
from pipeline.notify.nflog import NotificationLog
from pipeline.notify.stages import receiver_stage

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        config: NotifierConfig,
        sink: ReceiptSink,
        nflog: NotificationLog,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.tree = compile_routes(config.route)
        self.nflog = nflog
        self.clock = clock
        self.sink = sink
        self.dispatcher = Dispatcher(self.tree, clock)
        self.escalator = Escalator(clock)
        self._chains: dict[str, Stage] = {}
        self._channels: list[Channel] = []
        for receiver in config.receivers:
            chain, channels = receiver_stage(receiver, nflog, sink, clock, config.retry, sleep)
            self._chains[receiver.name] = chain
            self._channels += channels
        self._inflight: set[asyncio.Task[None]] = set()

    def on_alert(self, alert: Alert) -> None:
        item, routes = self.dispatcher.on_alert(alert)
        self.escalator.on_alert(item, routes)

    def replay_firing(self, alert: Alert) -> None:
        """Put a past firing record into its groups without arming escalation (start-up replay)."""
        self.dispatcher.on_alert(alert)

    def next_deadline(self) -> int | None:
        deadlines = [d for d in (self.dispatcher.next_deadline(), self.escalator.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def run_due(self) -> int:
        """Start a flush for every escalation and group due now; returns how many flushes started."""
        for due in self.escalator.due():
            self.dispatcher.escalate(due.fingerprint, due.route, due.level, due.step)
        started = 0
        for group, batch in self.dispatcher.due():
            task = asyncio.create_task(self._flush(group, batch), name=f"flush {group.key}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            started += 1
        return started

    async def _flush(self, group: AggregationGroup, batch: Batch) -> None:
        try:
            await self._chains[batch.receiver].exec(batch)
        except Exception as exc:  # a stage bug: the batch is dead-lettered (once), the notifier goes on
            log.exception("flush of %s to %s failed", batch.group_key, batch.receiver)
            try:
                await self.sink.dead_letter(batch, f"stage failed: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("dead letter of %s failed", batch.group_key)
        finally:
            self.dispatcher.flushed(group, batch)

    async def drain(self) -> None:
        """Wait for every flush in flight."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight))

    async def aclose(self) -> None:
        await self.drain()
        for channel in self._channels:
            await channel.aclose()

"""Notifier test harness: a manual clock, a receipt sink kept in memory (the Kafka one is covered
end to end), the real local receivers, and a driver that steps the notifier through its deadlines
like Alertmanager's acceptance tests do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pipeline.contracts import Alert, Notification
from pipeline.notify.base import Batch
from pipeline.notify.config import parse_config
from pipeline.notify.nflog import NotificationLog
from pipeline.notify.notifier import Notifier
from tests.notify.receivers import HttpReceivers, MailBox, start_http, start_smtp

T0 = 1_800_000_000_000_000  # epoch microseconds
S = 1_000_000


class ManualClock:
    def __init__(self, start: int = T0):
        self.t = start

    def now_us(self) -> int:
        return self.t


@dataclass
class MemorySink:
    """Receipts and dead letters in lists; receipts feed the notification log as the Kafka sink does."""

    nflog: NotificationLog
    receipts: list[Notification] = field(default_factory=list)
    intents: list[Notification] = field(default_factory=list)  # ``sending``, written before each message
    dead: list[tuple[Batch, str]] = field(default_factory=list)

    async def receipt(self, notification: Notification) -> None:
        self.nflog.observe(notification)
        (self.intents if notification.status == "sending" else self.receipts).append(notification)

    async def dead_letter(self, batch: Batch, error: str) -> None:
        self.dead.append((batch, error))

    def statuses(self, channel: str | None = None) -> list[str]:
        return [r.status for r in self.receipts if channel is None or r.channel == channel]


async def no_sleep(_: float) -> None:
    return None


@dataclass
class Harness:
    """A notifier on a manual clock; ``at(seconds)`` steps it through every deadline up to T0 + seconds."""

    notifier: Notifier
    clock: ManualClock
    sink: MemorySink

    def push(self, alert: Alert) -> None:
        self.notifier.on_alert(alert)

    async def at(self, seconds: float) -> None:
        target = T0 + round(seconds * S)
        assert target >= self.clock.t, "time only moves forward"
        while True:
            self.notifier.run_due()
            await self.notifier.drain()
            deadline = self.notifier.next_deadline()
            if deadline is None or deadline > target:
                break
            self.clock.t = max(self.clock.t, deadline)
        self.clock.t = target
        self.notifier.run_due()
        await self.notifier.drain()


def build(config: dict[str, Any], clock: ManualClock | None = None, nflog: NotificationLog | None = None) -> Harness:
    clock = clock or ManualClock()
    nflog = nflog or NotificationLog()
    sink = MemorySink(nflog)
    notifier = Notifier(parse_config(config), sink, nflog, clock, sleep=no_sleep)
    return Harness(notifier, clock, sink)


def alert(
    fingerprint: str,
    state: str,
    at: float,
    *,
    rule: str = "feed_stalled",
    severity: str = "P2",
    fired: float | None = None,
    version: int = 0,
    **labels: str,
) -> Alert:
    """An Alert record at T0 + ``at`` seconds; ``fired`` defaults to ``at`` for a firing record."""
    ts = T0 + round(at * S)
    fired_at = T0 + round((at if fired is None else fired) * S)
    return Alert(
        fingerprint=fingerprint,
        rule=rule,
        state=state,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        labels={"fp": fingerprint, **labels},
        annotations={"summary": f"{rule} on {fingerprint}"},
        ts_event=ts,
        active_since=fired_at,
        fired_at=fired_at,
        resolved_at=ts if state == "resolved" else None,
        value=1.5,
        version=version,
    )


@pytest.fixture
async def http() -> AsyncIterator[HttpReceivers]:
    receivers, runner = await start_http()
    try:
        yield receivers
    finally:
        await runner.cleanup()


@pytest.fixture
def smtp() -> Iterator[tuple[MailBox, Controller]]:
    box, controller = start_smtp()
    try:
        yield box, controller
    finally:
        controller.stop()

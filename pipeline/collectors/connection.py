"""The one connection supervisor: it knows no venue.

For one :class:`~pipeline.collectors.base.ConnectionPlan` it connects (through the configured
HTTP/SOCKS proxy), sends the subscribe frames, checks that the venue acknowledges them (an ``ack``
or data within ``ack_timeout_s``), pings per the venue's :class:`KeepAlive` and runs the pong/data
watchdog, reconnects proactively at ``max_lifetime_s`` and otherwise after capped exponential
backoff with full jitter. Every task of a session lives in one ``asyncio.TaskGroup``. Frames go to
a :class:`FrameSink` (the venue runtime, or the recorder), synchronously, so the reader never waits
on anything but the socket; frames the venue asks to send back (``FrameResult.resubscribe``, a book
resync by resubscribing) go out on the same connection.

Errors: :class:`ConnectionLost` (root, from :class:`~pipeline.collectors.base.CollectorError`) with
:class:`AckTimeout` and :class:`LifetimeReached`; the watchdog raises
:class:`~pipeline.collectors.watchdog.WatchdogTimeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import websockets
from python_socks import ProxyError
from websockets.asyncio.client import ClientConnection

from pipeline.backoff import Backoff
from pipeline.collectors.base import CollectorError, ConnectionPlan, FrameResult, KeepAlive
from pipeline.collectors.watchdog import Sleep, Watchdog, WatchdogTimeout

log = logging.getLogger(__name__)


class ConnectionLost(CollectorError):
    """The session ended (closed by the peer, or by us for a reason)."""


class AckTimeout(ConnectionLost):
    """Neither an ack nor data arrived after subscribing."""


class LifetimeReached(ConnectionLost):
    """Planned reconnect before the venue's hard connection limit."""


class FrameSink(Protocol):
    def connected(self, plan: ConnectionPlan) -> None: ...

    def frame(self, plan: ConnectionPlan, raw: str | bytes, ts_recv: int) -> FrameResult | None: ...

    def disconnected(self, plan: ConnectionPlan, reason: str) -> None: ...


def wall_us() -> int:
    return time.time_ns() // 1000


class ConnectionSupervisor:
    def __init__(
        self,
        plan: ConnectionPlan,
        keepalive: KeepAlive,
        sink: FrameSink,
        *,
        proxy: str | None = None,
        backoff: Backoff | None = None,
        max_frame_bytes: int = 16 * 1024 * 1024,
        ack_timeout_s: float = 15.0,
        open_timeout_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        ts_recv: Callable[[], int] = wall_us,
    ):
        self.plan = plan
        self.keepalive = keepalive
        self.sink = sink
        self.proxy = proxy
        self.max_frame_bytes = max_frame_bytes
        self.backoff = backoff or Backoff()
        self.ack_timeout_s = ack_timeout_s
        self.open_timeout_s = open_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._ts_recv = ts_recv
        self.sessions = 0
        self.delays: list[float] = []  # the backoff delays taken (for logs and tests)
        self.reasons: Counter[str] = Counter()  # disconnects by cause
        self.connection: ClientConnection | None = None

    async def run(self) -> None:
        """Keep the connection up until cancelled."""
        while True:
            reason, planned = await self._session()
            self.connection = None
            self.sink.disconnected(self.plan, reason)
            delay = 0.0 if planned else self.backoff.next_delay()
            self.delays.append(delay)
            self.reasons[reason.split(":")[0]] += 1
            log.warning("%s: disconnected (%s); reconnecting in %.2fs", self.plan.name, reason, delay)
            await self._sleep(delay)

    async def _session(self) -> tuple[str, bool]:
        """One connection from open to close; returns (reason, planned)."""
        reason, planned = "closed", False
        try:
            async with websockets.connect(
                self.plan.url,
                proxy=self.proxy,
                open_timeout=self.open_timeout_s,
                close_timeout=2.0,  # a dead peer must not hold up the reconnect
                ping_interval=None,  # the watchdog pings and enforces pongs itself
                # a larger frame (after decompression) closes the connection with 1009, and it reconnects
                max_size=self.max_frame_bytes,
                max_queue=None,  # the reader hands frames on synchronously, so nothing piles up here
            ) as ws:
                self.connection = ws
                self.sessions += 1
                log.info("%s: connected to %s", self.plan.name, self.plan.url)
                self.sink.connected(self.plan)
                for frame in self.plan.subscribe:
                    await ws.send(frame)
                watchdog = Watchdog(self.keepalive, self._clock, self._sleep)
                acked = asyncio.Event()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read(ws, watchdog, acked))
                    group.create_task(watchdog.run(lambda: self._ping(ws, watchdog)))
                    if self.plan.subscribe:
                        group.create_task(self._expect_ack(acked))
                    if self.keepalive.max_lifetime_s:
                        group.create_task(self._lifetime(self.keepalive.max_lifetime_s))
        except* LifetimeReached as group:
            reason, planned = str(group.exceptions[0]), True
        except* (ConnectionLost, WatchdogTimeout) as group:
            reason = f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"
        except* (OSError, TimeoutError, websockets.exceptions.WebSocketException, ProxyError) as group:
            reason = f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"
        return reason, planned

    async def _read(self, ws: ClientConnection, watchdog: Watchdog, acked: asyncio.Event) -> None:
        sink, plan, ts_recv = self.sink, self.plan, self._ts_recv
        async for message in ws:
            watchdog.alive()
            result = sink.frame(plan, message, ts_recv())
            if result is None:
                continue
            for frame in result.resubscribe:  # the venue resyncs a book by resubscribing on this connection
                await ws.send(frame)
            if not acked.is_set() and (result.control == "ack" or result.records):
                acked.set()
                self.backoff.reset()
        raise ConnectionLost(f"closed by the peer (code {ws.close_code})")

    async def _ping(self, ws: ClientConnection, watchdog: Watchdog) -> None:
        if self.keepalive.ping_frame is not None:
            await ws.send(self.keepalive.ping_frame)
        pong = asyncio.ensure_future(await ws.ping())
        pong.add_done_callback(lambda f: watchdog.alive() if not f.cancelled() and f.exception() is None else None)

    async def _expect_ack(self, acked: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                await acked.wait()
        except TimeoutError:
            raise AckTimeout(f"no subscription ack or data within {self.ack_timeout_s:g}s") from None

    async def _lifetime(self, seconds: float) -> None:
        await self._sleep(seconds)
        raise LifetimeReached(f"planned reconnect after {seconds:g}s")

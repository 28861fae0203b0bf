"""Liveness of one websocket: pings on an interval, and a timeout when the peer goes silent.

After each ping the peer has ``pong_timeout_s`` to show life: a protocol pong, an application pong
or any other frame (the connection calls :meth:`Watchdog.alive` for each). Silence raises
:class:`WatchdogTimeout`, which the connection supervisor turns into a reconnect. Clock and sleep
are injected so tests run it on a virtual clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pipeline.collectors.base import CollectorError, KeepAlive

Sleep = Callable[[float], Awaitable[None]]


class WatchdogTimeout(CollectorError):
    """The peer answered neither a ping nor with data within the pong timeout."""


class Watchdog:
    def __init__(self, keepalive: KeepAlive, clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep):
        self.keepalive = keepalive
        self._clock = clock
        self._sleep = sleep
        self.last_alive = clock()
        self.pings = 0

    def alive(self) -> None:
        """The peer showed life (a frame or a pong arrived)."""
        self.last_alive = self._clock()

    async def run(self, ping: Callable[[], Awaitable[None]]) -> None:
        """Ping every ``interval_s``; raise :class:`WatchdogTimeout` when a ping goes unanswered."""
        ka = self.keepalive
        while True:
            await self._sleep(ka.interval_s)
            sent = self._clock()
            await ping()
            self.pings += 1
            await self._sleep(ka.pong_timeout_s)
            if self.last_alive < sent:
                raise WatchdogTimeout(
                    f"no pong or frame within {ka.pong_timeout_s:g}s of a ping "
                    f"(silent for {self._clock() - self.last_alive:.1f}s)"
                )

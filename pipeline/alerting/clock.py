"""Injected time: the wall clock the runner uses for idle advancing, and a virtual one for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Current time in epoch microseconds."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000


class VirtualClock:
    """A clock that only moves when told to."""

    def __init__(self, start_us: int = 0):
        self._now = start_us

    def now_us(self) -> int:
        return self._now

    def set(self, now_us: int) -> None:
        self._now = now_us

    def advance(self, delta_us: int) -> None:
        self._now += delta_us

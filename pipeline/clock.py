"""Pipeline time: one injectable clock for everything that means "now" in the data flow.

Every component stamps receipt times, closes idle windows, times rule ``for`` clauses, groups and
escalates notifications and samples its own health on a :class:`Clock`, never on ``time.time()``:

- :class:`SystemClock` (the default, and live mode): pipeline time is the wall clock.
- :class:`ScaledClock`: pipeline time is the wall clock until ``origin_us`` and runs ``speed`` times
  faster from then on. Every process configured with the same ``MARKETPRISM_CLOCK__SPEED`` and
  ``MARKETPRISM_CLOCK__ORIGIN_US`` (:class:`pipeline.settings.ClockSettings`) shares one time line: the
  simulator plays its scenario from ``origin_us`` at that speed, so ``marketprism demo --speed 4`` runs the
  whole pipeline four times faster with every timestamp, timer and latency in simulated time.
- :class:`VirtualClock`: moves only when told to (unit tests; ``sleep`` advances it).

What stays on real time: network timeouts (connect, ping/pong, Kafka clients), reconnect backoff, broker
polls, checkpoint and flush cadences, the anomaly worker's health-sampling timer and the aggregation worker's
tick — they are about the machine, not about the market (what the last two produce is stamped and bucketed in
pipeline time, so at a higher speed each run of them covers more of it).

Shared infrastructure that no component hands a clock to (dead-letter stamping) uses
:func:`process_clock`, which the entry point sets once from the settings (:func:`configure`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from pipeline.settings import ClockSettings


class Clock(Protocol):
    """Pipeline time. ``speed`` is pipeline seconds per wall second (to turn a pipeline-time wait into a
    wall-time poll timeout: ``seconds / clock.speed``)."""

    @property
    def speed(self) -> float: ...

    def now_us(self) -> int:
        """Now, in epoch microseconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything), at the clock's speed."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of pipeline time."""
        ...


class SystemClock:
    """The wall clock."""

    speed = 1.0

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Pipeline time that equals the wall clock until ``wall_origin_us`` (which reads ``origin_us``) and runs
    ``speed`` times faster from then on: continuous and monotonic, so processes started before the origin see
    ordinary time until the run begins (no feed looks silent for ``speed`` times as long). ``wall_origin_us``
    defaults to ``origin_us``."""

    def __init__(self, speed: float, origin_us: int, wall_origin_us: int | None = None):
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {speed}")
        self._speed = speed
        self.origin_us = origin_us
        self.wall_origin_us = origin_us if wall_origin_us is None else wall_origin_us
        # the monotonic wall clock, anchored once to the epoch (now_us and monotonic then advance together)
        self._mono0, self._wall0 = time.monotonic(), time.time_ns() // 1000

    @classmethod
    def starting_now(cls, speed: float, origin_us: int) -> ScaledClock:
        """A clock that reads ``origin_us`` now."""
        return cls(speed, origin_us, time.time_ns() // 1000)

    @property
    def speed(self) -> float:
        return self._speed

    def at(self, wall_us: float) -> int:
        """Pipeline time at a wall-clock time (epoch microseconds)."""
        elapsed = wall_us - self.wall_origin_us
        return self.origin_us + int(elapsed * self._speed if elapsed > 0 else elapsed)

    def wall_us(self, pipeline_us: float) -> float:
        """The wall-clock time at which pipeline time reads ``pipeline_us`` (inverse of :meth:`at`)."""
        ahead = pipeline_us - self.origin_us
        return self.wall_origin_us + (ahead / self._speed if ahead > 0 else ahead)

    def now_us(self) -> int:
        return self.at(time.time_ns() // 1000)

    def monotonic(self) -> float:
        return self.at(self._wall0 + (time.monotonic() - self._mono0) * 1e6) / 1e6

    async def sleep(self, seconds: float) -> None:
        wall = self._wall0 + (time.monotonic() - self._mono0) * 1e6
        target = self.at(wall) + max(0.0, seconds) * 1e6
        await asyncio.sleep(max(0.0, self.wall_us(target) - wall) / 1e6)

    def __repr__(self) -> str:
        return f"ScaledClock(speed={self._speed:g}, origin_us={self.origin_us}, wall_origin_us={self.wall_origin_us})"


class VirtualClock:
    """A clock that only moves when told to (``set``, ``advance``, or ``sleep``, which advances it)."""

    speed = 1.0

    def __init__(self, start_us: int = 0):
        self._now = start_us

    def now_us(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return self._now / 1e6

    async def sleep(self, seconds: float) -> None:
        self.advance(int(max(0.0, seconds) * 1_000_000))
        await asyncio.sleep(0)

    def set(self, now_us: int) -> None:
        self._now = now_us

    def advance(self, delta_us: int) -> None:
        self._now += delta_us


def from_settings(settings: ClockSettings) -> Clock:
    """The clock the settings describe: the wall clock unless an origin (and speed) are set."""
    if settings.origin_us is None:
        return SystemClock()
    return ScaledClock(settings.speed, settings.origin_us)


_process_clock: Clock = SystemClock()


def configure(settings: ClockSettings) -> Clock:
    """Set (and return) this process's clock; called once by the entry point after loading the settings."""
    global _process_clock
    _process_clock = from_settings(settings)
    return _process_clock


def process_clock() -> Clock:
    """The clock :func:`configure` set (the wall clock until then)."""
    return _process_clock

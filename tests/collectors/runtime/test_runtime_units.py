"""Unit tests of the runtime's pure parts: backoff, watchdog (virtual clock) and trade dedup."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.collectors.backoff import Backoff
from pipeline.collectors.base import KeepAlive
from pipeline.collectors.dedup import TradeDedup
from pipeline.collectors.watchdog import Watchdog, WatchdogTimeout
from pipeline.contracts import Trade


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    draws: list[tuple[float, float]] = []

    def top(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    backoff = Backoff(base_s=0.5, cap_s=8.0, uniform=top)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(low == 0.0 for low, _ in draws)  # full jitter: every draw starts at zero
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_draws_come_from_the_injected_random() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0, uniform=lambda low, high: low + 0.25 * (high - low))
    assert [backoff.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    assert Backoff(1.0, 30.0).ceiling(1000) == 30.0  # no overflow for huge attempt counts
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, cap_s=1.0)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_watchdog_times_out_when_pings_go_unanswered() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame="ping", interval_s=20, pong_timeout_s=5), clock, clock.sleep)
    pings: list[float] = []

    async def ping() -> None:
        pings.append(clock.now)

    with pytest.raises(WatchdogTimeout, match="no pong or frame within 5s"):
        await dog.run(ping)
    assert pings == [20.0]
    assert clock.now == 25.0


async def test_watchdog_keeps_going_while_pongs_arrive_then_trips_on_silence() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame=None, interval_s=10, pong_timeout_s=3), clock, clock.sleep)
    answered = 0

    async def ping() -> None:
        nonlocal answered
        if answered < 4:  # the peer answers four pings, then goes silent
            answered += 1
            clock.now += 1
            dog.alive()

    with pytest.raises(WatchdogTimeout):
        await dog.run(ping)
    assert dog.pings == 5


async def test_watchdog_counts_data_frames_as_life() -> None:
    clock = VirtualClock()
    dog = Watchdog(KeepAlive(ping_frame=None, interval_s=10, pong_timeout_s=3), clock, clock.sleep)
    frames = 0

    async def ping() -> None:
        nonlocal frames
        if frames < 2:
            frames += 1
            clock.now += 2.9  # a data frame arrives just inside the timeout
            dog.alive()

    with pytest.raises(WatchdogTimeout):
        await dog.run(ping)
    assert dog.pings == 3


def _trade(trade_id: str, symbol: str = "BTC-USD") -> Trade:
    return Trade(exchange="kraken", symbol=symbol, raw_symbol=symbol, trade_id=trade_id, price="1.0", size="2",
                 side="buy", ts_event=1, ts_recv=2)


def test_dedup_passes_first_copies_only_per_symbol() -> None:
    dedup = TradeDedup(capacity=100)
    assert dedup.first_time(_trade("1"))
    assert not dedup.first_time(_trade("1"))
    assert dedup.first_time(_trade("1", "ETH-USD"))  # ids are per symbol
    assert dedup.duplicates == 1


def test_dedup_memory_is_bounded_and_forgets_the_oldest() -> None:
    dedup = TradeDedup(capacity=3)
    for n in range(10):
        assert dedup.first_time(_trade(str(n)))
    assert dedup.remembered("kraken", "BTC-USD") == 3
    assert not dedup.first_time(_trade("9"))
    assert dedup.first_time(_trade("0"))  # forgotten: evicted long ago

"""The shared pipeline clock: system, scaled (one time line for every process) and virtual, and the settings
that choose between them."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.clock import ScaledClock, SystemClock, VirtualClock, configure, from_settings, process_clock
from pipeline.settings import ClockSettings, SettingsError, load_settings

S = 1_000_000


def test_default_settings_give_the_wall_clock() -> None:
    clock = from_settings(ClockSettings())
    assert isinstance(clock, SystemClock)
    assert clock.speed == 1.0
    assert abs(clock.now_us() - time.time_ns() // 1000) < S


def test_scaled_clock_is_wall_time_until_the_origin_then_speed_times_faster() -> None:
    clock = ScaledClock(4.0, origin_us=1_000 * S, wall_origin_us=500 * S)
    assert clock.at(400 * S) == 900 * S  # before the origin: ordinary time, offset to meet the origin
    assert clock.at(500 * S) == 1_000 * S
    assert clock.at(510 * S) == 1_040 * S  # 10 wall seconds later: 40 pipeline seconds
    for wall in (400 * S, 500 * S, 510 * S, 512_345_678):
        assert clock.wall_us(clock.at(wall)) == pytest.approx(wall, abs=1)


def test_processes_with_the_same_settings_share_one_time_line() -> None:
    origin = time.time_ns() // 1000 - 10 * S  # started 10 wall seconds ago
    settings = ClockSettings(speed=3, origin_us=origin)
    a, b = from_settings(settings), from_settings(settings)
    assert isinstance(a, ScaledClock)
    now = a.now_us()
    assert origin + 29 * S < now < origin + 32 * S
    assert abs(b.now_us() - now) < 0.1 * S
    assert abs(a.monotonic() * S - a.now_us()) < 0.1 * S  # monotonic runs at the same speed


async def test_scaled_sleep_waits_pipeline_seconds_divided_by_the_speed() -> None:
    clock = ScaledClock(10.0, origin_us=time.time_ns() // 1000 - S)
    before_wall, before = time.monotonic(), clock.now_us()
    await clock.sleep(2.0)  # 2 pipeline seconds = 0.2 wall seconds
    wall = time.monotonic() - before_wall
    assert 0.19 <= wall < 1.0
    assert clock.now_us() - before >= 1.9 * S


async def test_sleep_across_the_origin_spends_ordinary_time_first() -> None:
    origin = time.time_ns() // 1000 + 100_000  # 0.1 wall seconds ahead
    clock = ScaledClock(10.0, origin_us=origin)
    started = time.monotonic()
    await clock.sleep(1.1)  # 0.1 s before the origin at speed 1, then 1 s at speed 10 = 0.2 wall s
    assert 0.19 <= time.monotonic() - started < 1.0
    assert clock.now_us() >= origin + S


async def test_virtual_clock_moves_only_when_told() -> None:
    clock = VirtualClock(5 * S)
    assert clock.now_us() == 5 * S
    clock.advance(S)
    await clock.sleep(0.5)
    assert clock.now_us() == 6_500_000
    clock.set(10 * S)
    assert clock.monotonic() == 10.0
    await asyncio.sleep(0)


def test_speed_without_origin_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPRISM_CLOCK__SPEED", "4")
    with pytest.raises(SettingsError, match="clock"):
        load_settings()
    monkeypatch.setenv("MARKETPRISM_CLOCK__ORIGIN_US", str(1_800_000_000 * S))
    settings = load_settings()
    assert settings.clock == ClockSettings(speed=4, origin_us=1_800_000_000 * S)
    with pytest.raises(ValueError, match="speed"):
        ScaledClock(0, 1)


def test_configure_sets_the_process_clock() -> None:
    try:
        clock = configure(ClockSettings(speed=2, origin_us=1_800_000_000 * S))
        assert process_clock() is clock and clock.speed == 2
    finally:
        configure(ClockSettings())
    assert isinstance(process_clock(), SystemClock)


async def test_the_simulator_plays_its_scenario_on_the_shared_clock_from_its_origin() -> None:
    """A scenario starting at the origin (0.5 wall s ahead) and lasting 4 simulated seconds at speed 8 ends half a
    wall second after the origin, with the engine's time and the shared clock reading the same."""
    from pipeline.simulator.base import iso_us
    from pipeline.simulator.scenario import load_scenario
    from pipeline.simulator.server import SimulatorServer

    origin = time.time_ns() // 1000 + 500_000
    clock = ScaledClock(8.0, origin)
    scenario = load_scenario(duration_s=4.0, start=iso_us(origin), incidents=[])
    async with SimulatorServer(scenario, speed=8.0) as server:
        server.clock = clock
        await asyncio.wait_for(server.run(), 30)
    wall_at_end = time.time_ns() // 1000
    assert wall_at_end >= origin + 500_000 - 20_000  # 4 simulated s = 0.5 wall s after the origin
    # the loop's timer may wake a millisecond early (its clock resolution): allow 50 simulated ms
    assert server.engine.now_us <= clock.now_us() + 50_000
    assert clock.now_us() - server.engine.now_us < 4 * S  # not behind by more than a (loaded) wall half-second

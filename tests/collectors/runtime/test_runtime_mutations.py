"""Mutated real frames through the runtime: nothing escapes, every rejected frame becomes exactly one
dead letter with a reason, and no record that breaks its schema is queued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collectors.capture import read_capture
from pipeline.collectors.output import Output, _Dead
from pipeline.collectors.runtime import VenueRuntime
from pipeline.collectors.venues import VENUES
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import KafkaSettings

CASES = {
    "binance": ("binance.txt", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "okx": ("okx.txt", ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase": ("coinbase.txt", ["BTC-USD", "ETH-USD"]),
    "kraken": ("kraken.txt", ["WAVES-EUR", "XMR-USD", "KSM-BTC", "GRT-ETH", "SC-EUR"]),
    "binance_usdm": ("binance_futures.txt", ["SUSHI-USDT-PERP", "AKRO-USDT-PERP"]),
}
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**20),
    st.text(max_size=8),
    st.just("NaN"),
    st.just("-1e309"),
    st.lists(st.integers(), max_size=2),
    st.just({}),
)


def _mutate_json(value: Any, data: st.DataObject) -> Any:
    """Replace, delete or retype one node somewhere in the decoded frame."""
    if isinstance(value, dict) and value:
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["delete", "replace", "recurse"]))
        if action == "delete":
            return {k: v for k, v in value.items() if k != key}
        if action == "replace":
            return {**value, key: data.draw(ODD_VALUES)}
        return {**value, key: _mutate_json(value[key], data)}
    if isinstance(value, list) and value:
        index = data.draw(st.integers(0, len(value) - 1))
        copy = list(value)
        if data.draw(st.booleans()):
            copy[index] = _mutate_json(copy[index], data)
        else:
            copy[index] = data.draw(ODD_VALUES)
        return copy
    return data.draw(ODD_VALUES)


@pytest.mark.shared
@pytest.mark.parametrize("exchange", list(CASES))
async def test_mutated_frames_never_escape_and_each_rejection_is_one_dead_letter(
    exchange: str, replay_dir: Path
) -> None:
    name, symbols = CASES[exchange]
    lines = read_capture(replay_dir / name)
    frames = [line.payload for line in lines if line.kind == "ws_in" and len(line.payload) < 20000]
    venue = VENUES[exchange](symbols)
    output = Output(make_record_producer(KafkaSettings()), maxsize=10_000_000)  # queue only, never started
    runtime = VenueRuntime(venue, output)
    plan = runtime.plans[0]
    runtime.connected(plan)
    outcomes = {"parsed": 0, "rejected": 0}

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        raw = data.draw(st.sampled_from(frames))
        how = data.draw(st.sampled_from(["json", "truncate", "bytes"]))
        if how == "json":
            mutated = json.dumps(_mutate_json(json.loads(raw), data))
        elif how == "truncate":
            mutated = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
        else:
            at = data.draw(st.integers(0, len(raw) - 1))
            mutated = raw[:at] + data.draw(st.sampled_from(['"', "}", "]", ",", "x", "\\", "-"])) + raw[at + 1 :]
        dead_before = runtime.dead_letters
        result = runtime.frame(plan, mutated, 1_700_000_000_000_000)  # must not raise
        if result is None:
            outcomes["rejected"] += 1
            assert runtime.dead_letters == dead_before + 1
        else:
            outcomes["parsed"] += 1

    try:
        check()
    finally:
        await output.producer.stop()  # never started: only releases it
    assert outcomes["rejected"] > 0 and outcomes["parsed"] + outcomes["rejected"] >= 2000
    dead = [item for item in output._queue._queue if isinstance(item, _Dead)]  # type: ignore[attr-defined]
    assert len(dead) == runtime.dead_letters
    reasons = {item.reason for item in dead}
    assert "venue_error" not in reasons, [item.error for item in dead if item.reason == "venue_error"][:5]

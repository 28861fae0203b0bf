"""Kraken v1 trade ids (v1 trades carry none): unique for genuinely identical fills across frames,
the same for a frame delivered again after a reconnect (so the trade dedup drops it), deterministic."""

from __future__ import annotations

import json

import pytest

from pipeline.collectors.base import ConnectionPlan, FrameError
from pipeline.collectors.dedup import TradeDedup
from pipeline.collectors.venues import KrakenV1
from pipeline.collectors.venues.kraken_v1 import V1_TRADE_KEYS

FILL = ["354.55000000", "1.25690315", "1618678145.715785", "b", "m", ""]
KEY = "1618678145.715785-b-354.55000000-1.25690315"


def frame(*rows: list[str], pair: str = "XMR/USD") -> str:
    return json.dumps([993, list(rows), "trade", pair])


def ids(venue: KrakenV1, raw: str, plan: ConnectionPlan) -> list[str]:
    return [trade.trade_id for trade in venue.on_frame(raw, 1, plan).records]


def test_identical_fills_in_one_frame_and_across_frames_get_distinct_ids() -> None:
    venue = KrakenV1(["XMR-USD"])
    plan = venue.plan()[0]
    venue.on_connect(plan)
    assert ids(venue, frame(FILL, FILL), plan) == [KEY, f"{KEY}#1"]
    assert ids(venue, frame(FILL), plan) == [f"{KEY}#2"]  # the same fill again in the next frame: a new trade
    other = ["354.56000000", *FILL[1:]]
    assert ids(venue, frame(other, FILL), plan) == ["1618678145.715785-b-354.56000000-1.25690315", f"{KEY}#3"]
    assert ids(venue, frame(FILL, pair="KSM/XBT"), plan) == [KEY]  # counted per pair


def test_a_frame_delivered_again_after_a_reconnect_keeps_its_ids_and_is_dropped() -> None:
    venue = KrakenV1(["XMR-USD"])
    plan = venue.plan()[0]
    dedup = TradeDedup()
    frames = [frame(FILL, FILL), frame(FILL), frame(["354.60000000", *FILL[1:]])]
    venue.on_connect(plan)
    first = [t for raw in frames for t in venue.on_frame(raw, 1, plan).records]
    assert all(dedup.first_time(t) for t in first) and len({t.trade_id for t in first}) == 4
    venue.on_connect(plan)  # reconnect: the venue sends the last frame again
    again = venue.on_frame(frames[0], 2, plan).records
    assert [t.trade_id for t in again] == [t.trade_id for t in first[:2]]
    assert not any(dedup.first_time(t) for t in again) and dedup.duplicates == 2
    # determinism: a fresh instance over the same frames gives the same ids
    fresh = KrakenV1(["XMR-USD"])
    fresh.on_connect(plan)
    assert [t.trade_id for raw in frames for t in fresh.on_frame(raw, 1, plan).records] == [t.trade_id for t in first]


def test_connections_count_separately_and_a_bad_frame_counts_nothing() -> None:
    venue = KrakenV1(["XMR-USD"])
    one, two = ConnectionPlan("kraken-0", "ws://x", (), (), ()), ConnectionPlan("kraken-1", "ws://x", (), (), ())
    assert ids(venue, frame(FILL), one) == [KEY]
    assert ids(venue, frame(FILL), two) == [KEY]
    with pytest.raises(FrameError):  # the second row is bad: the whole frame goes to the DLQ
        venue.on_frame(frame(FILL, [*FILL[:3], "x", "m", ""]), 1, one)
    assert ids(venue, frame(FILL), one) == [f"{KEY}#1"]


def test_memory_per_pair_is_bounded() -> None:
    venue = KrakenV1(["XMR-USD"])
    plan = venue.plan()[0]
    for n in range(V1_TRADE_KEYS + 500):
        venue.on_frame(frame([f"{n}.5", "1", f"1618678145.{n:06d}", "s", "l", ""]), 1, plan)
    assert len(venue._v1_trades[(plan.name, "XMR/USD")]) == V1_TRADE_KEYS

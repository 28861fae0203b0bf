"""The pure generator: deterministic from the seed, exact decimals, every incident kind labelled."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest

from pipeline.simulator.base import fixed, iso_ns, iso_us, parse_time, trimmed
from pipeline.simulator.engine import Engine
from pipeline.simulator.instruments import instrument
from pipeline.simulator.labels import LabelWriter, encode, read_labels
from pipeline.simulator.scenario import KINDS, load_scenario


def digest(engine: Engine) -> tuple[str, int, bytes]:
    h = hashlib.sha256()
    n = 0
    for frame in engine.run():
        h.update(f"{frame.t_us}|{frame.venue}|{frame.key}|{frame.kind}|{frame.trade_id}|{frame.text}\n".encode())
        n += 1
    return h.hexdigest(), n, b"".join(encode(label) for label in engine.labels)


def test_same_seed_same_frames_and_labels() -> None:
    scenario = load_scenario(duration_s=100)
    first, second = digest(Engine(scenario)), digest(Engine(scenario))
    assert first == second
    assert first[1] > 10_000
    assert first[2].count(b"\n") == sum(1 for inc in scenario.incidents if inc.at_s <= 100)


def test_another_seed_other_frames() -> None:
    assert digest(Engine(load_scenario(duration_s=20)))[0] != digest(Engine(load_scenario(duration_s=20, seed=8)))[0]


def test_default_scenario_labels_every_kind_once_per_incident(tmp_path) -> None:  # type: ignore[no-untyped-def]
    scenario = load_scenario()
    assert scenario.duration_s <= 300
    assert {inc.kind for inc in scenario.incidents} == set(KINDS)
    writer = LabelWriter(tmp_path / "labels.jsonl")
    engine = Engine(scenario, on_label=writer)
    frames = list(engine.run())
    writer.close()
    labels = read_labels(tmp_path / "labels.jsonl")
    assert labels == engine.labels
    ids = [scenario.incident_id(n) for n in range(len(scenario.incidents))]
    assert sorted(label.id for label in labels) == sorted(ids)
    assert {label.kind for label in labels} == set(KINDS)
    assert [label.start_us for label in labels] == sorted(label.start_us for label in labels)
    for label in labels:
        assert scenario.start_us <= label.start_us <= label.end_us <= engine.end_us
        if label.kind in ("sequence_gap", "bad_checksum"):
            assert label.start_us == label.end_us and label.detail["channel"]
    storms = [f for f in frames if f.kind == "disconnect"]
    storm = next(label for label in labels if label.kind == "disconnect_storm")
    assert storms and all(f.venue == storm.venue and storm.start_us <= f.t_us < storm.end_us for f in storms)
    malformed = [f for f in frames if f.kind == "malformed"]
    bad = next(label for label in labels if label.kind == "malformed_frames")
    assert malformed and all(f.venue == bad.venue and bad.start_us <= f.t_us < bad.end_us for f in malformed)


def test_incidents_move_the_market() -> None:
    scenario = load_scenario(duration_s=40)
    engine = Engine(scenario)
    binance_btc = next(m for m in engine.markets if m.inst.venue == "binance" and m.inst.symbol == "BTC-USDT")
    okx_btc = next(m for m in engine.markets if m.inst.venue == "okx" and m.inst.symbol == "BTC-USDT")
    before = after = 0.0
    for _ in engine.run(engine.start_us + 19_900_000):
        pass
    before = binance_btc.venue_price() / okx_btc.venue_price()
    for _ in engine.run(engine.start_us + 20_200_000):  # 4 % spike on binance at 20 s
        pass
    after = binance_btc.venue_price() / okx_btc.venue_price()
    assert abs(before - 1) < 0.005
    assert after - before > 0.03


def test_stalled_symbol_sends_nothing_but_heartbeats_go_on() -> None:
    scenario = load_scenario(duration_s=95)
    stall = next(inc for inc in scenario.incidents if inc.kind == "feed_stall")
    start = scenario.start_us + int(stall.at_s * 1e6)
    end = start + int(stall.duration_s * 1e6)
    raw = instrument(stall.venue, stall.symbol).raw  # type: ignore[arg-type]
    during = [f for f in Engine(scenario).run() if f.venue == stall.venue and start < f.t_us < end]
    assert not [f for f in during if f.key.endswith(raw)]
    assert [f for f in during if f.key == "heartbeats|"]


def test_exact_formatting() -> None:
    assert fixed(6500012, 2) == "65000.12"
    assert fixed(5, 8) == "0.00000005"
    assert fixed(-15, 2) == "-0.15"
    assert trimmed(650001000, 4) == "65000.1"
    assert trimmed(3026100, 2) == "30261"
    assert Decimal(fixed(123456789, 8)) == Decimal("1.23456789")
    assert iso_us(parse_time("2026-01-01T00:00:00.25Z")) == "2026-01-01T00:00:00.250000Z"
    assert iso_ns(1) == "1970-01-01T00:00:00.000001000Z"


@pytest.mark.parametrize(
    ("venue", "symbol", "raw", "price_dec", "size_dec"),
    [
        ("binance", "BTC-USDT", "BTCUSDT", 2, 5),
        ("binance_usdm", "BTC-USDT-PERP", "BTCUSDT", 1, 3),
        ("okx", "BTC-USDT-PERP", "BTC-USDT-SWAP", 1, 0),
        ("coinbase", "ETH-USD", "ETH-USD", 3, 8),
        ("kraken", "BTC-USD", "BTC/USD", 1, 8),
    ],
)
def test_instruments(venue: str, symbol: str, raw: str, price_dec: int, size_dec: int) -> None:
    inst = instrument(venue, symbol)
    assert (inst.raw, inst.price_dec, inst.size_dec) == (raw, price_dec, size_dec)


def test_every_price_on_the_wire_is_on_the_tick_grid() -> None:
    engine = Engine(load_scenario(duration_s=5))
    okx = [f for f in engine.run() if f.venue == "okx" and f.key == "trades|BTC-USDT"]
    assert okx
    for frame in okx:
        price = frame.text.split('"px":"')[1].split('"')[0]
        assert Decimal(price) % Decimal("0.1") == 0

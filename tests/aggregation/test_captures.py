"""Bars from the real captures: trades parsed by the venue modules, produced to the real broker and
aggregated by a real worker, equal an independent computation from the capture JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from aggregation_harness import (
    WorkerProcess,
    accepted_trades,
    bars_by_key,
    produce_trades,
    read_topic,
    read_trades_log,
)
from aggregation_reference import bar_fields, expected_bars
from test_worker_e2e import ARGS

from pipeline.bench.venues import feed
from pipeline.collectors.capture import read_capture
from pipeline.collectors.venues import Binance, BinanceUsdm, Coinbase, Okx
from pipeline.contracts import Trade
from pipeline.settings import Settings

CAPTURES = {
    "binance": (Binance, ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "binance_futures": (BinanceUsdm, ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"]),
    "okx": (Okx, ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase": (Coinbase, ["BTC-USD", "ETH-USD"]),
}
Fields = tuple[str, str, str, str, str, str, int]  # exchange, raw symbol, id, price, size, taker side, ts_event


def iso_us(text: str) -> int:
    head, _, frac = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00")
    return int(whole.timestamp()) * 1_000_000 + int((frac + "000000")[:6])


def from_json(name: str, payload: str) -> list[Fields]:
    """Trades straight from one frame's JSON, per the venues' documentation."""
    frame = json.loads(payload)
    if not isinstance(frame, dict):
        return []
    if name in ("binance", "binance_futures"):
        exchange = "binance" if name == "binance" else "binance_usdm"
        data = frame.get("data", {})
        if data.get("e") != "aggTrade":
            return []
        side = "sell" if data["m"] else "buy"
        return [(exchange, data["s"], str(data["a"]), data["p"], data["q"], side, data["T"] * 1000)]
    if name == "okx":
        if frame.get("arg", {}).get("channel") != "trades" or "data" not in frame:
            return []
        return [("okx", d["instId"], d["tradeId"], d["px"], d["sz"], d["side"], int(d["ts"]) * 1000)
                for d in frame["data"]]  # fmt: skip
    if frame.get("channel") != "market_trades":
        return []
    taker = {"BUY": "sell", "SELL": "buy"}  # Coinbase reports the maker side
    return [("coinbase", t["product_id"], t["trade_id"], t["price"], t["size"], taker[t["side"]], iso_us(t["time"]))
            for event in frame["events"] for t in event["trades"]]  # fmt: skip


def fields(t: Trade) -> Fields:
    return (t.exchange, t.raw_symbol, t.trade_id, t.price, t.size, t.side, t.ts_event)


@pytest.mark.shared
async def test_capture_bars_equal_independent_computation(topics: Settings, replay_dir: Path, tmp_path: Path) -> None:
    parsed: list[Trade] = []
    frames: list[list[Trade]] = []  # one venue frame's trades: the smallest batches the collectors publish
    independent: set[Fields] = set()
    for name, (cls, symbols) in CAPTURES.items():
        lines = list(read_capture(replay_dir / f"{name}.txt"))
        for _, outcome in feed(cls(symbols), lines):
            frame = [r for r in getattr(outcome, "records", []) if isinstance(r, Trade)]
            parsed += frame
            frames += [frame] if frame else []
        for line in lines:
            if line.kind == "ws_in":
                independent.update(from_json(name, line.payload))
    assert {fields(t) for t in parsed} == independent  # the parser read what the JSON says
    assert {t.exchange for t in parsed} == {"binance", "binance_usdm", "okx", "coinbase"}

    await produce_trades(topics, frames)
    log = await read_trades_log(topics, len(parsed))
    accepted = accepted_trades(log, 500_000, 500_000)
    expected = {i: expected_bars(accepted, i) for i in ("1s", "1m")}
    worker = await WorkerProcess(topics, tmp_path / "worker.log", *ARGS).start()
    try:
        messages = []
        for interval in ("1s", "1m"):
            want = len(expected[interval])
            messages += await read_topic(topics, f"md.bars.{interval}.v1", lambda m, w=want: len(m) >= w, wait_s=90)
    finally:
        await worker.stop()
    bars = bars_by_key(messages)
    for interval in ("1s", "1m"):
        got = {(k[1], k[2], k[3]): bar_fields(b) for k, b in bars.items() if k[0] == interval}
        assert got == expected[interval]
    print(f"{len(parsed)} capture trades -> {len(bars)} bars")  # informational

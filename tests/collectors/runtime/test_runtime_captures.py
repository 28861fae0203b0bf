"""Each real capture end to end: replay server -> collector (real venue module) -> real broker.

The expectations come from the capture itself, extracted here independently of the venue modules
(plain json, Decimal-keyed books): every trade exactly once with its exact price/size strings, zero
gaps and checksum failures, and the final book-derived BBO per symbol equal to the top of a book
rebuilt from the capture's snapshots and deltas.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.collectors.capture import read_capture
from pipeline.collectors.venues import VENUES
from pipeline.contracts import Bbo, BookUpdate, Trade
from pipeline.replay.server import ReplayServer
from pipeline.settings import Settings

Top = tuple[str, str, str, str]


class Books:
    """Independent L2 books: Decimal price -> (wire price, wire size)."""

    def __init__(self) -> None:
        self.sides: dict[str, tuple[dict[Decimal, tuple[str, str]], dict[Decimal, tuple[str, str]]]] = {}

    def replace(self, symbol: str) -> None:
        self.sides[symbol] = ({}, {})

    def set(self, symbol: str, is_bid: bool, price: str, size: str) -> None:
        side = self.sides.setdefault(symbol, ({}, {}))[0 if is_bid else 1]
        if Decimal(size) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = (price, size)

    def top(self, symbol: str) -> Top:
        bids, asks = self.sides[symbol]
        bid, ask = bids[max(bids)], asks[min(asks)]
        return (bid[0], bid[1], ask[0], ask[1])


def binance_expectations(path: Path) -> tuple[Counter[tuple[str, ...]], dict[str, Top]]:
    trades: Counter[tuple[str, ...]] = Counter()
    books = Books()
    snapshot_id: dict[str, int] = {}
    diffs: list[dict[str, Any]] = []
    for line in read_capture(path):
        if line.kind == "rest":
            raw = line.endpoint.split("symbol=")[1].split("&")[0]
            body = json.loads(line.payload)
            books.replace(raw)
            for price, size in body["bids"]:
                books.set(raw, True, price, size)
            for price, size in body["asks"]:
                books.set(raw, False, price, size)
            snapshot_id[raw] = body["lastUpdateId"]
        elif line.kind == "ws_in":
            data = json.loads(line.payload)["data"]
            if data.get("e") in ("aggTrade", "trade"):
                trades[(data["s"], str(data.get("a", data.get("t"))), data["p"], data["q"])] += 1
            elif data.get("e") == "depthUpdate":
                diffs.append(data)
    for data in diffs:  # the snapshots were taken early: every later diff applies on top
        if data["u"] >= snapshot_id[data["s"]]:
            for price, size in data["b"]:
                books.set(data["s"], True, price, size)
            for price, size in data["a"]:
                books.set(data["s"], False, price, size)
    return trades, {raw: books.top(raw) for raw in snapshot_id}


def okx_expectations(path: Path) -> tuple[Counter[tuple[str, ...]], dict[str, Top]]:
    trades: Counter[tuple[str, ...]] = Counter()
    books = Books()
    for line in read_capture(path):
        if line.kind != "ws_in" or not line.payload.startswith("{"):
            continue
        msg = json.loads(line.payload)
        channel = msg.get("arg", {}).get("channel")
        if "data" not in msg:
            continue
        if channel == "trades":
            for item in msg["data"]:
                trades[(item["instId"], item["tradeId"], item["px"], item["sz"])] += 1
        elif channel == "books":
            inst = msg["arg"]["instId"]
            if msg["action"] == "snapshot":
                books.replace(inst)
            for item in msg["data"]:
                for price, size, *_ in item["bids"]:
                    books.set(inst, True, price, size)
                for price, size, *_ in item["asks"]:
                    books.set(inst, False, price, size)
    return trades, {inst: books.top(inst) for inst in books.sides}


def coinbase_expectations(path: Path) -> tuple[Counter[tuple[str, ...]], dict[str, Top]]:
    trades: Counter[tuple[str, ...]] = Counter()
    books = Books()
    for line in read_capture(path):
        if line.kind != "ws_in":
            continue
        msg = json.loads(line.payload)
        if msg.get("channel") == "market_trades":
            for event in msg["events"]:
                for item in event["trades"]:
                    trades[(item["product_id"], item["trade_id"], item["price"], item["size"])] += 1
        elif msg.get("channel") == "l2_data":
            for event in msg["events"]:
                product = event["product_id"]
                if event["type"] == "snapshot":
                    books.replace(product)
                for update in event["updates"]:
                    books.set(product, update["side"] == "bid", update["price_level"], update["new_quantity"])
    return trades, {product: books.top(product) for product in books.sides}


def kraken_expectations(path: Path) -> tuple[Counter[tuple[str, ...]], dict[str, Top]]:
    trades: Counter[tuple[str, ...]] = Counter()
    books = Books()
    for line in read_capture(path):
        if line.kind != "ws_in" or not line.payload.startswith("["):
            continue
        msg = json.loads(line.payload)
        channel, pair = msg[-2], msg[-1]
        if channel == "trade":
            for row in msg[1]:
                trades[(pair, row[0], row[1])] += 1
        elif channel.startswith("book"):
            for part in msg[1:-2]:
                if "as" in part or "bs" in part:
                    books.replace(pair)
                for key, is_bid in (("as", False), ("bs", True), ("a", False), ("b", True)):
                    for price, size, *_ in part.get(key, []):
                        books.set(pair, is_bid, price, size)
    return trades, {pair: books.top(pair) for pair in books.sides}


CASES = {
    "binance": ("binance.txt", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"], binance_expectations),
    "binance_usdm": (
        "binance_futures.txt",
        ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"],
        binance_expectations,
    ),
    "okx": ("okx.txt", ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"], okx_expectations),
    "coinbase": ("coinbase.txt", ["BTC-USD", "ETH-USD"], coinbase_expectations),
    "kraken": (
        "kraken.txt",
        [
            "WAVES-EUR",
            "XMR-USD",
            "KSM-BTC",
            "GRT-ETH",
            "SC-EUR",
            "ETH-CHF",
            "OCEAN-BTC",
            "OMG-USD",
            "BTC-CHF",
            "ADA-BTC",
        ],
        kraken_expectations,
    ),
}


@pytest.mark.shared
@pytest.mark.parametrize("exchange", list(CASES))
async def test_capture_end_to_end(exchange: str, topics: Settings, replay_dir: Path, run_collector, toy) -> None:
    name, symbols, expectations = CASES[exchange]
    capture = replay_dir / name
    expected_trades, expected_tops = expectations(capture)
    frames = sum(1 for line in read_capture(capture) if line.kind == "ws_in")
    venue_cls = VENUES[exchange]
    server = ReplayServer([capture])
    await server.start()
    venue = venue_cls(symbols, ws_url=server.url_for(venue_cls.ws_url), rest_url=server.url_for(venue_cls.rest_url))
    try:
        async with run_collector(topics, [venue]) as running:
            runtime = running.collector.runtimes[0]
            await toy.wait_for(
                lambda: (
                    server.state[capture].completed >= 1
                    and runtime.stats.frames >= frames
                    and runtime.rest.waiting("snapshot") == 0
                )
            )
    finally:
        await server.stop()

    assert runtime.dead_letters == 0
    assert all(c.sessions == 1 for c in runtime.connections if c.sessions)  # no reconnect
    assert runtime.stats.totals["gaps"] == 0
    assert runtime.stats.totals["checksum_failures"] == 0
    assert runtime.stats.totals["crossed"] == 0

    trades = [t for _, t in await toy.read_topic(topics, "md.trades.v1", Trade)]
    assert len({(t.symbol, t.trade_id) for t in trades}) == len(trades)  # exactly once
    if exchange == "kraken":  # v1 trades carry no id
        got = Counter((t.raw_symbol, t.price, t.size) for t in trades)
    else:
        got = Counter((t.raw_symbol, t.trade_id, t.price, t.size) for t in trades)
    assert got == expected_trades
    assert sum(expected_trades.values()) > 0

    books = [b for _, b in await toy.read_topic(topics, "md.book.v1", BookUpdate)]
    book_moments = {(b.raw_symbol, b.ts_recv) for b in books}
    final: dict[str, Top] = {}
    for _, bbo in await toy.read_topic(topics, "md.bbo.v1", Bbo):
        if (bbo.raw_symbol, bbo.ts_recv) in book_moments:  # derived from the book, not a ticker channel
            final[bbo.raw_symbol] = (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size)
    assert final == expected_tops


@pytest.mark.shared
async def test_all_captures_on_one_server_into_one_collector(
    topics: Settings, replay_dir: Path, run_collector, toy
) -> None:
    """One replay server serving every file (routed by recorded host), one collector running every venue."""
    captures = {exchange: replay_dir / name for exchange, (name, _, _) in CASES.items()}
    server = ReplayServer(list(captures.values()))
    await server.start()
    venues = []
    for exchange, (_, symbols, _) in CASES.items():
        venue_cls = VENUES[exchange]
        venues.append(
            venue_cls(symbols, ws_url=server.url_for(venue_cls.ws_url), rest_url=server.url_for(venue_cls.rest_url))
        )
    frames = {
        exchange: sum(1 for line in read_capture(path) if line.kind == "ws_in") for exchange, path in captures.items()
    }
    try:
        async with run_collector(topics, venues) as running:
            runtimes = {r.exchange: r for r in running.collector.runtimes}
            await toy.wait_for(
                lambda: (
                    all(server.state[path].completed >= 1 for path in captures.values())
                    and all(runtimes[e].stats.frames >= frames[e] for e in captures)
                    and all(r.rest.waiting("snapshot") == 0 for r in runtimes.values())
                )
            )
    finally:
        await server.stop()

    trades = [t for _, t in await toy.read_topic(topics, "md.trades.v1", Trade)]
    for exchange, (name, _, expectations) in CASES.items():
        expected_trades, _ = expectations(replay_dir / name)
        mine = [t for t in trades if t.exchange == exchange]
        assert len(mine) == sum(expected_trades.values()), exchange
        assert len({(t.symbol, t.trade_id) for t in mine}) == len(mine), exchange
        assert runtimes[exchange].dead_letters == 0 and runtimes[exchange].stats.totals["gaps"] == 0, exchange

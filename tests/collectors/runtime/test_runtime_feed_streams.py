"""Feed metrics per (venue, stream) where the stream names a symbol: a stall of one symbol shows as
that symbol's streams going stale while the other symbols' streams stay fresh (Coinbase and Kraken
v2, whose frames are per channel on the wire), through the runtime the collector uses."""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from pipeline.collectors.base import Venue
from pipeline.collectors.output import Output
from pipeline.collectors.runtime import VenueRuntime
from pipeline.collectors.venues import Coinbase, Kraken
from pipeline.contracts import FeedMetrics
from pipeline.kafka import RecordProducer

T0 = 1_786_309_548_000_000
SECOND = 1_000_000


def runtime_for(venue: Venue) -> VenueRuntime:
    # a producer that is never started: records stay in the output's queue (the broker is not the subject)
    return VenueRuntime(venue, Output(RecordProducer(AIOKafkaProducer(bootstrap_servers="127.0.0.1:9"))))


def by_stream(records: list[FeedMetrics]) -> dict[str, FeedMetrics]:
    return {record.stream: record for record in records}


def coinbase(seq: int, channel: str, events: list[dict[str, Any]]) -> str:
    return json.dumps(
        {"channel": channel, "timestamp": "2026-08-09T21:05:48.1Z", "sequence_num": seq, "events": events}
    )


def cb_book(seq: int, kind: str, product: str, price: str) -> str:
    updates = [
        {"side": "bid", "event_time": "2026-08-09T21:05:48.1Z", "price_level": price, "new_quantity": "1"},
        {"side": "offer", "event_time": "2026-08-09T21:05:48.1Z", "price_level": "9" + price, "new_quantity": "1"},
    ]
    return coinbase(seq, "l2_data", [{"type": kind, "product_id": product, "updates": updates}])


def cb_trades(seq: int, *products: str) -> str:
    trades = [
        {
            "product_id": p,
            "trade_id": f"{seq}-{p}",
            "price": "10.5",
            "size": "0.1",
            "time": "2026-08-09T21:05:48.1Z",
            "side": "SELL",
        }
        for p in products
    ]
    return coinbase(seq, "market_trades", [{"type": "update", "trades": trades}])


def cb_tickers(seq: int, *products: str) -> str:
    tickers = [
        {
            "type": "ticker",
            "product_id": p,
            "price": "10",
            "best_bid": "10",
            "best_ask": "11",
            "best_bid_quantity": "1",
            "best_ask_quantity": "2",
        }
        for p in products
    ]
    return coinbase(seq, "ticker", [{"type": "update", "tickers": tickers}])


async def test_coinbase_one_product_stalls_and_only_its_streams_go_stale() -> None:
    venue = Coinbase(["BTC-USD", "ETH-USD"])
    runtime = runtime_for(venue)
    plan = runtime.plans[0]
    assert set(plan.streams) == {f"{c}:{p}" for c in ("level2", "market_trades", "ticker") for p in plan.symbols}

    def prometheus(stream: str) -> float:
        labels = {"exchange": "coinbase", "stream": stream}
        return REGISTRY.get_sample_value("marketprism_collector_messages_total", labels) or 0.0

    before = {s: prometheus(s) for s in ("level2:BTC-USD", "ticker:ETH-USD")}
    runtime.connected(plan)
    seq = iter(range(1000))
    # t0: both products book, trade and tick; the trades and tickers come batched in one frame each
    runtime.frame(plan, cb_book(next(seq), "snapshot", "BTC-USD", "100"), T0)
    runtime.frame(plan, cb_book(next(seq), "snapshot", "ETH-USD", "10"), T0)
    runtime.frame(plan, cb_trades(next(seq), "BTC-USD", "ETH-USD"), T0)
    runtime.frame(plan, cb_tickers(next(seq), "BTC-USD", "ETH-USD"), T0)
    first = by_stream(runtime.stats.flush(T0 + SECOND, SECOND))
    for product in ("BTC-USD", "ETH-USD"):
        for channel in ("level2", "market_trades", "ticker"):
            assert first[f"{channel}:{product}"].messages == 1
            assert first[f"{channel}:{product}"].staleness_us == SECOND
    # then ETH-USD stalls for 10 s while BTC-USD goes on (heartbeats keep the connection itself alive)
    for second in range(1, 11):
        now = T0 + second * SECOND
        runtime.frame(plan, cb_book(next(seq), "update", "BTC-USD", f"100.{second}"), now)
        runtime.frame(plan, cb_trades(next(seq), "BTC-USD"), now)
        runtime.frame(plan, cb_tickers(next(seq), "BTC-USD"), now)
        runtime.frame(plan, coinbase(next(seq), "heartbeats", []), now)
        last = by_stream(runtime.stats.flush(now + SECOND // 2, SECOND))
    for channel in ("level2", "market_trades", "ticker"):
        assert last[f"{channel}:BTC-USD"].staleness_us == SECOND // 2
        assert last[f"{channel}:BTC-USD"].messages == 1
        assert last[f"{channel}:ETH-USD"].staleness_us == 10 * SECOND + SECOND // 2
        assert last[f"{channel}:ETH-USD"].messages == 0
        assert last[f"{channel}:ETH-USD"].connected  # the connection is up: only the symbol stalls
    assert last[plan.name].messages == 1  # the heartbeat counts under the connection
    assert runtime.dead_letters == 0 and runtime.stats.totals["gaps"] == 0
    # Prometheus totals per stream (added at each flush): 11 BTC book frames, one ETH ticker (the batch)
    assert prometheus("level2:BTC-USD") - before["level2:BTC-USD"] == 11
    assert prometheus("ticker:ETH-USD") - before["ticker:ETH-USD"] == 1


def kraken_v2(channel: str, data: list[dict[str, Any]], kind: str = "update") -> str:
    return json.dumps({"channel": channel, "type": kind, "data": data})


def kr_trade(symbol: str, trade_id: int) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "side": "buy",
        "price": 10.5,
        "qty": 0.25,
        "ord_type": "market",
        "trade_id": trade_id,
        "timestamp": "2026-08-09T21:05:48.1Z",
    }


def kr_ticker(symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "bid": 10.0, "bid_qty": 1.5, "ask": 10.5, "ask_qty": 2.0}


async def test_kraken_v2_one_pair_stalls_and_only_its_streams_go_stale() -> None:
    venue = Kraken(["BTC-USD", "ETH-USD"])
    runtime = runtime_for(venue)
    plan = runtime.plans[0]
    assert {"trade:BTC/USD", "trade:ETH/USD", "ticker:ETH/USD", "book:ETH/USD"} <= set(plan.streams)
    runtime.connected(plan)
    ids = iter(range(1, 1000))
    runtime.frame(plan, kraken_v2("trade", [kr_trade("BTC/USD", next(ids)), kr_trade("ETH/USD", next(ids))]), T0)
    runtime.frame(plan, kraken_v2("ticker", [kr_ticker("BTC/USD"), kr_ticker("ETH/USD")], "snapshot"), T0)
    first = by_stream(runtime.stats.flush(T0, SECOND))
    assert {s: first[s].messages for s in ("trade:BTC/USD", "trade:ETH/USD", "ticker:BTC/USD", "ticker:ETH/USD")} == {
        "trade:BTC/USD": 1,
        "trade:ETH/USD": 1,
        "ticker:BTC/USD": 1,
        "ticker:ETH/USD": 1,
    }
    for second in range(1, 31):
        now = T0 + second * SECOND
        runtime.frame(plan, kraken_v2("trade", [kr_trade("BTC/USD", next(ids))]), now)
        runtime.frame(plan, kraken_v2("ticker", [kr_ticker("BTC/USD")]), now)
        runtime.frame(plan, '{"channel":"heartbeat"}', now)
        last = by_stream(runtime.stats.flush(now, SECOND))
    assert last["trade:BTC/USD"].staleness_us == 0 and last["ticker:BTC/USD"].staleness_us == 0
    assert last["trade:ETH/USD"].staleness_us == 30 * SECOND  # past FeedStalled's 30 s from here on
    assert last["ticker:ETH/USD"].staleness_us == 30 * SECOND
    assert last["trade:ETH/USD"].messages == 0 and last["trade:BTC/USD"].messages == 1
    assert last[plan.name].messages == 1  # heartbeats are the connection's
    assert "trade" not in last and "ticker" not in last  # no per-channel stream hides the stall
    assert runtime.dead_letters == 0

"""The output pump publishes every trade both alone (md.trades.v1) and in exactly one TradeBatch
(md.trade_batches.v1): same key, same per-market order, batches bounded, no waiting when idle."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from pipeline.collectors.output import Output
from pipeline.contracts import Bbo, Trade, TradeBatch, decode, market_key
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings
from tests.conftest import read_to_end

T0 = 1_700_000_000_000_000


def trade(i: int, symbol: str) -> Trade:
    return Trade(
        exchange="okx" if i % 3 else "binance", symbol=symbol, raw_symbol=symbol, trade_id=f"t{i}",
        price=f"{100 + i % 7}.{i % 100:02d}", size=f"0.{i:05d}", side="buy" if i % 2 else "sell",
        ts_event=T0 + i, ts_recv=T0 + i + 900,
    )  # fmt: skip


def by_market(trades: list[Trade]) -> dict[bytes, list[Trade]]:
    out: dict[bytes, list[Trade]] = defaultdict(list)
    for t in trades:
        out[market_key(t.exchange, t.symbol)].append(t)
    return dict(out)


async def test_a_quiet_market_sends_its_batch_at_once(topics: Settings) -> None:
    output = Output(make_record_producer(topics.kafka, topics.topic_prefix), batch_linger_s=600)
    pump = asyncio.create_task(output.run())
    try:
        output.record(trade(0, "BTC-USDT"))
        output.record(trade(1, "ETH-USDT"))
        await asyncio.wait_for(output.drain(), 30)  # returns long before the 600 s linger
    finally:
        pump.cancel()
        await output.stop()
    batches = await read_to_end(topics, "md.trade_batches.v1")
    assert sorted(len(decode(TradeBatch, m.value).trades) for m in batches) == [1, 1]


async def test_every_trade_is_in_exactly_one_batch_in_order(topics: Settings) -> None:
    output = Output(make_record_producer(topics.kafka, topics.topic_prefix), max_batch=40,
                    batch_linger_s=0.05)  # fmt: skip
    pump = asyncio.create_task(output.run())
    try:
        output.record(trade(0, "BTC-USDT"))
        await asyncio.wait_for(output.drain(), 10)
        # load: 1,000 trades of six markets (and BBOs between them) queued faster than the pump drains them
        trades = [trade(i, ["BTC-USDT", "ETH-USDT", "SOL-USDT"][i % 3]) for i in range(1, 1001)]
        for i, t in enumerate(trades):
            output.record(t)
            if i % 100 == 0:
                output.record(Bbo(
                    exchange="okx", symbol="BTC-USDT", raw_symbol="BTC-USDT", bid_price="1", bid_size="1",
                    ask_price="2", ask_size="1", ts_event=T0, ts_recv=T0,
                ))  # fmt: skip
        await asyncio.wait_for(output.drain(), 30)
    finally:
        pump.cancel()
        await output.stop()
    trades.insert(0, trade(0, "BTC-USDT"))
    singles = await read_to_end(topics, "md.trades.v1")
    batches = await read_to_end(topics, "md.trade_batches.v1")
    assert len(batches) == output.batches < len(trades) // 10  # coalesced under load
    flattened: list[Trade] = []
    for message in batches:
        batch = decode(TradeBatch, message.value)
        assert 1 <= len(batch.trades) <= 40
        assert message.key == market_key(batch.exchange, batch.symbol)
        flattened += [
            Trade(exchange=batch.exchange, symbol=batch.symbol, raw_symbol=batch.raw_symbol, trade_id=t.trade_id,
                  price=t.price, size=t.size, side=t.side, ts_event=t.ts_event, ts_recv=t.ts_recv)
            for t in batch.trades
        ]  # fmt: skip
    # same partition as the per-trade record of the same market
    partition_of = {m.key: m.partition for m in singles}
    assert all(partition_of[m.key] == m.partition for m in batches)
    # exactly the published trades, each once, in each market's order
    published = sorted(singles, key=lambda m: (m.partition, m.offset))
    assert by_market(flattened) == by_market([decode(Trade, m.value) for m in published]) == by_market(trades)

"""TradeBatch conversions owned by the contracts: ``TradeBatch.of``, ``batch.trade(i)``, ``batch.unbatched()``."""

from __future__ import annotations

import msgspec

from pipeline.contracts import Trade, TradeBatch, decode, encode
from pipeline.contracts.examples import EXAMPLES


def _trades() -> list[Trade]:
    first = EXAMPLES[Trade]
    assert isinstance(first, Trade)
    return [msgspec.structs.replace(first, trade_id=f"t{i}", price=f"{100 + i}.5", ts_event=first.ts_event + i)
            for i in range(3)]  # fmt: skip


def test_a_batch_round_trips_its_trades_in_order() -> None:
    trades = _trades()
    batch = TradeBatch.of(trades)
    assert (batch.exchange, batch.symbol, batch.raw_symbol) == (
        trades[0].exchange,
        trades[0].symbol,
        trades[0].raw_symbol,
    )
    assert batch.unbatched() == trades
    assert [batch.trade(i) for i in range(3)] == trades
    assert decode(TradeBatch, encode(batch)) == batch  # a valid contract record


def test_the_example_batch_unbatches_to_trades_of_its_market() -> None:
    example = EXAMPLES[TradeBatch]
    assert isinstance(example, TradeBatch)
    assert TradeBatch.of(example.unbatched()) == example

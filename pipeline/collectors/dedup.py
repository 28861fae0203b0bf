"""Trade dedup across reconnects: a bounded set of recent trade ids per symbol.

After a reconnect a venue may send trades again (Coinbase's ``market_trades`` snapshot, a replayed
stream); the first copy of each ``(exchange, symbol, trade_id)`` passes and later copies are
dropped and counted. Each symbol remembers its last ``capacity`` ids (insertion order), so memory
stays bounded however long the collector runs.
"""

from __future__ import annotations

from collections import OrderedDict

from pipeline.contracts import Trade


class TradeDedup:
    def __init__(self, capacity: int = 20_000):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self.duplicates = 0

    def first_time(self, trade: Trade) -> bool:
        """True for the first copy of a trade (and remember it); False for a repeat."""
        key = (trade.exchange, trade.symbol)
        ids = self._seen.get(key)
        if ids is None:
            ids = self._seen[key] = OrderedDict()
        if trade.trade_id in ids:
            self.duplicates += 1
            return False
        ids[trade.trade_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return True

    def remembered(self, exchange: str, symbol: str) -> int:
        return len(self._seen.get((exchange, symbol), ()))

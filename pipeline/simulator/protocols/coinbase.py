"""Coinbase Advanced Trade wire format: one ``subscribe`` per channel (``level2``, ``market_trades``,
``ticker``, ``heartbeats``), trades whose ``side`` is the maker side (a taker buy prints ``SELL``, as in
the capture), a ``subscriptions`` ack listing every subscription of the connection,
``l2_data`` snapshot on subscribe then updates, recent-trades snapshot then updates, tickers on each
trade, heartbeats every second, and ``sequence_num`` counting every message of one connection.

Sample update (the capture's shape): ``{"channel":"l2_data","timestamp":"2026-08-09T21:05:48.505350477Z",
"sequence_num":14,"events":[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid",
"event_time":"2026-08-09T21:05:48.210883Z","price_level":"65062.5","new_quantity":"0.00583"}]}]}``.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from pipeline.simulator.base import SEQ, iso_ns, iso_us, trimmed
from pipeline.simulator.market import Change, SymbolMarket, TradePrint
from pipeline.simulator.protocols.base import Connection, Out, Protocol

CHANNELS = {"level2": "l2_data", "market_trades": "market_trades", "ticker": "ticker", "heartbeats": "heartbeats"}
START_UPTIME_S = 40_000  # the heartbeat counter's value at the simulated start


class Coinbase(Protocol):
    venue: ClassVar[str] = "coinbase"
    trim: ClassVar[bool] = True
    connection_seq: ClassVar[bool] = True

    def price_text(self, m: SymbolMarket, ticks: int) -> str:
        return f'"{self.px(m, ticks)}"'

    def book_key(self, raw: str) -> str:
        return f"level2|{raw}"

    @staticmethod
    def _envelope(channel: str, ts_us: int, events: str) -> str:
        return f'{{"channel":"{channel}","timestamp":"{iso_ns(ts_us)}","sequence_num":{SEQ},"events":[{events}]}}'

    def _updates(self, m: SymbolMarket, rows: list[Change], ts_us: int) -> str:
        when = iso_us(ts_us)
        return ",".join(
            f'{{"side":"{"bid" if is_bid else "offer"}","event_time":"{when}","price_level":"{self.px(m, p)}",'
            f'"new_quantity":"{self.qty(m, q)}"}}'
            for is_bid, p, q in rows
        )

    def book(self, m: SymbolMarket, changes: list[Change], ts_us: int, corrupt: bool) -> Out:
        key = f"level2|{m.inst.raw}"
        if not self.want(key):
            return []
        event = f'{{"type":"update","product_id":"{m.inst.raw}","updates":[{self._updates(m, changes, ts_us)}]}}'
        return [(key, self._envelope("l2_data", ts_us, event))]

    def _trades(self, m: SymbolMarket, trades: list[TradePrint]) -> str:
        return ",".join(
            f'{{"product_id":"{m.inst.raw}","trade_id":"{t.trade_id}","price":"{self.px(m, t.price)}",'
            f'"size":"{self.qty(m, t.size)}","time":"{iso_us(t.ts_us)}","side":"{"SELL" if t.buy else "BUY"}"}}'
            for t in trades
        )

    def _ticker(self, m: SymbolMarket, kind: str, ts_us: int) -> str:
        (bp, bq), (ap, aq) = m.book.best()
        change = trimmed(round((m.last_price - m.open_price) * 10**8 * 100 / m.open_price), 8)
        ticker = (
            f'{{"type":"ticker","product_id":"{m.inst.raw}","price":"{self.px(m, m.last_price)}",'
            f'"volume_24_h":"{self.qty(m, m.volume)}","low_24_h":"{self.px(m, m.low)}",'
            f'"high_24_h":"{self.px(m, m.high)}","low_52_w":"{self.px(m, m.low)}","high_52_w":"{self.px(m, m.high)}",'
            f'"price_percent_chg_24_h":"{change}","best_bid":"{self.px(m, bp)}","best_ask":"{self.px(m, ap)}",'
            f'"best_bid_quantity":"{self.qty(m, bq)}","best_ask_quantity":"{self.qty(m, aq)}"}}'
        )
        return self._envelope("ticker", ts_us, f'{{"type":"{kind}","tickers":[{ticker}]}}')

    def trade(self, m: SymbolMarket, trade: TradePrint, ts_us: int) -> Out:
        raw = m.inst.raw
        event = f'{{"type":"update","trades":[{self._trades(m, [trade])}]}}'
        out: Out = [(f"market_trades|{raw}", self._envelope("market_trades", ts_us, event))]
        if self.want(f"ticker|{raw}"):
            out.append((f"ticker|{raw}", self._ticker(m, "update", ts_us)))
        return out

    def heartbeat(self, ts_us: int, second: int) -> Out:
        if not self.want("heartbeats|"):
            return []
        counter = START_UPTIME_S + second
        when = iso_ns(ts_us).replace("T", " ").removesuffix("Z")
        event = f'{{"current_time":"{when} +0000 UTC m=+{counter}.000000001","heartbeat_counter":{counter}}}'
        return [("heartbeats|", self._envelope("heartbeats", ts_us, event))]

    # -- connection side -----------------------------------------------------------------------------
    def _ack(self, conn: Connection, now_us: int) -> str:
        subs: dict[str, list[str]] = {}
        for key in conn.keys:
            channel, _, raw = key.partition("|")
            subs.setdefault(channel, []).append(raw or "heartbeats")
        body = orjson.dumps({"subscriptions": subs}).decode()
        return self._envelope("subscriptions", now_us, body)

    def message(self, conn: Connection, text: str, now_us: int) -> list[str]:
        try:
            request = orjson.loads(text)
            kind, channel = request["type"], request["channel"]
            products = request.get("product_ids", [])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ['{"type":"error","message":"Failure to subscribe"}']
        if kind not in ("subscribe", "unsubscribe") or channel not in CHANNELS or not isinstance(products, list):
            return [f'{{"type":"error","message":"Failure to {kind}: unknown channel {channel!s}"}}']
        unknown = [p for p in products if p not in self.markets]
        if unknown:
            names = ",".join(map(str, unknown))
            return [f'{{"type":"error","message":"Failure to {kind}: unknown product_ids {names}"}}']
        keys = ["heartbeats|"] if channel == "heartbeats" else [f"{channel}|{p}" for p in products]
        if kind == "unsubscribe":
            for key in keys:
                conn.keys.pop(key, None)
            return [self._ack(conn, now_us)]
        replies: list[str] = []
        for key in keys:
            conn.keys[key] = channel
            m = self.markets.get(key.partition("|")[2])
            if m is None:
                continue
            if channel == "level2":
                rows = [(True, p, q) for p, q in m.book.top_bids(10_000)] + [
                    (False, p, q) for p, q in m.book.top_asks(10_000)
                ]
                updates = self._updates(m, rows, now_us)
                event = f'{{"type":"snapshot","product_id":"{m.inst.raw}","updates":[{updates}]}}'
                replies.append(self._envelope("l2_data", now_us, event))
            elif channel == "market_trades":
                recent = list(reversed(m.trades[-10:]))
                event = f'{{"type":"snapshot","trades":[{self._trades(m, recent)}]}}'
                replies.append(self._envelope("market_trades", now_us, event))
            elif channel == "ticker":
                replies.append(self._ticker(m, "snapshot", now_us))
        replies.append(self._ack(conn, now_us))
        return replies

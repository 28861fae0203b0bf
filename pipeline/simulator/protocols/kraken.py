"""Kraken spot websocket v2 wire format: a ``status`` frame on connect, ``method: subscribe`` with one
ack per symbol, ``book`` (snapshot then updates, each with the CRC32 ``checksum`` of the top 10 asks
then top 10 bids, prices and quantities with the ``.`` removed and leading zeros stripped), ``trade``
(recent-trades snapshot, then updates), ``ticker`` (on each trade), a ``heartbeat`` every second on
subscribed connections, and ``ping``/``pong``.

Prices and quantities are JSON numbers written with the pair's full precision (``65000.1``,
``0.00120000``), so the wire text and the checksum text agree. Sample update:
``{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":64999.9,"qty":0.25000000}],
"asks":[],"checksum":2114181697,"timestamp":"2026-01-01T00:00:01.100000Z"}]}``.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import orjson

from pipeline.simulator.base import fixed, iso_us
from pipeline.simulator.market import Change, SymbolMarket, TradePrint
from pipeline.simulator.protocols.base import Connection, Out, Protocol

CHANNELS = frozenset({"book", "trade", "ticker"})
DEPTHS = frozenset({10, 25, 100, 500, 1000})


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken book checksum over the top 10 asks (ascending) then bids (descending), unsigned."""
    text = "".join(_digits(p) + _digits(q) for p, q in asks[:10]) + "".join(
        _digits(p) + _digits(q) for p, q in bids[:10]
    )
    return zlib.crc32(text.encode())


class Kraken(Protocol):
    venue: ClassVar[str] = "kraken"
    book_depth: ClassVar[int | None] = 10  # always exactly the checksum depth: truncation never matters

    def __init__(self, markets: list[SymbolMarket]):
        super().__init__(markets)
        self.conn_ids = 0

    def price_text(self, m: SymbolMarket, ticks: int) -> str:
        return self.px(m, ticks)

    def book_key(self, raw: str) -> str:
        return f"book|{raw}"

    def _rows(self, m: SymbolMarket, rows: list[tuple[int, int]]) -> str:
        return ",".join(f'{{"price":{self.px(m, p)},"qty":{self.qty(m, q)}}}' for p, q in rows)

    def _checksum(self, m: SymbolMarket) -> int:
        px, qty = self._px[m.inst.raw], self._qty[m.inst.raw]
        asks = [(px(p), qty(q)) for p, q in m.book.top_asks(10)]
        bids = [(px(p), qty(q)) for p, q in m.book.top_bids(10)]
        return checksum(asks, bids)

    def book(self, m: SymbolMarket, changes: list[Change], ts_us: int, corrupt: bool) -> Out:
        key = f"book|{m.inst.raw}"
        if not self.want(key):
            return []
        bids = self._rows(m, [(p, q) for is_bid, p, q in changes if is_bid])
        asks = self._rows(m, [(p, q) for is_bid, p, q in changes if not is_bid])
        check = self._checksum(m)
        if corrupt:
            check = (check + 1) % (1 << 32)
        return [
            (
                key,
                (
                    f'{{"channel":"book","type":"update","data":[{{"symbol":"{m.inst.raw}","bids":[{bids}],"asks":[{asks}],'
                    f'"checksum":{check},"timestamp":"{iso_us(ts_us)}"}}]}}'
                ),
            )
        ]

    def _trades(self, m: SymbolMarket, trades: list[TradePrint]) -> str:
        return ",".join(
            f'{{"symbol":"{m.inst.raw}","side":"{"buy" if t.buy else "sell"}","price":{self.px(m, t.price)},'
            f'"qty":{self.qty(m, t.size)},"ord_type":"market","trade_id":{t.trade_id},"timestamp":"{iso_us(t.ts_us)}"}}'
            for t in trades
        )

    def _ticker(self, m: SymbolMarket, kind: str) -> str:
        (bp, bq), (ap, aq) = m.book.best()
        vwap = m.quote_volume // m.volume if m.volume else m.last_price
        change = m.last_price - m.open_price
        pct = fixed(round(change * 10_000 / m.open_price), 2)
        return (
            f'{{"channel":"ticker","type":"{kind}","data":[{{"symbol":"{m.inst.raw}","bid":{self.px(m, bp)},'
            f'"bid_qty":{self.qty(m, bq)},"ask":{self.px(m, ap)},"ask_qty":{self.qty(m, aq)},'
            f'"last":{self.px(m, m.last_price)},"volume":{self.qty(m, m.volume)},"vwap":{self.px(m, vwap)},'
            f'"low":{self.px(m, m.low)},"high":{self.px(m, m.high)},"change":{self.px(m, change)},'
            f'"change_pct":{pct}}}]}}'
        )

    def trade(self, m: SymbolMarket, trade: TradePrint, ts_us: int) -> Out:
        raw = m.inst.raw
        out: Out = [(f"trade|{raw}", f'{{"channel":"trade","type":"update","data":[{self._trades(m, [trade])}]}}')]
        if self.want(f"ticker|{raw}"):
            out.append((f"ticker|{raw}", self._ticker(m, "update")))
        return out

    def heartbeat(self, ts_us: int, second: int) -> Out:
        return [("heartbeat|", '{"channel":"heartbeat"}')] if self.want("heartbeat|") else []

    # -- connection side -----------------------------------------------------------------------------
    def open(self, conn: Connection, query: Any, now_us: int) -> list[str]:
        self.conn_ids += 1
        return [
            '{"channel":"status","type":"update","data":[{"api_version":"v2",'
            f'"connection_id":{10_000_000_000 + self.conn_ids},"system":"online","version":"2.0.10"}}]}}'
        ]

    def message(self, conn: Connection, text: str, now_us: int) -> list[str]:
        when = iso_us(now_us)
        try:
            request = orjson.loads(text)
            method = request["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [f'{{"error":"Malformed request","success":false,"time_in":"{when}","time_out":"{when}"}}']
        req_id = request.get("req_id")
        tail = f',"req_id":{int(req_id)}' if isinstance(req_id, int) else ""
        times = f'"time_in":"{when}","time_out":"{when}"'
        if method == "ping":
            return [f'{{"method":"pong"{tail},{times}}}']
        if method not in ("subscribe", "unsubscribe"):
            return [f'{{"error":"Method not found","method":"{method!s}","success":false,{times}{tail}}}']
        params = request.get("params")
        channel = params.get("channel") if isinstance(params, dict) else None
        symbols = params.get("symbol", []) if isinstance(params, dict) else []
        if channel not in CHANNELS or not isinstance(symbols, list):
            return [f'{{"error":"Channel not found","method":"{method}","success":false,{times}{tail}}}']
        depth = params.get("depth", 10)
        if channel == "book" and depth not in DEPTHS:
            return [f'{{"error":"Invalid depth","method":"{method}","success":false,{times}{tail}}}']
        snapshot = params.get("snapshot", True) is not False
        replies: list[str] = []
        for symbol in symbols:
            m = self.markets.get(symbol) if isinstance(symbol, str) else None
            if m is None:
                replies.append(
                    f'{{"error":"Currency pair not supported {symbol!s}","method":"{method}","success":false,'
                    f'"symbol":"{symbol!s}",{times}{tail}}}'
                )
                continue
            key = f"{channel}|{symbol}"
            extra = f'"depth":{depth},' if channel == "book" else ""
            flag = "true" if snapshot else "false"
            result = f'{{"channel":"{channel}",{extra}"snapshot":{flag},"symbol":"{symbol}"}}'
            replies.append(f'{{"method":"{method}","result":{result},"success":true,{times}{tail}}}')
            if method == "unsubscribe":
                conn.keys.pop(key, None)
                continue
            conn.keys[key] = channel
            conn.keys.setdefault("heartbeat|", "heartbeat")
            if not snapshot:
                continue
            if channel == "book":
                bids = self._rows(m, m.book.top_bids(depth))
                asks = self._rows(m, m.book.top_asks(depth))
                replies.append(
                    f'{{"channel":"book","type":"snapshot","data":[{{"symbol":"{symbol}","bids":[{bids}],'
                    f'"asks":[{asks}],"checksum":{self._checksum(m)},"timestamp":"{when}"}}]}}'
                )
            elif channel == "trade":
                replies.append(f'{{"channel":"trade","type":"snapshot","data":[{self._trades(m, m.trades[-50:])}]}}')
            else:
                replies.append(self._ticker(m, "snapshot"))
        return replies

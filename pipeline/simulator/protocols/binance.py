"""Binance spot wire format: combined (``/stream?streams=``) and raw (``/ws``) streams, live
``SUBSCRIBE``/``UNSUBSCRIBE``, ``depthUpdate`` diffs every 100 ms with contiguous update ids
(``U == previous u + 1``), ``trade``/``aggTrade``/``bookTicker`` events, and the REST
``/api/v3/depth`` snapshot whose ``lastUpdateId`` is the ``u`` of the last diff sent.

Sample diff (the capture's shape): ``{"e":"depthUpdate","E":1633998512068,"s":"NKNUSDT","U":499869750,
"u":499869752,"b":[["0.35130000","6195.00000000"]],"a":[]}``. Spot prints every price and size
with 8 decimals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import orjson

from pipeline.simulator.market import Change, SymbolMarket, TradePrint
from pipeline.simulator.protocols.base import Connection, Out, Protocol

# stream suffix -> channel; klines and 24 h tickers are accepted but not simulated
STREAMS = {
    "depth": "depth", "depth@100ms": "depth", "depth@1000ms": "depth", "trade": "trade", "aggTrade": "aggTrade",
    "bookTicker": "bookTicker", "markPrice": "markPrice", "markPrice@1s": "markPrice", "forceOrder": "forceOrder",
}  # fmt: skip


class BinanceSpot(Protocol):
    venue: ClassVar[str] = "binance"
    wire_dec: ClassVar[int | None] = 8  # spot pads every number to 8 decimals; None: the instrument's
    depth_path: ClassVar[str] = "/api/v3/depth"

    def __init__(self, markets: list[SymbolMarket]):
        super().__init__(markets)
        self.last_u = {raw: 10_000_000 + m.rng.randrange(1_000_000) for raw, m in self.markets.items()}

    # -- formatting ----------------------------------------------------------------------------------
    def price_text(self, m: SymbolMarket, ticks: int) -> str:
        return f'"{self.px(m, ticks)}"'

    def _levels(self, m: SymbolMarket, rows: list[tuple[int, int]]) -> str:
        return ",".join(f'["{self.px(m, p)}","{self.qty(m, q)}"]' for p, q in rows)

    def book_key(self, raw: str) -> str:
        return f"depth|{raw}"

    def book_seq(self, raw: str) -> int | None:
        return self.last_u[raw]

    # -- engine side ---------------------------------------------------------------------------------
    def _diff_text(self, m: SymbolMarket, first: int, last: int, prev: int, bids: str, asks: str, ms: int) -> str:
        return f'{{"e":"depthUpdate","E":{ms},"s":"{m.inst.raw}","U":{first},"u":{last},"b":[{bids}],"a":[{asks}]}}'

    def _book_ticker_text(self, m: SymbolMarket, u: int, ms: int) -> str:
        (bp, bq), (ap, aq) = m.book.best()
        return (
            f'{{"u":{u},"s":"{m.inst.raw}","b":"{self.px(m, bp)}","B":"{self.qty(m, bq)}",'
            f'"a":"{self.px(m, ap)}","A":"{self.qty(m, aq)}"}}'
        )

    def book(self, m: SymbolMarket, changes: list[Change], ts_us: int, corrupt: bool) -> Out:
        raw = m.inst.raw
        prev = self.last_u[raw]
        first, last = prev + 1, prev + len(changes)
        self.last_u[raw] = last
        ms = ts_us // 1000
        out: Out = []
        key = f"depth|{raw}"
        if self.want(key):
            bids = self._levels(m, [(p, q) for is_bid, p, q in changes if is_bid])
            asks = self._levels(m, [(p, q) for is_bid, p, q in changes if not is_bid])
            out.append((key, self._diff_text(m, first, last, prev, bids, asks, ms)))
        key = f"bookTicker|{raw}"
        if self.want(key):
            out.append((key, self._book_ticker_text(m, last, ms)))
        return out

    def _trade_text(self, m: SymbolMarket, t: TradePrint, ms: int, agg: bool) -> str:
        maker = "false" if t.buy else "true"
        price, size = self.px(m, t.price), self.qty(m, t.size)
        if agg:
            body = f'"a":{t.trade_id},"p":"{price}","q":"{size}","f":{t.trade_id},"l":{t.trade_id}'
            return f'{{"e":"aggTrade","E":{ms},"s":"{m.inst.raw}",{body},"T":{ms},"m":{maker},"M":true}}'
        body = f'"t":{t.trade_id},"p":"{price}","q":"{size}"'
        return f'{{"e":"trade","E":{ms},"s":"{m.inst.raw}",{body},"T":{ms},"m":{maker},"M":true}}'

    def trade(self, m: SymbolMarket, trade: TradePrint, ts_us: int) -> Out:
        raw, ms = m.inst.raw, ts_us // 1000
        out: Out = [(f"trade|{raw}", self._trade_text(m, trade, ms, agg=False))]
        key = f"aggTrade|{raw}"
        if self.want(key):
            out.append((key, self._trade_text(m, trade, ms, agg=True)))
        return out

    # -- connection side -----------------------------------------------------------------------------
    def _key(self, conn: Connection, name: str) -> str | None:
        raw, _, suffix = name.partition("@")
        channel = STREAMS.get(suffix)
        if channel is None or raw.upper() not in self.markets:
            return None
        return f"{channel}|{raw.upper()}"

    def _subscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            key = self._key(conn, name)
            if key is not None:
                conn.keys.setdefault(key, name)
            conn.names.append(name)

    def open(self, conn: Connection, query: Mapping[str, str], now_us: int) -> list[str]:
        parts = [p for p in conn.path.split("/") if p]
        if parts and parts[0] in ("public", "market", "private"):
            conn.route = parts.pop(0)
        if parts and parts[0] == "stream":
            conn.combined = True
            self._subscribe(conn, [s for s in query.get("streams", "").split("/") if s])
        elif len(parts) > 1 and parts[0] == "ws":
            self._subscribe(conn, parts[1].split("/"))
        return []

    def message(self, conn: Connection, text: str, now_us: int) -> list[str]:
        try:
            request = orjson.loads(text)
            method, ident = request["method"], request.get("id")
            params = request.get("params", [])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return ['{"error":{"code":2,"msg":"Invalid request: request not valid JSON"},"id":null}']
        reply_id = orjson.dumps(ident).decode()
        if method == "SUBSCRIBE" and isinstance(params, list):
            self._subscribe(conn, [str(p) for p in params])
            return [f'{{"result":null,"id":{reply_id}}}']
        if method == "UNSUBSCRIBE" and isinstance(params, list):
            for name in params:
                key = self._key(conn, str(name))
                if key is not None and conn.keys.get(key) == name:
                    del conn.keys[key]
            return [f'{{"result":null,"id":{reply_id}}}']
        if method == "LIST_SUBSCRIPTIONS":
            names = orjson.dumps(conn.names).decode()
            return [f'{{"result":{names},"id":{reply_id}}}']
        return [f'{{"error":{{"code":2,"msg":"Invalid request: unknown method {method!s}"}},"id":{reply_id}}}']

    def render(self, conn: Connection, key: str | None, text: str) -> str:
        if key is not None and conn.combined:
            return f'{{"stream":"{conn.keys.get(key, "")}","data":{text}}}'
        return text

    def _depth_body(self, m: SymbolMarket, limit: int, now_us: int) -> str:
        bids = self._levels(m, m.book.top_bids(limit))
        asks = self._levels(m, m.book.top_asks(limit))
        return f'{{"lastUpdateId":{self.last_u[m.inst.raw]},"bids":[{bids}],"asks":[{asks}]}}'

    def rest(self, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str]:
        if path == self.depth_path:
            m = self.markets.get(query.get("symbol", ""))
            if m is None:
                return 400, '{"code":-1121,"msg":"Invalid symbol."}'
            try:
                limit = int(query.get("limit", "100"))
            except ValueError:
                return 400, '{"code":-1100,"msg":"Illegal characters found in parameter \'limit\'."}'
            return 200, self._depth_body(m, limit, now_us)
        return 404, '{"code":-1,"msg":"not simulated"}'

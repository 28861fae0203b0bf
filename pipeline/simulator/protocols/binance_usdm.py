"""Binance USD-M futures wire format: the 2026 routed paths (``/public`` carries ``@depth`` and
``@bookTicker``, ``/market`` carries ``@aggTrade``, ``@trade``, ``@markPrice`` and ``@forceOrder``; a
connection without a routed path only receives ``/public`` streams, silently, as documented),
``depthUpdate`` diffs chained by ``pu == previous u``, ``markPriceUpdate`` (funding) every second,
``forceOrder`` liquidations, and REST ``/fapi/v1/depth``, ``/fapi/v1/openInterest`` and
``/fapi/v1/premiumIndex``.

Sample diff (the capture's shape): ``{"e":"depthUpdate","E":1626992741037,"T":1626992741024,
"s":"SUSHIUSDT","U":600859599090,"u":600859600917,"pu":600859598061,"b":[["7.5040","813"]],"a":[]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pipeline.simulator.base import fixed
from pipeline.simulator.market import SymbolMarket, TradePrint
from pipeline.simulator.protocols.base import Connection, Out
from pipeline.simulator.protocols.binance import BinanceSpot

PUBLIC = frozenset({"depth", "bookTicker"})
FUNDING_INTERVAL_MS = 8 * 3600 * 1000


class BinanceUsdm(BinanceSpot):
    venue: ClassVar[str] = "binance_usdm"
    wire_dec: ClassVar[int | None] = None
    depth_path: ClassVar[str] = "/fapi/v1/depth"

    def _diff_text(self, m: SymbolMarket, first: int, last: int, prev: int, bids: str, asks: str, ms: int) -> str:
        return (
            f'{{"e":"depthUpdate","E":{ms},"T":{ms},"s":"{m.inst.raw}","U":{first},"u":{last},"pu":{prev},'
            f'"b":[{bids}],"a":[{asks}]}}'
        )

    def _book_ticker_text(self, m: SymbolMarket, u: int, ms: int) -> str:
        (bp, bq), (ap, aq) = m.book.best()
        return (
            f'{{"e":"bookTicker","u":{u},"s":"{m.inst.raw}","b":"{self.px(m, bp)}","B":"{self.qty(m, bq)}",'
            f'"a":"{self.px(m, ap)}","A":"{self.qty(m, aq)}","T":{ms},"E":{ms}}}'
        )

    def _trade_text(self, m: SymbolMarket, t: TradePrint, ms: int, agg: bool) -> str:
        maker = "false" if t.buy else "true"
        price, size = self.px(m, t.price), self.qty(m, t.size)
        if agg:
            body = f'"a":{t.trade_id},"p":"{price}","q":"{size}","f":{t.trade_id},"l":{t.trade_id}'
            return f'{{"e":"aggTrade","E":{ms},"s":"{m.inst.raw}",{body},"T":{ms},"m":{maker}}}'
        body = f'"t":{t.trade_id},"p":"{price}","q":"{size}","X":"MARKET"'
        return f'{{"e":"trade","E":{ms},"T":{ms},"s":"{m.inst.raw}",{body},"m":{maker}}}'

    def _mark(self, m: SymbolMarket) -> tuple[str, str, str]:
        mark = fixed(round(m.venue_price() * 10**8), 8)
        index = fixed(round(m.asset.price * m.scale * 10**8), 8)
        return mark, index, fixed(m.funding_rate_e8(), 8)

    def periodic(self, m: SymbolMarket, ts_us: int, second: int) -> Out:
        key = f"markPrice|{m.inst.raw}"
        if not self.want(key):
            return []
        ms = ts_us // 1000
        mark, index, rate = self._mark(m)
        next_funding = (ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
        text = (
            f'{{"e":"markPriceUpdate","E":{ms},"s":"{m.inst.raw}","p":"{mark}","i":"{index}","P":"{mark}",'
            f'"r":"{rate}","T":{next_funding}}}'
        )
        return [(key, text)]

    def liquidation(self, m: SymbolMarket, liq: TradePrint, ts_us: int) -> Out:
        key = f"forceOrder|{m.inst.raw}"
        if not self.want(key):
            return []
        ms = ts_us // 1000
        side = "BUY" if liq.buy else "SELL"
        px, q = self.px(m, liq.price), self.qty(m, liq.size)
        text = (
            f'{{"e":"forceOrder","E":{ms},"o":{{"s":"{m.inst.raw}","S":"{side}","o":"LIMIT","f":"IOC","q":"{q}",'
            f'"p":"{px}","ap":"{px}","X":"FILLED","l":"{q}","z":"{q}","T":{ms}}}}}'
        )
        return [(key, text)]

    def _key(self, conn: Connection, name: str) -> str | None:
        key = super()._key(conn, name)
        if key is None:
            return None
        public = key.partition("|")[0] in PUBLIC
        if (conn.route == "market" and public) or (conn.route in ("public", "") and not public):
            return None  # accepted, never delivered: the stream belongs to the other route
        return key

    def _depth_body(self, m: SymbolMarket, limit: int, now_us: int) -> str:
        ms = now_us // 1000
        bids = self._levels(m, m.book.top_bids(limit))
        asks = self._levels(m, m.book.top_asks(limit))
        # the next diff covers lastUpdateId (U <= lastUpdateId <= u), as Binance's sync rule expects
        last = self.last_u[m.inst.raw] + 1
        return f'{{"lastUpdateId":{last},"E":{ms},"T":{ms},"bids":[{bids}],"asks":[{asks}]}}'

    def rest(self, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str]:
        if path not in ("/fapi/v1/openInterest", "/fapi/v1/premiumIndex"):
            return super().rest(path, query, now_us)
        m = self.markets.get(query.get("symbol", ""))
        if m is None:
            return 400, '{"code":-1121,"msg":"Invalid symbol."}'
        ms = now_us // 1000
        if path == "/fapi/v1/openInterest":
            oi = fixed(m.open_interest, m.inst.size_dec)
            return 200, f'{{"openInterest":"{oi}","symbol":"{m.inst.raw}","time":{ms}}}'
        mark, index, rate = self._mark(m)
        next_funding = (ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
        return 200, (
            f'{{"symbol":"{m.inst.raw}","markPrice":"{mark}","indexPrice":"{index}","estimatedSettlePrice":"{mark}",'
            f'"lastFundingRate":"{rate}","interestRate":"0.00010000","nextFundingTime":{next_funding},"time":{ms}}}'
        )

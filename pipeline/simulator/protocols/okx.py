"""OKX v5 public wire format: ``op: subscribe/unsubscribe`` with one ack per argument, ``books``
(snapshot on subscribe, then updates chained by ``prevSeqId == previous seqId``, each with the CRC32
``checksum`` of the top 25 levels interleaved ``bid:size:ask:size`` as signed int32), ``trades``,
``tickers`` (every second), ``funding-rate`` (every 10 s), ``open-interest`` (every 3 s),
``liquidation-orders`` (per ``instType``), and the text ``ping``/``pong``.

Sample update: ``{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":
[["30261","4","0","1"]],"bids":[],"ts":"1652459225464","checksum":-914047754,"prevSeqId":123,
"seqId":125}]}``. Prices and sizes are sent without trailing zeros, as OKX does.
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import orjson

from pipeline.simulator.base import fixed, trimmed
from pipeline.simulator.market import Change, SymbolMarket, TradePrint
from pipeline.simulator.protocols.base import Connection, Out, Protocol

INST_CHANNELS = frozenset({"books", "trades", "tickers", "funding-rate", "open-interest"})
SWAP_ONLY = frozenset({"funding-rate", "open-interest"})
FUNDING_INTERVAL_MS = 8 * 3600 * 1000


def checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX book checksum: CRC32 of the top 25 levels interleaved, as a signed 32-bit integer."""
    parts: list[str] = []
    for i in range(25):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class Okx(Protocol):
    venue: ClassVar[str] = "okx"
    trim: ClassVar[bool] = True

    def __init__(self, markets: list[SymbolMarket]):
        super().__init__(markets)
        self.seq = {raw: 1_000_000 + m.rng.randrange(1_000_000) for raw, m in self.markets.items()}
        self.conn_ids = 0

    def price_text(self, m: SymbolMarket, ticks: int) -> str:
        return f'"{self.px(m, ticks)}"'

    def book_key(self, raw: str) -> str:
        return f"books|{raw}"

    def book_seq(self, raw: str) -> int | None:
        return self.seq[raw]

    @staticmethod
    def _arg(channel: str, raw: str) -> str:
        return f'{{"channel":"{channel}","instId":"{raw}"}}'

    def _top(self, m: SymbolMarket) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        px, qty = self._px[m.inst.raw], self._qty[m.inst.raw]
        bids = [(px(p), qty(q)) for p, q in m.book.top_bids(25)]
        asks = [(px(p), qty(q)) for p, q in m.book.top_asks(25)]
        return bids, asks

    @staticmethod
    def _rows(rows: list[tuple[str, str]]) -> str:
        return ",".join(f'["{p}","{q}","0","{1 if q != "0" else 0}"]' for p, q in rows)

    def _book_text(self, m: SymbolMarket, action: str, bids: str, asks: str, ms: int, check: int, prev: int) -> str:
        seq = self.seq[m.inst.raw]
        return (
            f'{{"arg":{self._arg("books", m.inst.raw)},"action":"{action}","data":[{{"asks":[{asks}],'
            f'"bids":[{bids}],"ts":"{ms}","checksum":{check},"prevSeqId":{prev},"seqId":{seq}}}]}}'
        )

    def book(self, m: SymbolMarket, changes: list[Change], ts_us: int, corrupt: bool) -> Out:
        raw = m.inst.raw
        prev = self.seq[raw]
        self.seq[raw] = prev + len(changes)
        key = f"books|{raw}"
        if not self.want(key):
            return []
        bids = self._rows([(self.px(m, p), self.qty(m, q)) for is_bid, p, q in changes if is_bid])
        asks = self._rows([(self.px(m, p), self.qty(m, q)) for is_bid, p, q in changes if not is_bid])
        check = checksum(*self._top(m))
        if corrupt:
            check = check + 1 if check < (1 << 31) - 1 else check - 1
        return [(key, self._book_text(m, "update", bids, asks, ts_us // 1000, check, prev))]

    def _trade_text(self, m: SymbolMarket, t: TradePrint, ms: int) -> str:
        side = "buy" if t.buy else "sell"
        raw = m.inst.raw
        return (
            f'{{"arg":{self._arg("trades", raw)},"data":[{{"instId":"{raw}","tradeId":"{t.trade_id}",'
            f'"px":"{self.px(m, t.price)}","sz":"{self.qty(m, t.size)}","side":"{side}","ts":"{ms}","count":"1"}}]}}'
        )

    def trade(self, m: SymbolMarket, trade: TradePrint, ts_us: int) -> Out:
        return [(f"trades|{m.inst.raw}", self._trade_text(m, trade, ts_us // 1000))]

    def _ticker_text(self, m: SymbolMarket, ms: int) -> str:
        (bp, bq), (ap, aq) = m.book.best()
        raw = m.inst.raw
        kind = "SWAP" if m.inst.perp else "SPOT"
        vol = self.qty(m, m.volume)
        vol_ccy = trimmed(m.quote_volume, m.inst.price_dec + m.inst.size_dec)
        last_size = self.qty(m, m.trades[-1].size) if m.trades else "0"
        return (
            f'{{"arg":{self._arg("tickers", raw)},"data":[{{"instType":"{kind}","instId":"{raw}",'
            f'"last":"{self.px(m, m.last_price)}","lastSz":"{last_size}","askPx":"{self.px(m, ap)}",'
            f'"askSz":"{self.qty(m, aq)}","bidPx":"{self.px(m, bp)}","bidSz":"{self.qty(m, bq)}",'
            f'"open24h":"{self.px(m, m.open_price)}","high24h":"{self.px(m, m.high)}","low24h":"{self.px(m, m.low)}",'
            f'"volCcy24h":"{vol_ccy}","vol24h":"{vol}","sodUtc0":"{self.px(m, m.open_price)}",'
            f'"sodUtc8":"{self.px(m, m.open_price)}","ts":"{ms}"}}]}}'
        )

    def periodic(self, m: SymbolMarket, ts_us: int, second: int) -> Out:
        raw, ms = m.inst.raw, ts_us // 1000
        out: Out = []
        if self.want(f"tickers|{raw}"):
            out.append((f"tickers|{raw}", self._ticker_text(m, ms)))
        if not m.inst.perp:
            return out
        if second % 10 == 0 and self.want(f"funding-rate|{raw}"):
            rate = trimmed(m.funding_rate_e8(), 8)
            funding_time = (ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
            out.append(
                (
                    f"funding-rate|{raw}",
                    (
                        f'{{"arg":{self._arg("funding-rate", raw)},"data":[{{"fundingRate":"{rate}","fundingTime":'
                        f'"{funding_time}","instId":"{raw}","instType":"SWAP","method":"current_period",'
                        f'"maxFundingRate":"0.0075","minFundingRate":"-0.0075","nextFundingRate":"",'
                        f'"nextFundingTime":"{funding_time + FUNDING_INTERVAL_MS}","premium":"{rate}",'
                        f'"settFundingRate":"{rate}","settState":"settled","ts":"{ms}"}}]}}'
                    ),
                )
            )
        if second % 3 == 0:
            m.step_open_interest()
        if second % 3 == 0 and self.want(f"open-interest|{raw}"):
            oi = m.open_interest
            oi_ccy = trimmed(round(oi * m.inst.lot_base * 10**8), 8)
            oi_usd = fixed(round(oi * m.inst.lot_base * m.venue_price() * 100), 2)
            out.append(
                (
                    f"open-interest|{raw}",
                    (
                        f'{{"arg":{self._arg("open-interest", raw)},"data":[{{"instId":"{raw}","instType":"SWAP",'
                        f'"oi":"{oi}","oiCcy":"{oi_ccy}","oiUsd":"{oi_usd}","ts":"{ms}"}}]}}'
                    ),
                )
            )
        return out

    def liquidation(self, m: SymbolMarket, liq: TradePrint, ts_us: int) -> Out:
        key = "liquidation-orders|SWAP"
        if not self.want(key):
            return []
        raw = m.inst.raw
        family = raw.removesuffix("-SWAP")
        side, pos = ("buy", "short") if liq.buy else ("sell", "long")
        text = (
            f'{{"arg":{{"channel":"liquidation-orders","instType":"SWAP"}},"data":[{{"details":[{{"bkLoss":"0",'
            f'"bkPx":"{self.px(m, liq.price)}","ccy":"","posSide":"{pos}","side":"{side}",'
            f'"sz":"{self.qty(m, liq.size)}","ts":"{ts_us // 1000}"}}],"instFamily":"{family}","instId":"{raw}",'
            f'"instType":"SWAP","uly":"{family}"}}]}}'
        )
        return [(key, text)]

    # -- connection side -----------------------------------------------------------------------------
    def open(self, conn: Connection, query: Any, now_us: int) -> list[str]:
        self.conn_ids += 1
        conn.state["conn_id"] = f"{self.conn_ids:08x}"
        return []

    def _snapshot(self, m: SymbolMarket, now_us: int) -> str:
        bids, asks = self._top(m)
        all_bids = [(self.px(m, p), self.qty(m, q)) for p, q in m.book.top_bids(400)]
        all_asks = [(self.px(m, p), self.qty(m, q)) for p, q in m.book.top_asks(400)]
        return self._book_text(
            m, "snapshot", self._rows(all_bids), self._rows(all_asks), now_us // 1000, checksum(bids, asks), -1
        )

    def _error(self, conn: Connection, ident: str, code: str, msg: str) -> str:
        head = f'"id":{ident},' if ident != "null" else ""
        return f'{{{head}"event":"error","code":"{code}","msg":"{msg}","connId":"{conn.state["conn_id"]}"}}'

    def message(self, conn: Connection, text: str, now_us: int) -> list[str]:
        if text == "ping":
            return ["pong"]
        try:
            request = orjson.loads(text)
            op, args = request["op"], request["args"]
            ident = orjson.dumps(request["id"]).decode() if "id" in request else "null"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [self._error(conn, "null", "60012", f"Invalid request: {text[:100]}")]
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return [self._error(conn, ident, "60012", f"Invalid request: {text[:100]}")]
        replies: list[str] = []
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            if channel == "liquidation-orders" and arg.get("instType") == "SWAP":
                key = "liquidation-orders|SWAP"
                arg_text = '{"channel":"liquidation-orders","instType":"SWAP"}'
                m = None
            else:
                raw = arg.get("instId") if isinstance(arg, dict) else None
                m = self.markets.get(raw) if isinstance(raw, str) else None
                if channel not in INST_CHANNELS or m is None or (channel in SWAP_ONLY and not m.inst.perp):
                    replies.append(
                        self._error(conn, ident, "60018", f"Wrong URL or channel:{channel},instId:{raw} doesn't exist.")
                    )
                    continue
                key = f"{channel}|{raw}"
                arg_text = self._arg(channel, m.inst.raw)
            head = f'"id":{ident},' if ident != "null" else ""
            replies.append(f'{{{head}"event":"{op}","arg":{arg_text},"connId":"{conn.state["conn_id"]}"}}')
            if op == "unsubscribe":
                conn.keys.pop(key, None)
                continue
            conn.keys[key] = channel
            if channel == "books" and m is not None:
                replies.append(self._snapshot(m, now_us))
        return replies

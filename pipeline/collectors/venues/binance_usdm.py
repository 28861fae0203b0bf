"""Binance USD-M perpetuals on the 2026 routed endpoints, with REST depth sync and open-interest polls.

``wss://fstream.binance.com/public`` carries the high-frequency streams (``@depth``,
``@bookTicker``), ``/market`` the regular ones (``@aggTrade``, ``@markPrice``, ``@forceOrder``); a
stream on the wrong route silently delivers nothing, so each route gets its own connections. Book
sync: drop diffs with ``u < lastUpdateId``, the first applied has ``U <= lastUpdateId <= u``, then
every diff's ``pu`` equals the previous ``u``. The parsers also read the older unrouted frames.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pipeline.collectors.base import ConnectionPlan, FrameError, FrameResult, RateLimit, RestRequest
from pipeline.collectors.bookstate import BookState
from pipeline.collectors.venues._common import dec, dict_of, get, loads, ms_to_us, symbol_ok, text
from pipeline.collectors.venues.binance import Binance, DepthDiff, split_pair
from pipeline.contracts import Funding, Liquidation, OpenInterest

logger = logging.getLogger(__name__)

FUTURES_QUOTES = ("USDT", "USDC", "BUSD")


class BinanceUsdm(Binance):
    """Binance USD-M futures (``binance_usdm``)."""

    exchange: ClassVar[str] = "binance_usdm"
    ws_url: ClassVar[str] = "wss://fstream.binance.com"
    rest_url: ClassVar[str] = "https://fapi.binance.com"
    rest_limit: ClassVar[RateLimit] = RateLimit(weight=2400, period_s=60.0)
    depth_path: ClassVar[str] = "/fapi/v1/depth"
    depth_weight: ClassVar[int] = 20  # request weight of limit=1000
    max_streams: ClassVar[int] = 200
    prev_field: ClassVar[str | None] = "pu"
    open_interest_path: ClassVar[str] = "/fapi/v1/openInterest"
    open_interest_every_s: ClassVar[float] = 30.0
    routes: ClassVar[dict[str, tuple[str, ...]]] = {
        "/public": ("depth@100ms", "bookTicker"),
        "/market": ("aggTrade", "markPrice@1s", "forceOrder"),
    }
    channels: ClassVar[dict[str, str]] = {
        **Binance.channels,
        "markPrice": "parse_mark_price",
        "markPriceUpdate": "parse_mark_price",
        "forceOrder": "parse_force_order",
    }

    @staticmethod
    def to_raw(symbol: str) -> str:
        """``BTC-USDT-PERP`` -> ``BTCUSDT``; ``BTC-USDT-250627`` -> ``BTCUSDT_250627``."""
        parts = symbol.split("-")
        raw = parts[0] + parts[1]
        if len(parts) > 2 and parts[2] != "PERP":
            raw += "_" + parts[2]
        return raw

    def symbol(self, raw: str) -> str:
        known = self._symbol_of.get(raw)
        if known is None:
            pair, _, expiry = raw.partition("_")
            base, quote = split_pair(pair, FUTURES_QUOTES)
            known = symbol_ok(f"{base}-{quote}-{expiry or 'PERP'}")
            self._symbol_of[raw] = known
        return known

    def plan(self) -> list[ConnectionPlan]:
        plans: list[ConnectionPlan] = []
        for route, suffixes in self.routes.items():
            groups = [(raw, [f"{raw.lower()}@{suffix}" for suffix in suffixes]) for raw in self._raw_of.values()]
            plans.extend(self._split(route, groups))
        return plans

    def chain(self, state: BookState, diff: DepthDiff) -> str:
        last = state.seq
        assert last is not None
        if state.first:
            if diff.last < last:
                return "drop"
            return "apply" if diff.first <= last <= diff.last else "stale"
        return "apply" if diff.prev == last else "gap"

    def polls(self) -> list[tuple[RestRequest, float]]:
        return [
            (
                RestRequest(
                    kind="poll",
                    symbol=symbol,
                    url=f"{self.rest_base}{self.open_interest_path}",
                    params=(("symbol", raw),),
                    weight=1,
                    reason="open_interest",
                ),
                self.open_interest_every_s,
            )
            for symbol, raw in self._raw_of.items()
        ]

    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        if request.kind == "snapshot":
            return self.parse_snapshot(request, body, ts_recv)
        if request.url.endswith(self.open_interest_path):
            return self.parse_open_interest(body, ts_recv)
        raise FrameError("unknown_channel", f"no handler for REST {request.url}")

    def parse_open_interest(self, body: bytes, ts_recv: int) -> FrameResult:
        """REST ``/fapi/v1/openInterest``::

        {"symbol":"BTCUSDT","openInterest":"10659.509","time":1589437530011}
        """
        message = dict_of(loads(body), "openInterest")
        raw = text(get(message, "symbol"), "symbol")
        record = OpenInterest(
            exchange=self.exchange,  # type: ignore[arg-type]
            symbol=self.symbol(raw),
            raw_symbol=raw,
            open_interest=dec(get(message, "openInterest"), "openInterest"),
            ts_event=ms_to_us(get(message, "time"), "time"),
            ts_recv=ts_recv,
        )
        return FrameResult(records=[record], stream=f"{raw.lower()}@openInterest")

    def parse_mark_price(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        """``<symbol>@markPrice@1s`` (``r`` funding rate, ``T`` next funding time)::

        {"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT","p":"11794.15000000",
         "i":"11784.62659091","P":"11784.25641265","r":"0.00038167","T":1562306400000}
        """
        raw = text(get(data, "s"), "s")
        result.records.append(
            Funding(
                exchange=self.exchange,  # type: ignore[arg-type]
                symbol=self.symbol(raw),
                raw_symbol=raw,
                rate=dec(get(data, "r"), "r"),
                ts_event=ms_to_us(get(data, "E"), "E"),
                ts_recv=ts_recv,
                mark_price=dec(get(data, "p"), "p"),
                index_price=dec(data["i"], "i") if "i" in data else None,
                next_funding_time=ms_to_us(get(data, "T"), "T"),
            )
        )

    def parse_force_order(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        """``<symbol>@forceOrder`` (price and quantity of the liquidation order)::

        {"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC",
         "q":"0.014","p":"9910","ap":"9910","X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}
        """
        order = dict_of(get(data, "o"), "o")
        raw = text(get(order, "s"), "s")
        side = text(get(order, "S"), "S").lower()
        if side not in ("buy", "sell"):
            raise FrameError("bad_type", f"S: unknown side {side!r}")
        result.records.append(
            Liquidation(
                exchange=self.exchange,  # type: ignore[arg-type]
                symbol=self.symbol(raw),
                raw_symbol=raw,
                side=side,  # type: ignore[arg-type]
                price=dec(get(order, "p"), "p"),
                size=dec(get(order, "q"), "q"),
                ts_event=ms_to_us(get(order, "T"), "T"),
                ts_recv=ts_recv,
            )
        )

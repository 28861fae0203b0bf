"""OKX v5 public websocket: books (snapshot + updates), trades, tickers (BBO), funding-rate,
open-interest and liquidation-orders, for spot, perpetual swaps and dated futures.

Book integrity: each update's ``prevSeqId`` must equal the last applied ``seqId`` (a keep-alive
update repeats the ``seqId``; after a venue-side reset ``seqId`` may be lower, ``prevSeqId`` still
chains), and when ``checksum`` is non-zero it must equal the CRC32 of the top 25 levels
(:func:`pipeline.collectors.checksums.okx_checksum`). A break resubscribes that one instrument.
Symbols: ``BTC-USDT`` (spot) and ``BTC-USD-220527`` (dated) are as sent; ``-SWAP`` becomes ``-PERP``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson

from pipeline.collectors.base import (
    ConnectionPlan,
    FrameError,
    FrameResult,
    KeepAlive,
    RateLimit,
    RestRequest,
    SubscriptionError,
    Venue,
)
from pipeline.collectors.book import L2Book
from pipeline.collectors.bookstate import BookState, publish_book, venue_bbo
from pipeline.collectors.checksums import okx_checksum
from pipeline.collectors.venues._common import (
    dec,
    dict_of,
    get,
    integer,
    levels,
    list_of,
    loads,
    ms_to_us,
    signed,
    symbol_ok,
    text,
)
from pipeline.contracts import Funding, Liquidation, OpenInterest, Trade

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], list[Any], dict[str, Any], int, FrameResult], None]


class Okx(Venue):
    """OKX v5 (``okx``)."""

    exchange: ClassVar[str] = "okx"
    ws_url: ClassVar[str] = "wss://ws.okx.com:8443/ws/v5/public"
    rest_url: ClassVar[str] = "https://www.okx.com"
    keepalive: ClassVar[KeepAlive] = KeepAlive(ping_frame="ping", interval_s=20.0, pong_timeout_s=10.0)
    rest_limit: ClassVar[RateLimit] = RateLimit(weight=20, period_s=2.0)
    max_args: ClassVar[int] = 200  # subscription args per connection
    spot_channels: ClassVar[tuple[str, ...]] = ("books", "trades", "tickers")
    swap_channels: ClassVar[tuple[str, ...]] = ("books", "trades", "tickers", "funding-rate", "open-interest")
    channels: ClassVar[dict[str, str]] = {
        "books": "parse_books",
        "trades": "parse_trades",
        "tickers": "parse_tickers",
        "funding-rate": "parse_funding_rate",
        "open-interest": "parse_open_interest",
        "liquidation-orders": "parse_liquidation_orders",
    }

    def __init__(self, symbols: Sequence[str], ws_url: str | None = None, rest_url: str | None = None):
        super().__init__(symbols, ws_url, rest_url)
        self._raw_of = {symbol: self.to_raw(symbol) for symbol in self.symbols}
        self._symbol_of = {raw: symbol for symbol, raw in self._raw_of.items()}
        self._books: dict[str, BookState] = {}
        self._dispatch: dict[str, Handler] = {key: getattr(self, name) for key, name in self.channels.items()}

    @staticmethod
    def to_raw(symbol: str) -> str:
        return symbol[: -len("-PERP")] + "-SWAP" if symbol.endswith("-PERP") else symbol

    def symbol(self, raw: str) -> str:
        known = self._symbol_of.get(raw)
        if known is None:
            known = symbol_ok(raw[: -len("-SWAP")] + "-PERP" if raw.endswith("-SWAP") else raw)
            self._symbol_of[raw] = known
        return known

    # -- connections ---------------------------------------------------------------------------
    def args_for(self, raw: str) -> list[dict[str, str]]:
        derivative = raw.endswith("-SWAP")
        return [{"channel": c, "instId": raw} for c in (self.swap_channels if derivative else self.spot_channels)]

    def plan(self) -> list[ConnectionPlan]:
        plans: list[ConnectionPlan] = []
        args: list[dict[str, str]] = []
        symbols: list[str] = []

        def flush(extra: list[dict[str, str]]) -> None:
            every = args + extra
            frame = orjson.dumps({"op": "subscribe", "args": every}).decode()
            streams = tuple(f"{a['channel']}:{a.get('instId') or a.get('instType')}" for a in every)
            plans.append(ConnectionPlan(f"okx-{len(plans)}", self.ws_base, (frame,), tuple(symbols), streams))

        for symbol, raw in self._raw_of.items():
            more = self.args_for(raw)
            if args and len(args) + len(more) > self.max_args:
                flush([])
                args, symbols = [], []
            args.extend(more)
            symbols.append(symbol)
        if args:
            swaps = any(raw.endswith("-SWAP") for raw in self._raw_of.values())
            flush([{"channel": "liquidation-orders", "instType": "SWAP"}] if swaps else [])
        return plans

    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        for symbol in plan.symbols:
            state = self._books.get(self._raw_of.get(symbol, symbol))
            if state is not None:
                state.reset(resync=state.synced or state.resync)
        return []

    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        raise FrameError("unknown_channel", "okx makes no REST requests")

    def resubscribe_frames(self, raw: str) -> list[str]:
        arg = {"channel": "books", "instId": raw}
        return [
            orjson.dumps({"op": "unsubscribe", "args": [arg]}).decode(),
            orjson.dumps({"op": "subscribe", "args": [arg]}).decode(),
        ]

    # -- frames --------------------------------------------------------------------------------
    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        if raw == "pong" or raw == b"pong":
            return FrameResult(control="pong")
        message = loads(raw)
        if not isinstance(message, dict):
            raise FrameError("bad_type", f"expected an object, got {type(message).__name__}")
        if "event" in message:
            event = message["event"]
            if event == "error":
                raise SubscriptionError(f"okx error {message.get('code')}: {message.get('msg')}")
            if event in ("subscribe", "unsubscribe"):
                return FrameResult(control="ack")
            if event in ("notice", "channel-conn-count", "login"):
                return FrameResult(control="info")
            raise FrameError("unknown_channel", f"unknown event {event!r}")
        arg = dict_of(get(message, "arg"), "arg")
        channel = text(get(arg, "channel"), "arg.channel")
        handler = self._dispatch.get(channel)
        if handler is None:
            raise FrameError("unknown_channel", f"unknown channel {channel!r}")
        data = list_of(get(message, "data"), "data")
        result = FrameResult(stream=f"{channel}:{arg.get('instId') or arg.get('instType')}")
        handler(message, data, arg, ts_recv, result)
        return result

    def parse_trades(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``trades`` (``side`` is the taker side)::

        {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"338476351",
         "px":"30230.2","sz":"0.001","side":"sell","ts":"1652459233099"}]}
        """
        for item in data:
            item = dict_of(item, "trade")
            raw = text(get(item, "instId"), "instId")
            side = get(item, "side")
            if side not in ("buy", "sell"):
                raise FrameError("bad_type", f"side: {side!r}")
            result.records.append(
                Trade(
                    exchange="okx",
                    symbol=self.symbol(raw),
                    raw_symbol=raw,
                    trade_id=str(integer(get(item, "tradeId"), "tradeId")),
                    price=dec(get(item, "px"), "px"),
                    size=dec(get(item, "sz"), "sz"),
                    side=side,
                    ts_event=ms_to_us(get(item, "ts"), "ts"),
                    ts_recv=ts_recv,
                )
            )

    def parse_tickers(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``tickers`` -> ``Bbo`` (skipped while a side is empty)::

        {"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT","instId":"BTC-USDT",
         "last":"30236","lastSz":"0.0002","askPx":"30228.7","askSz":"1.55896972","bidPx":"30228.6",
         "bidSz":"0.23393","open24h":"29700.4","high24h":"31073","low24h":"28020.3","ts":"1652459224956"}]}
        """
        for item in data:
            item = dict_of(item, "ticker")
            raw = text(get(item, "instId"), "instId")
            fields = [get(item, key) for key in ("bidPx", "bidSz", "askPx", "askSz")]
            if "" in fields:
                continue
            bid_px, bid_sz, ask_px, ask_sz = (dec(value, "ticker") for value in fields)
            result.records.append(
                venue_bbo(
                    "okx",
                    self.symbol(raw),
                    raw,
                    (bid_px, bid_sz),
                    (ask_px, ask_sz),
                    ms_to_us(get(item, "ts"), "ts"),
                    ts_recv,
                )
            )

    def parse_funding_rate(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``funding-rate`` (``fundingTime`` is the next settlement)::

        {"arg":{"channel":"funding-rate","instId":"BTC-USDT-SWAP"},"data":[{"fundingRate":"0.0001875",
         "fundingTime":"1700726400000","instId":"BTC-USDT-SWAP","instType":"SWAP","method":"current_period",
         "nextFundingRate":"","nextFundingTime":"1700755200000","ts":"1700724675402"}]}
        """
        for item in data:
            item = dict_of(item, "funding")
            raw = text(get(item, "instId"), "instId")
            result.records.append(
                Funding(
                    exchange="okx",
                    symbol=self.symbol(raw),
                    raw_symbol=raw,
                    rate=dec(get(item, "fundingRate"), "fundingRate"),
                    ts_event=ms_to_us(get(item, "ts"), "ts"),
                    ts_recv=ts_recv,
                    next_funding_time=ms_to_us(get(item, "fundingTime"), "fundingTime"),
                )
            )

    def parse_open_interest(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``open-interest`` (``oi`` in contracts, ``oiUsd`` when sent)::

        {"arg":{"channel":"open-interest","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP",
         "instId":"BTC-USDT-SWAP","oi":"2216113.01","oiCcy":"22161.1301","oiUsd":"1525934400","ts":"1700724675402"}]}
        """
        for item in data:
            item = dict_of(item, "open interest")
            raw = text(get(item, "instId"), "instId")
            value = item.get("oiUsd")
            result.records.append(
                OpenInterest(
                    exchange="okx",
                    symbol=self.symbol(raw),
                    raw_symbol=raw,
                    open_interest=dec(get(item, "oi"), "oi"),
                    ts_event=ms_to_us(get(item, "ts"), "ts"),
                    ts_recv=ts_recv,
                    open_interest_value=dec(value, "oiUsd") if value else None,
                )
            )

    def parse_liquidation_orders(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``liquidation-orders`` (instType-wide; kept for the configured instruments only)::

        {"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[{"details":[{"bkLoss":"0",
         "bkPx":"0.007831","ccy":"","posSide":"short","side":"buy","sz":"13","ts":"1692266434010"}],
         "instFamily":"IOST-USDT","instId":"IOST-USDT-SWAP","instType":"SWAP","uly":"IOST-USDT"}]}
        """
        for item in data:
            item = dict_of(item, "liquidation")
            raw = text(get(item, "instId"), "instId")
            if self._raw_of and raw not in self._symbol_of:
                continue
            for detail in list_of(get(item, "details"), "details"):
                detail = dict_of(detail, "detail")
                side = get(detail, "side")
                if side not in ("buy", "sell"):
                    raise FrameError("bad_type", f"side: {side!r}")
                result.records.append(
                    Liquidation(
                        exchange="okx",
                        symbol=self.symbol(raw),
                        raw_symbol=raw,
                        side=side,
                        price=dec(get(detail, "bkPx"), "bkPx"),
                        size=dec(get(detail, "sz"), "sz"),
                        ts_event=ms_to_us(get(detail, "ts"), "ts"),
                        ts_recv=ts_recv,
                    )
                )

    def parse_books(
        self, message: dict[str, Any], data: list[Any], arg: dict[str, Any], ts_recv: int, result: FrameResult
    ) -> None:
        """``books`` (400 levels; level = [price, size, deprecated, orders]; frames since 2022 also carry
        ``seqId``/``prevSeqId``, and ``checksum`` is 0 since OKX deprecated it)::

        {"arg":{"channel":"books","instId":"BTC-USD-220527"},"action":"update","data":[{"asks":[["30249.4","0","0","0"],
         ["30261","4","0","1"],["30310.3","19","0","1"]],"bids":[["30182.6","452","0","1"]],"ts":"1652459225464",
         "checksum":-914047754}]}
        """
        raw = text(get(arg, "instId"), "arg.instId")
        action = get(message, "action")
        if action not in ("snapshot", "update"):
            raise FrameError("bad_type", f"action: {action!r}")
        state = self._books.get(raw)
        if state is None:
            state = self._books[raw] = BookState(self.symbol(raw), raw, L2Book())
        for item in data:
            item = dict_of(item, "book")
            asks = levels(get(item, "asks"), "asks")
            bids = levels(get(item, "bids"), "bids")
            ts_event = ms_to_us(get(item, "ts"), "ts")
            checksum = signed(item.get("checksum", 0), "checksum")
            seq = signed(item["seqId"], "seqId") if "seqId" in item else None
            prev = signed(item["prevSeqId"], "prevSeqId") if "prevSeqId" in item else None
            snapshot = action == "snapshot"
            if not snapshot and state.synced and seq is not None and state.seq is not None and prev != state.seq:
                logger.warning("okx %s: seqId gap (prevSeqId %s, last %s)", raw, prev, state.seq)
                result.gaps += 1
                self._resync(state, result)
                return
            if not state.take(snapshot, bids, asks):
                continue  # waiting for the snapshot of a resubscription
            kind = "snapshot" if snapshot else "delta"
            if checksum and state.checksum(25, okx_checksum) != checksum:
                logger.warning("okx %s: checksum mismatch (%s)", raw, checksum)
                result.checksum_failures += 1
                self._resync(state, result)
                return
            state.seq = seq
            publish_book(
                "okx",
                state,
                kind,
                bids,
                asks,
                ts_event,
                ts_recv,
                result,
                seq_first=seq,
                seq_last=seq,
                prev_seq=prev if prev is not None and prev >= 0 else None,
                checksum=checksum or None,
            )

    def _resync(self, state: BookState, result: FrameResult) -> None:
        state.reset(resync=True)
        result.resyncs += 1
        result.resubscribe.extend(self.resubscribe_frames(state.raw))

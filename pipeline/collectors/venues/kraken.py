"""Kraken spot websocket: v2 for live data (book with CRC32, trade, ticker, ping/heartbeat) and v1
parsing (book with checksum ``c``, trade, ticker) so recorded v1 sessions replay.

Which API a venue instance *speaks* (URL, subscribe/resubscribe/ping frames) is its class:
:class:`Kraken` (``kraken`` in ``VENUES``) speaks v2 at ``wss://ws.kraken.com/v2``;
:class:`KrakenV1` speaks v1 at ``wss://ws.kraken.com``. Both *parse* both versions, telling them
apart by frame shape (v1 data frames are arrays, v2 frames are objects with ``channel`` or
``method``), so a v1 capture replays through either.

Book checksum (v1 and v2): CRC32 over the top 10 asks ascending then the top 10 bids descending,
price and quantity with ``.`` removed and leading zeros stripped (wire text; v2 numbers are read
with their JSON text kept). After each update the book is truncated to the subscribed depth. A
mismatch resubscribes that pair's book only. Symbols: ``XBT`` -> ``BTC``, ``XDG`` -> ``DOGE``,
``/`` -> ``-``.

v1 frames (events, book, trade, ticker; the v1 trade ids) are parsed by :mod:`pipeline.collectors.venues.kraken_v1`.
v2 trades carry ``trade_id``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
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
from pipeline.collectors.book import L2Book, Level
from pipeline.collectors.bookstate import BookState, publish_book, venue_bbo
from pipeline.collectors.checksums import kraken_side
from pipeline.collectors.venues._common import (
    dec,
    dict_of,
    get,
    integer,
    iso_to_us,
    list_of,
    symbol_ok,
    text,
)
from pipeline.collectors.venues.kraken_v1 import KrakenV1Frames
from pipeline.contracts import Trade

logger = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(float_hook=str)  # keep each JSON number's text (v2 sends numbers)
TO_COMMON = {"XBT": "BTC", "XDG": "DOGE"}
TO_V1 = {common: v1 for v1, common in TO_COMMON.items()}


def loads(raw: str | bytes) -> Any:
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise FrameError("bad_json", f"not JSON: {exc}") from None


class Kraken(KrakenV1Frames, Venue):
    """Kraken spot, speaking websocket v2 (``kraken``)."""

    exchange: ClassVar[str] = "kraken"
    api_version: ClassVar[str] = "v2"
    ws_url: ClassVar[str] = "wss://ws.kraken.com/v2"
    rest_url: ClassVar[str] = "https://api.kraken.com"
    keepalive: ClassVar[KeepAlive] = KeepAlive(ping_frame='{"method":"ping"}', interval_s=30.0, pong_timeout_s=10.0)
    rest_limit: ClassVar[RateLimit] = RateLimit(weight=1, period_s=1.0)
    book_depth: ClassVar[int] = 1000
    max_symbols: ClassVar[int] = 100  # pairs per connection
    channels_v2: ClassVar[dict[str, str]] = {
        "book": "parse_book_v2",
        "trade": "parse_trade_v2",
        "ticker": "parse_ticker_v2",
    }

    def __init__(self, symbols: Sequence[str], ws_url: str | None = None, rest_url: str | None = None):
        super().__init__(symbols, ws_url, rest_url)
        self._symbol_of: dict[str, str] = {}
        self._books: dict[str, BookState] = {}
        self._depth_of: dict[str, int] = {}  # v1 book channel name -> its depth
        # pair -> (top asks, their CRC, top bids, their checksum part, checksum): see _checksum
        self._crc_memo: dict[str, tuple[list[Level], int, list[Level], bytes, int]] = {}
        self._v1_trades: dict[tuple[str, str], dict[str, int]] = {}  # (connection, pair) -> key -> times seen
        self._v1 = {key: getattr(self, name) for key, name in self.channels_v1.items()}
        self._v2 = {key: getattr(self, name) for key, name in self.channels_v2.items()}

    # -- symbols -------------------------------------------------------------------------------
    def to_raw(self, symbol: str) -> str:
        base, _, quote = symbol.partition("-")
        if self.api_version == "v1":
            base, quote = TO_V1.get(base, base), TO_V1.get(quote, quote)
        return f"{base}/{quote}"

    def symbol(self, raw: str) -> str:
        known = self._symbol_of.get(raw)
        if known is None:
            base, slash, quote = raw.partition("/")
            if not slash:
                raise FrameError("schema", f"pair {raw!r} is not BASE/QUOTE")
            known = symbol_ok(f"{TO_COMMON.get(base, base)}-{TO_COMMON.get(quote, quote)}")
            self._symbol_of[raw] = known
        return known

    # -- frames we send ------------------------------------------------------------------------
    def subscribe_frames(self, pairs: list[str], channel: str, op: str = "subscribe") -> str:
        if self.api_version == "v1":
            subscription: dict[str, Any] = {"name": channel}
            if channel == "book":
                subscription["depth"] = self.book_depth
            return orjson.dumps({"event": op, "pair": pairs, "subscription": subscription}).decode()
        params: dict[str, Any] = {"channel": channel, "symbol": pairs}
        if channel == "book":
            params["depth"] = self.book_depth
        return orjson.dumps({"method": op, "params": params}).decode()

    def plan(self) -> list[ConnectionPlan]:
        plans: list[ConnectionPlan] = []
        for start in range(0, len(self.symbols), self.max_symbols):
            symbols = self.symbols[start : start + self.max_symbols]
            pairs = [self.to_raw(symbol) for symbol in symbols]
            frames = tuple(self.subscribe_frames(pairs, channel) for channel in ("book", "trade", "ticker"))
            streams = tuple(f"{c}:{p}" for c in ("book", "trade", "ticker") for p in pairs)
            plans.append(ConnectionPlan(f"kraken-{len(plans)}", self.ws_base, frames, tuple(symbols), streams))
        return plans

    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        for key in [key for key in self._v1_trades if key[0] == plan.name]:
            del self._v1_trades[key]  # v1 trade ids count repeats per connection
        for symbol in plan.symbols:
            state = self._books.get(self.to_raw(symbol))
            if state is not None:
                state.reset(resync=state.synced or state.resync)
        return []

    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        raise FrameError("unknown_channel", "kraken makes no REST requests")

    # -- frames we receive ---------------------------------------------------------------------
    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        message = loads(raw)
        if isinstance(message, list):
            return self._on_v1_data(message, ts_recv, plan)
        if not isinstance(message, dict):
            raise FrameError("bad_type", f"expected an object or array, got {type(message).__name__}")
        if "channel" in message:
            return self._on_v2_data(message, ts_recv)
        if "method" in message:
            return self._on_v2_response(message)
        if "event" in message:
            return self._on_v1_event(message)
        raise FrameError("unknown_channel", "frame has no channel, method or event")

    def _on_v2_response(self, message: dict[str, Any]) -> FrameResult:
        method = message["method"]
        if method == "pong":
            return FrameResult(control="pong")
        if method in ("subscribe", "unsubscribe"):
            if message.get("success") is not True:
                raise SubscriptionError(f"kraken: {message.get('error')} ({message.get('result')})")
            return FrameResult(control="ack")
        raise FrameError("unknown_channel", f"unknown method {method!r}")

    def _on_v2_data(self, message: dict[str, Any], ts_recv: int) -> FrameResult:
        channel = message["channel"]
        if channel == "heartbeat":
            return FrameResult(control="heartbeat")
        if channel == "status":
            return FrameResult(control="info")
        if not isinstance(channel, str) or channel not in self._v2:
            raise FrameError("unknown_channel", f"unknown channel {channel!r}")
        kind = get(message, "type")
        if kind not in ("snapshot", "update"):
            raise FrameError("bad_type", f"type: {kind!r}")
        result = FrameResult()
        for item in list_of(get(message, "data"), "data"):
            self._v2[channel](dict_of(item, "data item"), kind, ts_recv, result)
        return result

    # -- v2 ------------------------------------------------------------------------------------
    def parse_book_v2(self, item: dict[str, Any], kind: str, ts_recv: int, result: FrameResult) -> None:
        """v2 ``book`` (numbers keep their JSON text; ``checksum`` on snapshots and updates)::

        {"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,"qty":0.10000000}],
         "asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}
        """
        raw = text(get(item, "symbol"), "symbol")
        result.touch(f"book:{raw}")
        state = self._state(raw, self.book_depth)
        bids = [self._level_v2(level) for level in list_of(get(item, "bids"), "bids")]
        asks = [self._level_v2(level) for level in list_of(get(item, "asks"), "asks")]
        crc = integer(get(item, "checksum"), "checksum")
        ts_event = iso_to_us(item["timestamp"], "timestamp") if "timestamp" in item else ts_recv
        if not state.take(kind == "snapshot", bids, asks):
            return  # waiting for the snapshot of a resubscription
        if self._checksum_ok(state, crc, result):
            publish_book(
                "kraken",
                state,
                "snapshot" if kind == "snapshot" else "delta",
                bids,
                asks,
                ts_event,
                ts_recv,
                result,
                checksum=crc,
            )

    @staticmethod
    def _level_v2(level: Any) -> Level:
        level = dict_of(level, "level")
        return dec(get(level, "price"), "price"), dec(get(level, "qty"), "qty")

    def parse_trade_v2(self, item: dict[str, Any], kind: str, ts_recv: int, result: FrameResult) -> None:
        """v2 ``trade`` (``side`` is the taker side)::

        {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell","price":0.5117,"qty":40.0,
         "ord_type":"market","trade_id":4665906,"timestamp":"2023-09-25T07:49:37.708706Z"}]}
        """
        raw = text(get(item, "symbol"), "symbol")
        result.touch(f"trade:{raw}")
        side = get(item, "side")
        if side not in ("buy", "sell"):
            raise FrameError("bad_type", f"side: {side!r}")
        result.records.append(
            Trade(
                exchange="kraken",
                symbol=self.symbol(raw),
                raw_symbol=raw,
                trade_id=str(integer(get(item, "trade_id"), "trade_id")),
                price=dec(get(item, "price"), "price"),
                size=dec(get(item, "qty"), "qty"),
                side=side,
                ts_event=iso_to_us(get(item, "timestamp"), "timestamp"),
                ts_recv=ts_recv,
            )
        )

    def parse_ticker_v2(self, item: dict[str, Any], kind: str, ts_recv: int, result: FrameResult) -> None:
        """v2 ``ticker`` -> ``Bbo``::

        {"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,"bid_qty":740.0,
         "ask":0.10035,"ask_qty":740.0,"last":0.10035,"volume":997038.98383185,"vwap":0.10148,"low":0.09979,
         "high":0.10285,"change":-0.00017,"change_pct":-0.17}]}
        """
        raw = text(get(item, "symbol"), "symbol")
        result.touch(f"ticker:{raw}")
        ts_event = iso_to_us(item["timestamp"], "timestamp") if "timestamp" in item else ts_recv
        result.records.append(
            venue_bbo(
                "kraken",
                self.symbol(raw),
                raw,
                (dec(get(item, "bid"), "bid"), dec(get(item, "bid_qty"), "q")),
                (dec(get(item, "ask"), "ask"), dec(get(item, "ask_qty"), "q")),
                ts_event,
                ts_recv,
            )
        )

    # -- books ---------------------------------------------------------------------------------
    def _state(self, raw: str, depth: int) -> BookState:
        state = self._books.get(raw)
        if state is None:
            state = self._books[raw] = BookState(self.symbol(raw), raw, L2Book(depth))
        return state

    def _checksum(self, state: BookState) -> int:
        """:func:`~pipeline.collectors.checksums.kraken_checksum` of the book's top 10, memoised per
        side: the cached top lists of the book stay the same objects until a change reaches them, and
        CRC32 continues from the asks' CRC over the bids, so an update of one side re-formats that side
        only."""
        bids, asks = state.book.top(10)
        memo = self._crc_memo.get(state.raw)
        if memo is not None and memo[0] is asks:
            if memo[2] is bids:
                return memo[4]
            asks_crc, bids_part = memo[1], kraken_side(bids)
        else:
            asks_crc = zlib.crc32(kraken_side(asks))
            bids_part = memo[3] if memo is not None and memo[2] is bids else kraken_side(bids)
        value = zlib.crc32(bids_part, asks_crc)
        self._crc_memo[state.raw] = (asks, asks_crc, bids, bids_part, value)
        return value

    def _checksum_ok(self, state: BookState, expected: int, result: FrameResult) -> bool:
        if self._checksum(state) == expected:
            return True
        logger.warning("kraken %s: checksum mismatch (%s)", state.raw, expected)
        result.checksum_failures += 1
        result.resyncs += 1
        state.reset(resync=True)
        result.resubscribe.append(self.subscribe_frames([state.raw], "book", "unsubscribe"))
        result.resubscribe.append(self.subscribe_frames([state.raw], "book"))
        return False


class KrakenV1(Kraken):
    """Kraken spot speaking websocket v1 (recorded sessions; parsing is shared with v2)."""

    api_version: ClassVar[str] = "v1"
    ws_url: ClassVar[str] = "wss://ws.kraken.com"
    keepalive: ClassVar[KeepAlive] = KeepAlive(ping_frame='{"event":"ping"}', interval_s=30.0, pong_timeout_s=10.0)

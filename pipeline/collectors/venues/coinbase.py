"""Coinbase Advanced Trade market data websocket: level2, market_trades, ticker and heartbeats.

Every message carries ``sequence_num``, which rises by exactly one per message on a connection
across all channels; a jump is a gap on that connection and resubscribes ``level2`` for the
products whose books it carries (their next snapshot replaces the book). ``market_trades``
reports the maker's side (a ``SELL`` prints at the ask, verified on the real capture), so the
taker side is the opposite. Product ids (``BTC-USD``) are already ``BASE-QUOTE``.

Feed-metric streams are per subscription and product (``level2:BTC-USD``, ``market_trades:BTC-USD``,
``ticker:BTC-USD``), as the plan declares them: a frame counts under the streams of the products it
carried. ``heartbeats`` and ``subscriptions`` are per connection and count under the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
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
from pipeline.collectors.venues._common import (
    INT64_MAX,
    dec,
    dict_of,
    get,
    integer,
    iso_to_us,
    list_of,
    loads,
    plain_strings,
    symbol_ok,
    text,
)
from pipeline.contracts import Trade

logger = logging.getLogger(__name__)

Handler = Callable[[list[Any], int, int, int, ConnectionPlan, FrameResult], None]
TAKER = {"SELL": "buy", "BUY": "sell"}  # maker side -> taker side
LEVEL2 = "level2"  # the subscription whose messages arrive on channel ``l2_data``


class _Update(msgspec.Struct):
    side: str
    price_level: str
    new_quantity: str


class _Level2Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_Update]


class _Level2Frame(msgspec.Struct):
    """An ``l2_data`` message as typed decoding sees it (half the cost of ``orjson`` + dicts on the
    full-depth snapshots). Anything it does not describe goes through the generic path."""

    channel: str
    timestamp: str
    sequence_num: int
    events: list[_Level2Event]
    type: str | None = None  # set on error messages only


_LEVEL2 = msgspec.json.Decoder(_Level2Frame)


class Coinbase(Venue):
    """Coinbase Advanced Trade (``coinbase``)."""

    exchange: ClassVar[str] = "coinbase"
    ws_url: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    rest_url: ClassVar[str] = "https://api.coinbase.com"
    keepalive: ClassVar[KeepAlive] = KeepAlive(ping_frame=None, interval_s=20.0, pong_timeout_s=20.0)
    rest_limit: ClassVar[RateLimit] = RateLimit(weight=10, period_s=1.0)
    max_products: ClassVar[int] = 100  # products per connection
    subscriptions: ClassVar[tuple[str, ...]] = ("heartbeats", "level2", "market_trades", "ticker")
    data_subscriptions: ClassVar[tuple[str, ...]] = ("level2", "market_trades", "ticker")  # per product
    channels: ClassVar[dict[str, str]] = {
        "l2_data": "parse_level2",
        "market_trades": "parse_market_trades",
        "ticker": "parse_ticker",
        "ticker_batch": "parse_ticker",
    }
    control: ClassVar[dict[str, str]] = {
        "heartbeats": "heartbeat",
        "subscriptions": "ack",
        "candles": "info",
        "status": "info",
    }

    def __init__(self, symbols: Sequence[str], ws_url: str | None = None, rest_url: str | None = None):
        super().__init__(symbols, ws_url, rest_url)
        self._books: dict[str, BookState] = {}
        self._seq: dict[str, int] = {}  # connection name -> last sequence_num
        self._products: dict[str, set[str]] = {}  # connection name -> products with books on it
        self._dispatch: dict[str, Handler] = {key: getattr(self, name) for key, name in self.channels.items()}
        self._dispatch["ticker_batch"] = partial(self.parse_ticker, sub="ticker_batch")

    @staticmethod
    def symbol(raw: str) -> str:
        return symbol_ok(raw)

    def subscribe_frames(self, products: Sequence[str], channels: Sequence[str], op: str = "subscribe") -> list[str]:
        return [orjson.dumps({"type": op, "product_ids": list(products), "channel": c}).decode() for c in channels]

    def plan(self) -> list[ConnectionPlan]:
        plans: list[ConnectionPlan] = []
        for start in range(0, len(self.symbols), self.max_products):
            products = self.symbols[start : start + self.max_products]
            frames = tuple(self.subscribe_frames(products, self.subscriptions))
            streams = tuple(f"{c}:{p}" for c in self.data_subscriptions for p in products)
            plans.append(ConnectionPlan(f"coinbase-{len(plans)}", self.ws_base, frames, products, streams))
        return plans

    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        self._seq.pop(plan.name, None)
        for raw in set(plan.symbols) | self._products.pop(plan.name, set()):
            state = self._books.get(raw)
            if state is not None:
                state.reset(resync=state.synced or state.resync)
        return []

    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        raise FrameError("unknown_channel", "coinbase makes no REST requests")

    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        frame = _typed_level2(raw)
        if frame is not None:
            return self._on_level2(frame, ts_recv, plan)
        message = loads(raw)
        if not isinstance(message, dict):
            raise FrameError("bad_type", f"expected an object, got {type(message).__name__}")
        if message.get("type") == "error":
            raise SubscriptionError(f"coinbase error: {message.get('message')}")
        channel = text(get(message, "channel"), "channel")
        seq = integer(get(message, "sequence_num"), "sequence_num")
        events = list_of(get(message, "events"), "events")
        result = FrameResult()
        handler = self._dispatch.get(channel)
        if handler is None and channel not in self.control:
            raise FrameError("unknown_channel", f"unknown channel {channel!r}")
        ts_event = iso_to_us(get(message, "timestamp"), "timestamp")
        self._check_sequence(plan, seq, result)
        if handler is None:
            result.control = self.control[channel]
            return result
        handler(events, seq, ts_event, ts_recv, plan, result)
        return result

    def _on_level2(self, frame: _Level2Frame, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        """:meth:`on_frame` for a typed ``l2_data`` message: the same checks in the same order."""
        result = FrameResult()
        ts_event = iso_to_us(frame.timestamp, "timestamp")
        seq = frame.sequence_num
        self._check_sequence(plan, seq, result)
        for event in frame.events:
            updates = event.updates
            prices = [update.price_level for update in updates]
            sizes = [update.new_quantity for update in updates]
            levels = _split_sides([update.side for update in updates], prices, sizes)
            if levels is None:  # raise what the generic path raises
                levels = _level_updates_slow([msgspec.structs.asdict(update) for update in updates])
            self._take_level2(event.type, event.product_id, *levels, seq, ts_event, ts_recv, plan, result)
        return result

    def _check_sequence(self, plan: ConnectionPlan, seq: int, result: FrameResult) -> None:
        last = self._seq.get(plan.name)
        self._seq[plan.name] = seq
        if last is None or seq == last + 1:
            return
        logger.warning("coinbase %s: sequence_num gap %s -> %s", plan.name, last, seq)
        result.gaps += 1
        products = sorted(raw for raw in self._products.get(plan.name, ()) if self._books[raw].synced)
        for raw in products:
            self._books[raw].reset(resync=True)
            result.resyncs += 1
        if products:
            result.resubscribe.extend(self.subscribe_frames(products, ("level2",), "unsubscribe"))
            result.resubscribe.extend(self.subscribe_frames(products, ("level2",), "subscribe"))

    def parse_level2(
        self, events: list[Any], seq: int, ts_event: int, ts_recv: int, plan: ConnectionPlan, result: FrameResult
    ) -> None:
        """``l2_data`` (``snapshot`` replaces the book, ``update`` sets levels; ``offer`` is the ask side)::

        {"channel":"l2_data","timestamp":"2026-08-09T21:05:48.507547362Z","sequence_num":17,"events":[{"type":"update",
         "product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2026-08-09T21:05:48.407682Z",
         "price_level":"56948.21","new_quantity":"0.01321935"},{"side":"offer",
         "event_time":"2026-08-09T21:05:48.407682Z","price_level":"65106.54","new_quantity":"0"}]}]}
        """
        for event in events:
            event = dict_of(event, "event")
            kind = get(event, "type")
            raw = text(get(event, "product_id"), "product_id")
            bids, asks = level_updates(list_of(get(event, "updates"), "updates"))
            self._take_level2(kind, raw, bids, asks, seq, ts_event, ts_recv, plan, result)

    def _take_level2(
        self,
        kind: Any,
        raw: str,
        bids: list[Level],
        asks: list[Level],
        seq: int,
        ts_event: int,
        ts_recv: int,
        plan: ConnectionPlan,
        result: FrameResult,
    ) -> None:
        """Apply one ``l2_data`` event's levels to its product's book and publish the change."""
        state = self._books.get(raw)
        if state is None:
            state = self._books[raw] = BookState(self.symbol(raw), raw, L2Book())
        self._products.setdefault(plan.name, set()).add(raw)
        result.touch(f"{LEVEL2}:{raw}")
        if kind not in ("snapshot", "update"):
            raise FrameError("bad_type", f"l2_data event type {kind!r}")
        if not state.take(kind == "snapshot", bids, asks):
            return  # waiting for the snapshot of a resubscription
        publish_book(
            "coinbase",
            state,
            kind if kind == "snapshot" else "delta",
            bids,
            asks,
            ts_event,
            ts_recv,
            result,
            seq_first=seq,
            seq_last=seq,
        )

    def parse_market_trades(
        self, events: list[Any], seq: int, ts_event: int, ts_recv: int, plan: ConnectionPlan, result: FrameResult
    ) -> None:
        """``market_trades`` (``side`` is the maker side; the first message is a snapshot of recent trades)::

        {"channel":"market_trades","timestamp":"2026-08-09T21:05:48.228568804Z","sequence_num":0,
         "events":[{"type":"snapshot","trades":[{"product_id":"BTC-USD","trade_id":"1068572090",
         "price":"65083.67","size":"0.002186","time":"2026-08-09T21:05:42.514318Z","side":"SELL"}]}]}
        """
        for event in events:
            for trade in list_of(get(dict_of(event, "event"), "trades"), "trades"):
                trade = dict_of(trade, "trade")
                raw = text(get(trade, "product_id"), "product_id")
                result.touch(f"market_trades:{raw}")
                maker = get(trade, "side")
                side = TAKER.get(maker) if isinstance(maker, str) else None
                if side is None:
                    raise FrameError("bad_type", f"side: {trade.get('side')!r}")
                trade_id = text(get(trade, "trade_id"), "trade_id")
                if not trade_id:
                    raise FrameError("bad_type", "empty trade_id")
                result.records.append(
                    Trade(
                        exchange="coinbase",
                        symbol=self.symbol(raw),
                        raw_symbol=raw,
                        trade_id=trade_id,
                        price=dec(get(trade, "price"), "price"),
                        size=dec(get(trade, "size"), "size"),
                        side=side,  # type: ignore[arg-type]
                        ts_event=iso_to_us(get(trade, "time"), "time"),
                        ts_recv=ts_recv,
                    )
                )

    def parse_ticker(
        self,
        events: list[Any],
        seq: int,
        ts_event: int,
        ts_recv: int,
        plan: ConnectionPlan,
        result: FrameResult,
        sub: str = "ticker",
    ) -> None:
        """``ticker`` -> ``Bbo`` when the best bid/ask and their quantities are present::

        {"channel":"ticker","timestamp":"2026-08-09T21:06:00.467842467Z","sequence_num":527,"events":[{"type":"update",
         "tickers":[{"type":"ticker","product_id":"BTC-USD","price":"65083.67","best_bid":"65083.66",
         "best_ask":"65083.67","best_bid_quantity":"0.24999473","best_ask_quantity":"0.22885417"}]}]}
        """
        for event in events:
            for ticker in list_of(get(dict_of(event, "event"), "tickers"), "tickers"):
                ticker = dict_of(ticker, "ticker")
                raw = text(get(ticker, "product_id"), "product_id")
                result.touch(f"{sub}:{raw}")
                if "best_bid_quantity" not in ticker or "best_ask_quantity" not in ticker:
                    continue
                bid = (dec(get(ticker, "best_bid"), "best_bid"), dec(ticker["best_bid_quantity"], "best_bid_quantity"))
                ask = (dec(get(ticker, "best_ask"), "best_ask"), dec(ticker["best_ask_quantity"], "best_ask_quantity"))
                result.records.append(venue_bbo("coinbase", self.symbol(raw), raw, bid, ask, ts_event, ts_recv, seq))


def _typed_level2(raw: str | bytes) -> _Level2Frame | None:
    """An ``l2_data`` message that typed decoding fully describes, or ``None`` (then the generic
    path decodes it and reports whatever is wrong with it)."""
    if (b'"l2_data"' not in raw[:24]) if isinstance(raw, bytes) else ('"l2_data"' not in raw[:24]):
        return None
    try:
        frame = _LEVEL2.decode(raw)
    except (msgspec.DecodeError, UnicodeError):  # ValidationError is a DecodeError
        return None
    if frame.channel != "l2_data" or frame.type == "error" or not 0 <= frame.sequence_num <= INT64_MAX:
        return None
    return frame


def _split_sides(sides: list[Any], prices: list[Any], sizes: list[Any]) -> tuple[list[Level], list[Level]] | None:
    """Bid and ask levels when every price and size is a plain decimal string and every side is
    ``bid`` or ``offer``; ``None`` otherwise."""
    if not (plain_strings(prices) and plain_strings(sizes)):
        return None
    bids = [(p, q) for side, p, q in zip(sides, prices, sizes, strict=True) if side == "bid"]
    asks = [(p, q) for side, p, q in zip(sides, prices, sizes, strict=True) if side == "offer"]
    if len(bids) + len(asks) != len(sides):
        return None
    return bids, asks


def level_updates(updates: list[Any]) -> tuple[list[Level], list[Level]]:
    """``l2_data`` updates as exact bid and ask levels. Well-formed updates (objects with plain
    decimal strings) are checked column-wise in one pass; anything else goes through
    :func:`_level_updates_slow`, which raises the error of the first bad update."""
    if set(map(type, updates)) == {dict}:
        try:
            sides = [update["side"] for update in updates]
            prices = [update["price_level"] for update in updates]
            sizes = [update["new_quantity"] for update in updates]
        except KeyError:
            return _level_updates_slow(updates)
        levels = _split_sides(sides, prices, sizes)
        if levels is not None:
            return levels
    return _level_updates_slow(updates)


def _level_updates_slow(updates: list[Any]) -> tuple[list[Level], list[Level]]:
    bids: list[Level] = []
    asks: list[Level] = []
    for update in updates:
        side = get(update, "side")
        level = (dec(get(update, "price_level"), "price_level"), dec(get(update, "new_quantity"), "quantity"))
        if side == "bid":
            bids.append(level)
        elif side == "offer":
            asks.append(level)
        else:
            raise FrameError("bad_type", f"side: {side!r}")
    return bids, asks

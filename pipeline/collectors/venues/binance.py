"""Binance spot: combined streams (trade/aggTrade, diff depth, bookTicker) and REST depth sync.

Book sync follows Binance's "How to manage a local order book correctly": buffer diffs, fetch a
REST snapshot, drop diffs with ``u <= lastUpdateId``, the first applied diff has
``U <= lastUpdateId + 1 <= u``, every later one ``U == previous u + 1``. A break resyncs only that
symbol (one snapshot request). Streams go in the combined-stream URL, split across connections by
the per-connection stream limit; connections are recycled before Binance's 24 h cut-off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    dec,
    dict_of,
    get,
    integer,
    levels,
    loads,
    ms_to_us,
    split_pair,
    symbol_ok,
    text,
)
from pipeline.contracts import Record, Trade

logger = logging.getLogger(__name__)

QUOTES = tuple(
    sorted(
        (
            "USDT",
            "USDC",
            "FDUSD",
            "BUSD",
            "TUSD",
            "USDP",
            "DAI",
            "BTC",
            "ETH",
            "BNB",
            "EUR",
            "TRY",
            "BRL",
            "GBP",
            "AUD",
            "JPY",
            "UAH",
            "BIDR",
            "IDRT",
            "ZAR",
            "PLN",
            "RON",
            "ARS",
            "MXN",
            "COP",
            "CZK",
            "XRP",
            "DOGE",
            "TRX",
            "DOT",
            "EURI",
            "USD",
            "RUB",
            "NGN",
        ),
        key=len,
        reverse=True,
    )
)
MAX_BUFFER = 2000  # diffs buffered while waiting for a snapshot


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One parsed ``depthUpdate``."""

    raw: str
    first: int  # U
    last: int  # u
    prev: int | None  # pu (USD-M only)
    bids: list[Level]
    asks: list[Level]
    ts_event: int


class Binance(Venue):
    """Binance spot (``binance``)."""

    exchange: ClassVar[str] = "binance"
    ws_url: ClassVar[str] = "wss://stream.binance.com:9443"
    rest_url: ClassVar[str] = "https://api.binance.com"
    keepalive: ClassVar[KeepAlive] = KeepAlive(
        ping_frame=None, interval_s=20.0, pong_timeout_s=60.0, max_lifetime_s=23.5 * 3600
    )
    rest_limit: ClassVar[RateLimit] = RateLimit(weight=6000, period_s=60.0)
    depth_path: ClassVar[str] = "/api/v3/depth"
    depth_limit: ClassVar[int] = 1000
    depth_weight: ClassVar[int] = 50  # request weight of limit=1000
    max_streams: ClassVar[int] = 1024  # streams per connection
    max_url_chars: ClassVar[int] = 8000
    trade_stream: ClassVar[str] = "trade"
    prev_field: ClassVar[str | None] = None  # the diff's "previous u" field (USD-M: "pu")
    # stream suffix (combined streams) or event type "e" (raw streams) -> parser method name
    channels: ClassVar[dict[str, str]] = {
        "depth": "parse_depth",
        "depthUpdate": "parse_depth",
        "bookTicker": "parse_book_ticker",
        "trade": "parse_trade",
        "aggTrade": "parse_agg_trade",
    }
    ignored: ClassVar[frozenset[str]] = frozenset({"kline", "24hrTicker", "24hrMiniTicker", "avgPrice"})

    def __init__(self, symbols: Sequence[str], ws_url: str | None = None, rest_url: str | None = None):
        super().__init__(symbols, ws_url, rest_url)
        self._raw_of = {symbol: self.to_raw(symbol) for symbol in self.symbols}
        self._symbol_of = {raw: symbol for symbol, raw in self._raw_of.items()}
        self._books: dict[str, BookState] = {}
        self._pending: set[str] = set()  # raw symbols with a snapshot request outstanding
        self._dispatch: dict[str, Callable[[dict[str, Any], int, FrameResult], None]] = {
            key: getattr(self, name) for key, name in self.channels.items()
        }

    # -- symbols -------------------------------------------------------------------------------
    @staticmethod
    def to_raw(symbol: str) -> str:
        """``BTC-USDT`` -> ``BTCUSDT``."""
        return symbol.replace("-", "")

    def symbol(self, raw: str) -> str:
        known = self._symbol_of.get(raw)
        if known is None:
            base, quote = split_pair(raw, QUOTES)
            known = symbol_ok(f"{base}-{quote}")
            self._symbol_of[raw] = known
        return known

    # -- connections ---------------------------------------------------------------------------
    def symbol_streams(self, raw: str) -> list[str]:
        low = raw.lower()
        return [f"{low}@depth@100ms", f"{low}@bookTicker", f"{low}@{self.trade_stream}"]

    def plan(self) -> list[ConnectionPlan]:
        return self._split("", [(raw, self.symbol_streams(raw)) for raw in self._raw_of.values()])

    def _split(self, route: str, groups: list[tuple[str, list[str]]]) -> list[ConnectionPlan]:
        """Pack per-symbol stream groups into connections within the stream and URL limits."""
        plans: list[ConnectionPlan] = []
        symbols: list[str] = []
        streams: list[str] = []
        prefix = f"{self.ws_base}{route}/stream?streams="

        def flush() -> None:
            if streams:
                name = f"{self.exchange}{route.replace('/', '-')}-{len(plans)}"
                url = prefix + "/".join(streams)
                plans.append(ConnectionPlan(name, url, (), tuple(symbols), tuple(streams)))
                symbols.clear()
                streams.clear()

        for raw, group in groups:
            too_many = len(streams) + len(group) > self.max_streams
            too_long = len(prefix) + len("/".join(streams + group)) > self.max_url_chars
            if streams and (too_many or too_long):
                flush()
            symbols.append(self.symbol(raw))
            streams.extend(group)
        flush()
        return plans

    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        requests = []
        for symbol in plan.symbols:
            if not any("@depth" in stream for stream in plan.streams):
                continue
            state = self._state(self._raw_of.get(symbol, self.to_raw(symbol)))
            state.reset(resync=state.synced or state.resync)
            self._pending.discard(state.raw)
            requests.append(self._snapshot_request(state, "connect"))
        return requests

    def _snapshot_request(self, state: BookState, reason: str) -> RestRequest:
        self._pending.add(state.raw)
        return RestRequest(
            kind="snapshot",
            symbol=state.symbol,
            url=f"{self.rest_base}{self.depth_path}",
            params=(("symbol", state.raw), ("limit", str(self.depth_limit))),
            weight=self.depth_weight,
            reason=reason,
        )

    def _state(self, raw: str) -> BookState:
        state = self._books.get(raw)
        if state is None:
            state = self._books[raw] = BookState(self.symbol(raw), raw, L2Book())
        return state

    # -- frames --------------------------------------------------------------------------------
    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        message = loads(raw)
        if not isinstance(message, dict):
            raise FrameError("bad_type", f"expected an object, got {type(message).__name__}")
        if "stream" in message:
            stream = text(message["stream"], "stream")
            data = dict_of(get(message, "data"), "data")
            channel = stream.partition("@")[2].partition("@")[0].partition("_")[0]
        elif "e" in message:
            stream = channel = text(message["e"], "e")
            data = message
        elif "result" in message and "id" in message:
            return FrameResult(control="ack")
        elif "error" in message:
            raise SubscriptionError(str(message["error"]))
        else:
            raise FrameError("unknown_channel", "frame has neither 'stream' nor 'e'")
        result = FrameResult(stream=stream)
        handler = self._dispatch.get(channel)
        if handler is None:
            if channel in self.ignored:
                result.control = "info"
                return result
            raise FrameError("unknown_channel", f"unknown channel {channel!r}")
        handler(data, ts_recv, result)
        return result

    def parse_trade(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        """``<symbol>@trade`` (Binance's documented example; the captures carry ``aggTrade``)::

        {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,
         "m":true,"M":true}
        """
        result.records.append(self._trade(data, get(data, "t"), ts_recv))

    def parse_agg_trade(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        """``<symbol>@aggTrade`` (``m``: the buyer is the maker, so the taker sold)::

        {"e":"aggTrade","E":1633998523963,"s":"NKNUSDT","a":15683430,"p":"0.35280000",
         "q":"58.00000000","f":19862790,"l":19862790,"T":1633998523963,"m":false,"M":true}
        """
        result.records.append(self._trade(data, get(data, "a"), ts_recv))

    def _trade(self, data: dict[str, Any], trade_id: Any, ts_recv: int) -> Record:
        raw = text(get(data, "s"), "s")
        maker = get(data, "m")
        if not isinstance(maker, bool):
            raise FrameError("bad_type", "m: expected a boolean")
        return Trade(
            exchange=self.exchange,  # type: ignore[arg-type]
            symbol=self.symbol(raw),
            raw_symbol=raw,
            trade_id=str(integer(trade_id, "trade id")),
            price=dec(get(data, "p"), "p"),
            size=dec(get(data, "q"), "q"),
            side="sell" if maker else "buy",
            ts_event=ms_to_us(get(data, "T"), "T"),
            ts_recv=ts_recv,
        )

    def parse_book_ticker(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        """``<symbol>@bookTicker`` (spot has no event time: ``ts_event`` is the receipt time)::

        {"u":499869768,"s":"NKNUSDT","b":"0.35210000","B":"672.00000000","a":"0.35260000",
         "A":"3199.00000000"}
        """
        raw = text(get(data, "s"), "s")
        ts_event = ms_to_us(data["E"], "E") if "E" in data else ts_recv
        result.records.append(
            venue_bbo(
                self.exchange,
                self.symbol(raw),
                raw,
                (dec(get(data, "b"), "b"), dec(get(data, "B"), "B")),
                (dec(get(data, "a"), "a"), dec(get(data, "A"), "A")),
                ts_event,
                ts_recv,
                integer(get(data, "u"), "u"),
            )
        )

    def parse_depth_diff(self, data: dict[str, Any], ts_recv: int) -> DepthDiff:
        """``<symbol>@depth@100ms``::

        {"e":"depthUpdate","E":1633998512568,"s":"NKNUSDT","U":499869753,"u":499869754,
         "b":[["0.35170000","4265.00000000"]],"a":[["0.35290000","10968.00000000"]]}
        """
        prev = get(data, self.prev_field) if self.prev_field else None
        return DepthDiff(
            raw=text(get(data, "s"), "s"),
            first=integer(get(data, "U"), "U"),
            last=integer(get(data, "u"), "u"),
            prev=None if prev is None else integer(prev, "pu"),
            bids=levels(get(data, "b"), "b"),
            asks=levels(get(data, "a"), "a"),
            ts_event=ms_to_us(get(data, "E"), "E"),
        )

    def parse_depth(self, data: dict[str, Any], ts_recv: int, result: FrameResult) -> None:
        diff = self.parse_depth_diff(data, ts_recv)
        state = self._state(diff.raw)
        if not state.synced:
            self._buffer(state, diff, result)
            return
        self._apply(state, diff, ts_recv, result)

    def _buffer(self, state: BookState, diff: DepthDiff, result: FrameResult) -> None:
        state.buffer.append(diff)
        if len(state.buffer) > MAX_BUFFER:
            del state.buffer[: len(state.buffer) - MAX_BUFFER]
            result.requests.append(self._snapshot_request(state, "buffer_overflow"))
        elif state.raw not in self._pending:
            result.requests.append(self._snapshot_request(state, "unsynced"))

    def chain(self, state: BookState, diff: DepthDiff) -> str:
        """``drop`` (already in the snapshot), ``apply`` or ``gap`` for the next diff."""
        last = state.seq
        assert last is not None
        if state.first:
            if diff.last <= last:
                return "drop"
            return "apply" if diff.first <= last + 1 <= diff.last else "stale"
        return "apply" if diff.first == last + 1 else "gap"

    def _apply(self, state: BookState, diff: DepthDiff, ts_recv: int, result: FrameResult) -> None:
        verdict = self.chain(state, diff)
        if verdict == "drop":
            return
        if verdict != "apply":
            if verdict == "gap":
                result.gaps += 1
                logger.warning(
                    "%s %s: diff gap after %s (U=%s u=%s)",
                    self.exchange,
                    state.symbol,
                    state.seq,
                    diff.first,
                    diff.last,
                )
            result.resyncs += 1
            state.reset(resync=True)
            state.buffer.append(diff)
            result.requests.append(self._snapshot_request(state, verdict))
            return
        prev = state.seq if diff.prev is None else diff.prev
        state.book.apply(diff.bids, diff.asks)
        state.seq = diff.last
        state.first = False
        publish_book(
            self.exchange,
            state,
            "delta",
            diff.bids,
            diff.asks,
            diff.ts_event,
            ts_recv,
            result,
            seq_first=diff.first,
            seq_last=diff.last,
            prev_seq=prev,
        )

    # -- REST ----------------------------------------------------------------------------------
    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        if request.kind != "snapshot":
            raise FrameError("unknown_channel", f"{self.exchange} makes no {request.kind!r} request")
        return self.parse_snapshot(request, body, ts_recv)

    def parse_snapshot(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        """REST ``/api/v3/depth`` (``/fapi/v1/depth`` adds ``E``/``T``)::

        {"lastUpdateId":499869752,"bids":[["0.35210000","672.00000000"]],"asks":[["0.35260000","3199.00000000"]]}
        """
        message = dict_of(loads(body), "snapshot")
        raw = dict(request.params).get("symbol") or self.to_raw(request.symbol)
        last_id = integer(get(message, "lastUpdateId"), "lastUpdateId")
        bids = levels(get(message, "bids"), "bids")
        asks = levels(get(message, "asks"), "asks")
        ts_event = ms_to_us(message["E"], "E") if "E" in message else ts_recv
        result = FrameResult(stream=f"{raw.lower()}@depth@100ms")  # the depth stream the plan declares
        state = self._state(raw)
        self._pending.discard(raw)
        buffered = state.buffer[:]
        state.buffer.clear()
        state.take(True, bids, asks)
        state.seq = last_id
        state.first = True
        publish_book(self.exchange, state, "snapshot", bids, asks, ts_event, ts_recv, result, seq_last=last_id)
        for diff in buffered:
            if state.synced:
                self._apply(state, diff, ts_recv, result)
            else:
                state.buffer.append(diff)
        return result

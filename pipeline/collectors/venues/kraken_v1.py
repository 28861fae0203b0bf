"""Kraken spot websocket v1, parsed: events (heartbeat, pong, status, subscription status) and the data
frames of ``book-<depth>`` (snapshot ``as``/``bs``, updates ``a``/``b`` with checksum ``c``), ``trade`` and
``ticker``. :class:`KrakenV1Frames` is mixed into :class:`~pipeline.collectors.venues.kraken.Kraken`, so both
classes (v2 and v1 speakers) parse v1 frames and a recorded v1 session replays through either; the book
state, its checksum and the symbols stay with the venue class.

v1 trade ids: v1 trades carry no id, no sequence number and no frame counter (the channel id changes
with each subscription), only ``[price, volume, time, side, orderType, misc]`` with ``time`` in
microseconds. ``trade_id`` is ``<time>-<side>-<price>-<volume>`` for the first trade with that key on
a connection and ``<key>#<n>`` for the n-th repeat (n = 1, 2, ...), counted per connection and pair
across frames, so two genuinely identical fills (same microsecond, side, price and volume, in one
frame or in consecutive frames) get distinct ids. The count restarts when the connection
(re)connects, so a frame delivered again on a new connection maps to the ids it had, and the
runtime's trade dedup drops it; a genuinely identical fill on either side of a reconnect is the one
case that cannot be told apart from a re-delivery (it would be dropped as one). Ids are
deterministic: a capture replayed gives the same ids. Keys of past microseconds never recur (trades
arrive in time order), so each (connection, pair) remembers only its last ``V1_TRADE_KEYS`` keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pipeline.collectors.base import ConnectionPlan, FrameError, FrameResult, SubscriptionError
from pipeline.collectors.book import Level
from pipeline.collectors.bookstate import BookState, publish_book, venue_bbo
from pipeline.collectors.venues._common import (
    _PLAIN,
    MAX_CHARS,
    dec,
    dict_of,
    get,
    integer,
    levels,
    list_of,
    seconds_to_us,
    text,
)
from pipeline.contracts import Trade

V1_SIDES = {"b": "buy", "s": "sell"}
_plain = _PLAIN.fullmatch  # the decimal shape levels() checks
V1_TRADE_KEYS = 4096  # per (connection, pair): recent v1 trade keys and how often each was seen


class KrakenV1Frames:
    """The v1 half of a Kraken venue: its event and data frames. The venue class provides the book state
    (``_state``, ``_checksum_ok``), the symbols (``symbol``) and the per-connection trade-id memory."""

    book_depth: ClassVar[int]
    channels_v1: ClassVar[dict[str, str]] = {
        "book": "parse_book_v1",
        "trade": "parse_trade_v1",
        "ticker": "parse_ticker_v1",
    }
    _depth_of: dict[str, int]
    _v1_trades: dict[tuple[str, str], dict[str, int]]
    _v1: dict[str, Callable[..., None]]

    def symbol(self, raw: str) -> str:
        raise NotImplementedError

    def _state(self, raw: str, depth: int) -> BookState:
        raise NotImplementedError

    def _checksum_ok(self, state: BookState, expected: int, result: FrameResult) -> bool:
        raise NotImplementedError

    def _on_v1_event(self, message: dict[str, Any]) -> FrameResult:
        event = message["event"]
        if event == "heartbeat":
            return FrameResult(control="heartbeat")
        if event == "pong":
            return FrameResult(control="pong")
        if event == "systemStatus":
            return FrameResult(control="info")
        if event == "subscriptionStatus":
            if message.get("status") == "error":
                raise SubscriptionError(f"kraken: {message.get('errorMessage')} ({message.get('pair')})")
            return FrameResult(control="ack")
        raise FrameError("unknown_channel", f"unknown event {event!r}")

    def _on_v1_data(self, message: list[Any], ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        if len(message) < 4:
            raise FrameError("schema", "v1 data frame needs [channelID, payload, channelName, pair]")
        name = text(message[-2], "channelName")
        raw = text(message[-1], "pair")
        channel = name.partition("-")[0]
        handler = self._v1.get(channel)
        if handler is None:
            raise FrameError("unknown_channel", f"unknown channel {name!r}")
        result = FrameResult(stream=f"{channel}:{raw}")
        handler(message[1:-2], name, raw, ts_recv, result, plan)
        return result

    def parse_book_v1(
        self, payloads: list[Any], name: str, raw: str, ts_recv: int, result: FrameResult, plan: ConnectionPlan
    ) -> None:
        """v1 ``book-<depth>``: a snapshot (``as``/``bs``), or updates (``a``/``b``, checksum ``c``)::

        [3648,{"a":[["0.00757900","4.54778714","1618678133.924992"]],"c":"1029270263"},"book-1000","KSM/XBT"]
        """
        depth = self._depth_of.get(name)
        if depth is None:
            depth = integer(name.partition("-")[2] or self.book_depth, "depth")
            if len(self._depth_of) < 64:  # a few channel names ("book-1000"): parsed once each
                self._depth_of[name] = depth
        state = self._state(raw, depth)
        bids: list[Level] = []
        asks: list[Level] = []
        checksum: str | None = None
        snapshot = False
        ts_event = 0
        for payload in payloads:
            payload = dict_of(payload, "book payload")
            for key, rows in payload.items():
                if key == "c":
                    checksum = text(rows, "c")
                    continue
                if key not in ("a", "b", "as", "bs"):
                    raise FrameError("schema", f"unknown book key {key!r}")
                snapshot = snapshot or len(key) == 2
                side = asks if key[0] == "a" else bids
                row = rows[0] if type(rows) is list and len(rows) == 1 else None
                if (  # most updates carry one row of plain strings: levels() would return just this pair
                    type(row) is list
                    and len(row) >= 2
                    and type(price := row[0]) is str
                    and type(size := row[1]) is str
                    and len(price) <= MAX_CHARS
                    and len(size) <= MAX_CHARS
                    and _plain(price)
                    and _plain(size)
                ):
                    side.append((price, size))
                else:
                    side.extend(levels(rows, key))
                for row in rows:
                    if len(row) > 2:
                        ts_event = max(ts_event, seconds_to_us(row[2], "level time"))
        ts_event = ts_event or ts_recv
        if not state.take(snapshot, bids, asks):
            return  # waiting for the snapshot of a resubscription
        crc = None
        if checksum is not None:
            crc = integer(checksum, "c")
            if not self._checksum_ok(state, crc, result):
                return
        publish_book(
            "kraken", state, "snapshot" if snapshot else "delta", bids, asks, ts_event, ts_recv, result, checksum=crc
        )

    def parse_trade_v1(
        self, payloads: list[Any], name: str, raw: str, ts_recv: int, result: FrameResult, plan: ConnectionPlan
    ) -> None:
        """v1 ``trade`` ([price, volume, time, side, orderType, misc]; side is the taker side; ids as the
        module docstring says)::

        [993,[["354.55000000","1.25690315","1618678145.715785","b","m",""]],"trade","XMR/USD"]
        """
        rows = list_of(get(payloads, 0), "trades")
        seen = self._v1_trades.get((plan.name, raw)) or {}
        trades: list[Trade] = []
        counts: dict[str, int] = {}  # this frame's keys: merged into ``seen`` once the whole frame parsed
        for row in rows:
            row = list_of(row, "trade")
            price, size = dec(get(row, 0), "price"), dec(get(row, 1), "volume")
            time = text(get(row, 2), "time")
            marker = get(row, 3)
            side = V1_SIDES.get(marker) if isinstance(marker, str) else None
            if side is None:
                raise FrameError("bad_type", f"side: {marker!r}")
            trade_id = f"{time}-{marker}-{price}-{size}"
            repeat = seen.get(trade_id, 0) + counts.get(trade_id, 0)
            counts[trade_id] = counts.get(trade_id, 0) + 1
            trades.append(
                Trade(
                    exchange="kraken",
                    symbol=self.symbol(raw),
                    raw_symbol=raw,
                    trade_id=f"{trade_id}#{repeat}" if repeat else trade_id,
                    price=price,
                    size=size,
                    side=side,  # type: ignore[arg-type]
                    ts_event=seconds_to_us(time, "time"),
                    ts_recv=ts_recv,
                )
            )
        result.records.extend(trades)  # a bad frame raised above: it goes to the DLQ and counts nothing
        for key, count in counts.items():
            seen[key] = seen.get(key, 0) + count
        if counts:
            self._v1_trades[(plan.name, raw)] = seen
        while len(seen) > V1_TRADE_KEYS:
            del seen[next(iter(seen))]

    def parse_ticker_v1(
        self, payloads: list[Any], name: str, raw: str, ts_recv: int, result: FrameResult, plan: ConnectionPlan
    ) -> None:
        """v1 ``ticker`` -> ``Bbo`` (``a``/``b`` = [price, wholeLotVolume, lotVolume]; no event time)::

        [1668,{"a":["13.253900",35,"35.72892241"],"b":["13.232900",185,"185.18432037"],"c":["13.253900",
         "3.71672000"]},"ticker","WAVES/EUR"]
        """
        payload = dict_of(get(payloads, 0), "ticker")
        ask, bid = list_of(get(payload, "a"), "a"), list_of(get(payload, "b"), "b")
        result.records.append(
            venue_bbo(
                "kraken",
                self.symbol(raw),
                raw,
                (dec(get(bid, 0), "b"), dec(get(bid, 2), "b")),
                (dec(get(ask, 0), "a"), dec(get(ask, 2), "a")),
                ts_recv,
                ts_recv,
            )
        )

"""The per-symbol book state machine of a venue connection, beside :class:`~pipeline.collectors.book.L2Book`:
sync state (snapshot taken, last sequence, buffered deltas, pending resync), the checksum memo, and the
publishing of applied change sets as ``BookUpdate`` records (periodic full snapshots, chunked so no record
nears Kafka's 1 MB) followed by a ``Bbo`` whenever the top of the book changes (never for a crossed book).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.collectors.base import FrameResult
from pipeline.collectors.book import L2Book, Level
from pipeline.contracts import Bbo, BookUpdate

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY_US = 60_000_000  # a full book snapshot at least this often (receipt time)
SNAPSHOT_CHUNK = 5_000  # levels per side in one snapshot record


@dataclass(slots=True)
class BookState:
    """One symbol's book and its sync state on one venue."""

    symbol: str
    raw: str
    book: L2Book
    synced: bool = False
    seq: int | None = None  # last applied sequence number
    first: bool = True  # the next delta is the first after a snapshot
    resync: bool = False  # the next snapshot follows a resync
    buffer: list[Any] = field(default_factory=list)
    top: tuple[Level, Level] | None = None
    snapshot_us: int = 0  # ts_recv of the last published snapshot
    checksum_memo: tuple[list[Level], list[Level], int] | None = None  # top lists and their checksum

    def checksum(self, n: int, compute: Callable[[list[Level], list[Level]], int]) -> int:
        """``compute`` over the top ``n`` levels of each side; memoised while the book returns the same
        cached top lists (it builds new ones whenever a change reaches the top ``n``)."""
        bids, asks = self.book.top(n)
        memo = self.checksum_memo
        if memo is not None and memo[0] is bids and memo[1] is asks:
            return memo[2]
        value = compute(bids, asks)
        self.checksum_memo = (bids, asks, value)
        return value

    def take(self, snapshot: bool, bids: list[Level], asks: list[Level]) -> bool:
        """Apply a snapshot (replaces the book, which is then synced) or a delta; ``False`` for a
        delta that arrives before the snapshot of a resubscription (it is ignored)."""
        if snapshot:
            self.book.replace(bids, asks)
            self.synced = True
            self.top = None
            return True
        if not self.synced:
            return False
        self.book.apply(bids, asks)
        return True

    def reset(self, resync: bool) -> None:
        self.synced = False
        self.seq = None
        self.first = True
        self.resync = self.resync or resync
        self.buffer.clear()
        self.top = None
        self.book.clear()


def publish_book(
    exchange: str,
    state: BookState,
    kind: str,
    bids: list[Level],
    asks: list[Level],
    ts_event: int,
    ts_recv: int,
    result: FrameResult,
    seq_first: int | None = None,
    seq_last: int | None = None,
    prev_seq: int | None = None,
    checksum: int | None = None,
) -> None:
    """Append the ``BookUpdate`` of an applied change set, then a ``Bbo`` if the top changed.

    A snapshot is published from the maintained book (best first, truncated like the book); a
    full snapshot also follows a delta once ``SNAPSHOT_EVERY_US`` has passed since the last one.
    """
    seq = (seq_first, seq_last, prev_seq)
    if kind == "snapshot":
        resync, state.resync = state.resync, False
        _snapshot(exchange, state, ts_event, ts_recv, result, seq, checksum, resync)
    else:
        result.records.append(_update(exchange, state, "delta", bids, asks, ts_event, ts_recv, seq, checksum, False))
        if ts_recv - state.snapshot_us >= SNAPSHOT_EVERY_US:
            _snapshot(exchange, state, ts_event, ts_recv, result, seq, None, False)
    publish_top(exchange, state, ts_event, ts_recv, result, seq_last)


def _snapshot(
    exchange: str,
    state: BookState,
    ts_event: int,
    ts_recv: int,
    result: FrameResult,
    seq: tuple[int | None, int | None, int | None],
    checksum: int | None,
    resync: bool,
) -> None:
    """The whole book as a ``snapshot`` record; a deep book continues in ``delta`` records of at
    most ``SNAPSHOT_CHUNK`` levels a side (best levels first), so no record nears Kafka's 1 MB."""
    state.snapshot_us = ts_recv
    bids, asks = state.book.levels()
    kind = "snapshot"
    start = 0
    while True:
        chunk_bids, chunk_asks = bids[start : start + SNAPSHOT_CHUNK], asks[start : start + SNAPSHOT_CHUNK]
        result.records.append(
            _update(exchange, state, kind, chunk_bids, chunk_asks, ts_event, ts_recv, seq, checksum, resync)
        )
        start += SNAPSHOT_CHUNK
        if start >= len(bids) and start >= len(asks):
            return
        kind, checksum, resync = "delta", None, False


def _update(
    exchange: str,
    state: BookState,
    kind: str,
    bids: list[Level],
    asks: list[Level],
    ts_event: int,
    ts_recv: int,
    seq: tuple[int | None, int | None, int | None],
    checksum: int | None,
    resync: bool,
) -> BookUpdate:
    return BookUpdate(
        exchange=exchange,  # type: ignore[arg-type]
        symbol=state.symbol,
        raw_symbol=state.raw,
        kind=kind,  # type: ignore[arg-type]
        bids=bids,  # type: ignore[arg-type]
        asks=asks,  # type: ignore[arg-type]
        ts_event=ts_event,
        ts_recv=ts_recv,
        seq_first=seq[0],
        seq_last=seq[1],
        prev_seq=seq[2],
        checksum=checksum,
        resync=resync,
    )


def publish_top(
    exchange: str, state: BookState, ts_event: int, ts_recv: int, result: FrameResult, seq: int | None
) -> None:
    bid, ask = state.book.best()
    if bid is None or ask is None:
        return
    top = (bid, ask)
    if top == state.top:
        return
    if state.book.crossed():
        result.crossed += 1
        logger.warning("%s %s: crossed book (bid %s >= ask %s)", exchange, state.symbol, bid[0], ask[0])
        return
    state.top = top
    result.records.append(
        Bbo(
            exchange=exchange,  # type: ignore[arg-type]
            symbol=state.symbol,
            raw_symbol=state.raw,
            bid_price=bid[0],
            bid_size=bid[1],
            ask_price=ask[0],
            ask_size=ask[1],
            ts_event=ts_event,
            ts_recv=ts_recv,
            seq=seq,
        )
    )


def venue_bbo(
    exchange: str,
    symbol: str,
    raw: str,
    bid: Level,
    ask: Level,
    ts_event: int,
    ts_recv: int,
    seq: int | None = None,
) -> Bbo:
    """A ``Bbo`` from a venue's own top-of-book channel."""
    return Bbo(
        exchange=exchange,  # type: ignore[arg-type]
        symbol=symbol,
        raw_symbol=raw,
        bid_price=bid[0],
        bid_size=bid[1],
        ask_price=ask[0],
        ask_size=ask[1],
        ts_event=ts_event,
        ts_recv=ts_recv,
        seq=seq,
    )

"""What a simulated venue's wire protocol provides.

The engine side turns market events (book changes, trades, the per-second tick, liquidations,
heartbeats) into ``(key, text)`` frames; ``key`` (``channel|raw_symbol``) is what a connection
subscribes to. The connection side answers client frames (subscribe/unsubscribe acks, snapshots,
pongs), REST requests, and renders a frame for one connection (stream wrappers, sequence numbers).
Encoders keep the venue's own sequence state; they do no I/O.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.simulator.base import SEQ, Decimals
from pipeline.simulator.market import Change, SymbolMarket, TradePrint

Out = list[tuple[str, str]]


@dataclass(eq=False)
class Connection:
    """One client websocket as the venue sees it."""

    id: int
    path: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # subscribed key -> the client's name for it
    names: list[str] = field(default_factory=list)  # every stream name the client subscribed, in order
    seq: int = 0  # next per-connection sequence number (Coinbase)
    combined: bool = False  # Binance combined-stream envelope
    route: str = ""  # Binance USD-M routed path: "public", "market" or "" (legacy)
    state: dict[str, object] = field(default_factory=dict)


class Protocol(ABC):
    """One venue's wire format over the shared market model."""

    venue: ClassVar[str]
    book_depth: ClassVar[int | None] = None  # levels per side this venue keeps (None: the scenario's)
    trim: ClassVar[bool] = False  # numbers without trailing fractional zeros (OKX, Coinbase)
    wire_dec: ClassVar[int | None] = None  # every number padded to this many decimals (Binance spot)
    connection_seq: ClassVar[bool] = False  # messages numbered per connection: a lost one is a skipped number

    def __init__(self, markets: Sequence[SymbolMarket]):
        self.markets: dict[str, SymbolMarket] = {m.inst.raw: m for m in markets}
        self.want: Callable[[str], bool] = lambda key: True  # skip encoding frames nobody subscribed to
        self._px = {m.inst.raw: Decimals(m.inst.price_dec, self.trim, self.wire_dec) for m in markets}
        self._qty = {m.inst.raw: Decimals(m.inst.size_dec, self.trim, self.wire_dec) for m in markets}

    def px(self, m: SymbolMarket, ticks: int) -> str:
        """A price (ticks) as this venue writes it."""
        return self._px[m.inst.raw](ticks)

    def qty(self, m: SymbolMarket, lots: int) -> str:
        """A size (lots) as this venue writes it."""
        return self._qty[m.inst.raw](lots)

    # -- engine side -------------------------------------------------------------------------------
    @abstractmethod
    def book_key(self, raw: str) -> str:
        """The key of the symbol's book channel."""

    def book_seq(self, raw: str) -> int | None:
        """The venue's last book sequence number of a symbol (None: the venue numbers no books)."""
        return None

    @abstractmethod
    def book(self, m: SymbolMarket, changes: list[Change], ts_us: int, corrupt: bool) -> Out:
        """Frames for one book change set (``corrupt``: send a wrong checksum)."""

    @abstractmethod
    def trade(self, m: SymbolMarket, trade: TradePrint, ts_us: int) -> Out:
        """Frames for one trade; the first is on the symbol's trade channel."""

    def periodic(self, m: SymbolMarket, ts_us: int, second: int) -> Out:
        """Frames due every simulated second (tickers, funding, open interest)."""
        return []

    def liquidation(self, m: SymbolMarket, liq: TradePrint, ts_us: int) -> Out:
        return []

    def heartbeat(self, ts_us: int, second: int) -> Out:
        return []

    def malformed(self, m: SymbolMarket, rng: random.Random, ts_us: int) -> Out:
        """A frame that breaks the protocol, on the symbol's trade channel (never a real trade)."""
        key, text = self.trade(m, TradePrint(0, m.last_price, 1, True), ts_us)[0]
        choice = rng.randrange(3)
        if choice == 0:
            bad = text[: max(1, len(text) // 2)]
        elif choice == 1:
            bad = "\x7f<html>502 Bad Gateway</html>"
        else:
            bad = text.replace(self.price_text(m, m.last_price), "null", 1)
        return [(key, bad)]

    @abstractmethod
    def price_text(self, m: SymbolMarket, ticks: int) -> str:
        """A price as it appears in this venue's frames (with quotes when it is a JSON string)."""

    # -- connection side ---------------------------------------------------------------------------
    def open(self, conn: Connection, query: Mapping[str, str], now_us: int) -> list[str]:
        """A client connected to ``conn.path``; frames to send first."""
        return []

    @abstractmethod
    def message(self, conn: Connection, text: str, now_us: int) -> list[str]:
        """A client frame; returns the replies (acks, snapshots, pongs, errors) in order."""

    def rest(self, path: str, query: Mapping[str, str], now_us: int) -> tuple[int, str]:
        return 404, '{"error":"not found"}'

    def render(self, conn: Connection, key: str | None, text: str) -> str:
        """The text one connection receives for a frame (``key`` None: a reply to that client)."""
        if SEQ in text:
            text = text.replace(SEQ, str(conn.seq), 1)
            conn.seq += 1
        return text

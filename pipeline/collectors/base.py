"""Collector contract: what a venue module provides and what the connection runtime does with it.

A venue module (``venues/<venue>.py``) knows one exchange's protocol and does no I/O: it plans
connections, builds subscribe frames, parses each inbound frame into contract records, keeps the
order books of its symbols (snapshot/delta sync, sequence and checksum checks) and says when a
symbol needs a REST snapshot. The runtime knows no venue: it connects, subscribes, keeps the
connection alive, reconnects with capped jittered backoff, rate-limits snapshot requests, dedups
trades, produces records, publishes dead letters and counts feed metrics.

Exceptions: :class:`CollectorError` is the root; :class:`FrameError` (a frame that cannot be
turned into records: it goes to ``ops.dlq.v1`` with its ``reason``) and :class:`SubscriptionError`
(the venue rejected a subscription) derive from it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.contracts import Bbo, BookUpdate, Funding, Liquidation, OpenInterest, Record, Trade, topic_for

TOPIC_OF: dict[type[Record], str] = {
    record_type: topic_for(record_type).name
    for record_type in (Trade, BookUpdate, Bbo, Funding, OpenInterest, Liquidation)
}  # the records a venue produces and their topics (the contracts'), looked up once per record


class CollectorError(Exception):
    """Root of the collector errors."""


class FrameError(CollectorError):
    """A frame that cannot be processed; ``reason`` is a short DLQ reason (bad_json, missing_field,
    bad_type, unknown_channel, schema)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SubscriptionError(CollectorError):
    """The venue rejected a subscription (its error frame is the message)."""


@dataclass(frozen=True)
class ConnectionPlan:
    """One websocket connection: where, what to send after connecting, what it carries."""

    name: str
    url: str
    subscribe: tuple[str, ...]
    symbols: tuple[str, ...]
    streams: tuple[str, ...]


@dataclass(frozen=True)
class RestRequest:
    """A REST call the runtime makes for a venue (depth snapshot or a poll), costing ``weight``."""

    kind: str  # "snapshot" or "poll"
    symbol: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    reason: str = ""


@dataclass(frozen=True)
class KeepAlive:
    """How a venue connection stays alive and is known dead."""

    ping_frame: str | None  # application-level ping text; None: websocket protocol pings only
    interval_s: float
    pong_timeout_s: float
    max_lifetime_s: float | None = None  # reconnect proactively before the venue's hard limit


@dataclass(frozen=True)
class RateLimit:
    """REST budget: ``weight`` units per ``period_s`` seconds."""

    weight: int
    period_s: float


@dataclass
class FrameResult:
    """What one inbound frame (or REST body) produced."""

    records: list[Record] = field(default_factory=list)
    requests: list[RestRequest] = field(default_factory=list)
    stream: str | None = None  # the stream the frame belongs to (for feed metrics)
    control: str | None = None  # "ack", "pong", "heartbeat", "info" for non-data frames
    gaps: int = 0
    resyncs: int = 0
    checksum_failures: int = 0
    # Added (additive): frames to send on the connection the frame came from, in order, to resync
    # books by resubscribing (OKX, Kraken, Coinbase); and books found crossed (no Bbo published).
    resubscribe: list[str] = field(default_factory=list)
    crossed: int = 0
    # Added (additive): further streams a frame carried data for when it spans several symbols (a
    # Coinbase ``ticker``/``market_trades`` batch, a Kraken v2 ``data`` list); each of them counts the
    # frame as a message and is fresh, so a stall of one symbol shows in that symbol's stream only.
    more_streams: tuple[str, ...] = ()

    def touch(self, stream: str) -> None:
        """Record that the frame carried data for ``stream`` (the first such stream is ``stream``)."""
        if self.stream is None:
            self.stream = stream
        elif stream != self.stream and stream not in self.more_streams:
            self.more_streams = (*self.more_streams, stream)


class Venue(ABC):
    """One exchange's protocol. Stateful per collector process (books, sequence trackers)."""

    exchange: ClassVar[str]
    ws_url: ClassVar[str]
    rest_url: ClassVar[str]
    keepalive: ClassVar[KeepAlive]
    rest_limit: ClassVar[RateLimit]

    def __init__(self, symbols: Sequence[str], ws_url: str | None = None, rest_url: str | None = None):
        self.symbols = tuple(symbols)
        self.ws_base = ws_url or self.ws_url
        self.rest_base = rest_url or self.rest_url

    @abstractmethod
    def plan(self) -> list[ConnectionPlan]:
        """Connections for the configured symbols, split by the venue's per-connection limits."""

    @abstractmethod
    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        """A connection (re)opened: reset its sequence state; returns snapshot requests to make."""

    @abstractmethod
    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        """Parse one inbound frame; raises :class:`FrameError` or :class:`SubscriptionError`."""

    @abstractmethod
    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        """Handle the body of a REST response the venue asked for."""

    def polls(self) -> list[tuple[RestRequest, float]]:
        """REST polls to repeat every N seconds (e.g. open interest); none by default."""
        return []

"""Typed records, one per topic value (msgspec Structs).

Field rules (DESIGN.md): ``exchange`` is a lower-case venue id, ``symbol`` is ``BASE-QUOTE`` (plus
``-PERP`` for perpetuals), ``raw_symbol`` is the venue's spelling, prices and sizes are decimal
strings exactly as the venue sent them, times are integer epoch microseconds (``ts_event`` venue
time, ``ts_recv`` local receipt).

Evolution follows msgspec's schema-evolution rules: a new field gets a default and goes last, a
field's type never changes; a breaking change is a new topic version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
SYMBOL_PATTERN = r"^[A-Z0-9]+-[A-Z0-9]+(-[A-Z0-9]+)*$"

Decimal = Annotated[str, msgspec.Meta(pattern=DECIMAL_PATTERN, description="exact decimal string")]
Micros = Annotated[int, msgspec.Meta(ge=0, description="epoch microseconds")]
DurationMicros = Annotated[int, msgspec.Meta(ge=0, description="duration in microseconds")]
Exchange = Literal["binance", "binance_usdm", "okx", "coinbase", "kraken"]
Symbol = Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN, description="normalised BASE-QUOTE[-PERP]")]
Side = Literal["buy", "sell"]
Level = tuple[Decimal, Decimal]
Severity = Literal["P1", "P2", "P3", "P4"]


class Record(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """Base of every topic value."""


class Trade(Record, frozen=True):
    """One trade; ``side`` is the taker side."""

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    trade_id: str
    price: Decimal
    size: Decimal
    side: Side
    ts_event: Micros
    ts_recv: Micros


class BatchTrade(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """One trade inside a :class:`TradeBatch`: the fields of :class:`Trade` that vary per trade."""

    trade_id: str
    price: Decimal
    size: Decimal
    side: Side
    ts_event: Micros
    ts_recv: Micros


class TradeBatch(Record, frozen=True):
    """Trades of one market the collector published together, in their ``md.trades.v1`` order.

    Every trade on ``md.trades.v1`` is in exactly one batch on ``md.trade_batches.v1`` (same key, same
    partition count, after the same dedup); a batch holds the trades that were waiting together in the
    collector's output queue (one venue frame's trades or more under load), so batches grow with the
    load and add no latency when idle. For consumers that pay per record (Faust agents).
    """

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    trades: Annotated[list[BatchTrade], msgspec.Meta(min_length=1)]

    @classmethod
    def of(cls, trades: Sequence[Trade]) -> TradeBatch:
        """The batch of ``trades`` (one market's, in order; the market is the first trade's)."""
        first = trades[0]
        return cls(
            exchange=first.exchange, symbol=first.symbol, raw_symbol=first.raw_symbol,
            trades=[BatchTrade(trade_id=t.trade_id, price=t.price, size=t.size, side=t.side, ts_event=t.ts_event,
                               ts_recv=t.ts_recv) for t in trades],
        )  # fmt: skip

    def trade(self, index: int) -> Trade:
        """The ``md.trades.v1`` form of the batch's ``index``-th trade."""
        t = self.trades[index]
        return Trade(
            exchange=self.exchange, symbol=self.symbol, raw_symbol=self.raw_symbol, trade_id=t.trade_id,
            price=t.price, size=t.size, side=t.side, ts_event=t.ts_event, ts_recv=t.ts_recv,
        )  # fmt: skip

    def unbatched(self) -> list[Trade]:
        """Every trade of the batch in its ``md.trades.v1`` form, in order."""
        return [self.trade(index) for index in range(len(self.trades))]


class BookUpdate(Record, frozen=True):
    """One L2 change set. A ``snapshot`` replaces the book; a ``delta`` sets levels (size 0 removes).

    ``seq_first``/``seq_last`` are the venue's sequence range of this change set (``U``/``u`` on
    Binance, ``seqId`` on OKX, ``sequence_num`` on Coinbase), ``prev_seq`` the sequence the venue says
    precedes it (``pu``/``prevSeqId``); ``resync`` marks the snapshot published after a resync.
    """

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    kind: Literal["snapshot", "delta"]
    bids: list[Level]
    asks: list[Level]
    ts_event: Micros
    ts_recv: Micros
    seq_first: int | None = None
    seq_last: int | None = None
    prev_seq: int | None = None
    checksum: int | None = None
    resync: bool = False


class Bbo(Record, frozen=True):
    """Top of book after a change (from the maintained book or the venue's BBO channel)."""

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal
    ts_event: Micros
    ts_recv: Micros
    seq: int | None = None


class Funding(Record, frozen=True):
    """A funding-rate observation of a perpetual."""

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    rate: Decimal
    ts_event: Micros
    ts_recv: Micros
    mark_price: Decimal | None = None
    index_price: Decimal | None = None
    next_funding_time: Micros | None = None


class OpenInterest(Record, frozen=True):
    """An open-interest observation, in contracts or base units as the venue reports it."""

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    open_interest: Decimal
    ts_event: Micros
    ts_recv: Micros
    open_interest_value: Decimal | None = None


class Liquidation(Record, frozen=True):
    """A forced liquidation order; ``side`` is the side of the liquidation order."""

    exchange: Exchange
    symbol: Symbol
    raw_symbol: str
    side: Side
    price: Decimal
    size: Decimal
    ts_event: Micros
    ts_recv: Micros
    order_id: str | None = None


class Bar(Record, frozen=True):
    """One closed OHLCV bar over ``[window_start, window_end)`` in event time.

    ``vwap`` is ``quote_volume / volume`` rounded half-even to 12 decimal places; every other
    price and volume is exact. Book metrics come from ``md.bbo.v1`` in the same window and are
    ``None`` when no BBO arrived.
    """

    exchange: Exchange
    symbol: Symbol
    interval: Literal["1s", "1m"]
    window_start: Micros
    window_end: Micros
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    vwap: Decimal
    trade_count: Annotated[int, msgspec.Meta(ge=0)]
    buy_volume: Decimal
    sell_volume: Decimal
    first_trade_id: str
    last_trade_id: str
    spread_mean_bps: float | None = None
    spread_max_bps: float | None = None
    mid_change_bps: float | None = None
    crossed_us: DurationMicros | None = None


class FeedMetrics(Record, frozen=True):
    """Feed health of one venue stream over ``[ts_event - interval_us, ts_event)``.

    ``source`` says who measured it: the collector (wire-level counts) or the aggregator (derived
    health and the 0-100 ``health_score``).
    """

    exchange: Exchange
    stream: str
    source: Literal["collector", "aggregator"]
    ts_event: Micros
    interval_us: Annotated[int, msgspec.Meta(gt=0)]
    messages: Annotated[int, msgspec.Meta(ge=0)] = 0
    bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    parse_errors: Annotated[int, msgspec.Meta(ge=0)] = 0
    gaps: Annotated[int, msgspec.Meta(ge=0)] = 0
    resyncs: Annotated[int, msgspec.Meta(ge=0)] = 0
    reconnects: Annotated[int, msgspec.Meta(ge=0)] = 0
    checksum_failures: Annotated[int, msgspec.Meta(ge=0)] = 0
    rate: float | None = None
    lag_p50_us: int | None = None
    lag_p99_us: int | None = None
    staleness_us: int | None = None
    connected: bool | None = None
    health_score: float | None = None


class Anomaly(Record, frozen=True):
    """One anomaly score at or above the reporting floor for one series."""

    series_id: str
    metric: str
    ts_event: Micros
    value: float
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    detector: str
    exchange: Exchange | None = None
    symbol: str | None = None
    stream: str | None = None
    expected: float | None = None
    lower: float | None = None
    upper: float | None = None
    kind: Literal["anomaly", "forecast"] = "anomaly"
    time_to_threshold_s: float | None = None


class Alert(Record, frozen=True):
    """One alert state change; the compacted topic keyed by fingerprint holds the current state."""

    fingerprint: str
    rule: str
    state: Literal["inactive", "pending", "firing", "resolved", "acked", "silenced", "flapping"]
    severity: Severity
    labels: dict[str, str]
    annotations: dict[str, str]
    ts_event: Micros
    active_since: Micros | None = None
    fired_at: Micros | None = None
    resolved_at: Micros | None = None
    value: float | None = None
    version: Annotated[int, msgspec.Meta(ge=0)] = 0
    actor: str | None = None
    comment: str | None = None


class Notification(Record, frozen=True):
    """One delivery attempt result; ``idempotency_key`` is the same for every attempt of one message."""

    notification_id: str
    idempotency_key: str
    channel: str
    receiver: str
    group_key: str
    # ``sending``: the intent, written (and flushed) before the first attempt; a key with an intent and no
    # settled receipt was in flight when its notifier died (docs/notify.md, "Exactly once").
    status: Literal["sent", "failed", "retrying", "dead_lettered", "skipped_duplicate", "sending"]
    attempt: Annotated[int, msgspec.Meta(ge=1)]
    ts: Micros
    fingerprints: list[str] = []
    error: str | None = None
    latency_us: int | None = None
    # Episode ids (``fingerprint@fired_at``) this message announced as firing / as resolved; a
    # notifier rebuilds its notification log from them after a restart.
    firing: list[str] = []
    resolved: list[str] = []


class DeadLetter(Record, frozen=True):
    """An input that could not be processed, with the reason; ``payload`` is the raw input as text."""

    source: str
    reason: str
    error: str
    payload: str
    ts_recv: Micros
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    exchange: str | None = None


class Silence(Record, frozen=True):
    """A silence: alerts whose labels match every matcher are muted in ``[starts_at, ends_at)``.

    Matchers use Alertmanager's syntax: ``name="value"``, ``name!="value"``, ``name=~"regex"``,
    ``name!~"regex"`` (a regex must match the whole value).
    The compacted topic keyed by ``silence_id`` holds the current version; expiring a silence
    republishes it with ``ends_at`` set to the expiry time.
    """

    silence_id: str
    matchers: list[str]
    starts_at: Micros
    ends_at: Micros
    author: str
    comment: str
    created_at: Micros


class AlertAction(Record, frozen=True):
    """An operator's command to the rule engine about one alert (``marketprism alerts ack|resolve``)."""

    action_id: str
    fingerprint: str
    action: Literal["ack", "unack", "resolve"]
    actor: str
    ts: Micros
    comment: str | None = None


class RuleEngineCheckpoint(Record, frozen=True):
    """The rule engine's evaluation state with the input offsets it covers (``topic:partition`` -> next
    offset); ``state`` is the engine's own JSON document, opaque to everyone else."""

    engine_id: str
    ts: Micros
    offsets: dict[str, int]
    state: str


class ReferencePrice(Record, frozen=True):
    """Cross-venue reference price of one asset (``BASE-USD`` for USD, USDT and USDC spot quotes) at ``ts_event``.

    ``price`` is the median of the included venues' mids; ``mids`` and ``divergence_bps`` hold every
    venue considered (``exchange:symbol`` -> its last mid, and its divergence from ``price`` in bps);
    ``excluded`` names the venues left out of the median and why (``stale``: no quote for too long,
    ``diverging``: too far from the other venues' median).
    """

    asset: str
    ts_event: Micros
    price: Decimal
    venues: Annotated[int, msgspec.Meta(ge=1)]
    mids: dict[str, Decimal]
    divergence_bps: dict[str, float]
    excluded: dict[str, Literal["stale", "diverging"]] = {}


class ConsumerLag(Record, frozen=True):
    """Committed lag of one consumer group on one topic, measured from the broker (the rule engine's
    lag probe): ``lag`` = sum over partitions of ``end`` - ``committed`` offsets."""

    group: str
    topic: str
    ts: Micros
    lag: Annotated[int, msgspec.Meta(ge=0)]
    partitions: Annotated[int, msgspec.Meta(ge=0)]
    committed: Annotated[int, msgspec.Meta(ge=0)] = 0
    end: Annotated[int, msgspec.Meta(ge=0)] = 0
    # wall seconds the committed offsets have not moved while records were pending (0: they moved, or none waited)
    stalled_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


RECORD_TYPES: dict[str, type[Record]] = {
    cls.__name__: cls
    for cls in (
        Trade,
        TradeBatch,
        BookUpdate,
        Bbo,
        Funding,
        OpenInterest,
        Liquidation,
        Bar,
        FeedMetrics,
        Anomaly,
        Alert,
        Notification,
        DeadLetter,
        ReferencePrice,
        Silence,
        AlertAction,
        RuleEngineCheckpoint,
        ConsumerLag,
    )
}


def market_key(exchange: str, symbol: str) -> bytes:
    """The ``exchange:symbol`` key of every ``md.*`` topic."""
    return f"{exchange}:{symbol}".encode()

"""Input sources: which topic a rule reads and how one of its records becomes a :class:`Sample`.

A sample carries the record's identifying labels (strings), its numeric metrics (floats; prices are
compared as :class:`~decimal.Decimal` where exactness matters, see ``prices``) and its event time.
Derived metrics (``*_per_min``, ``lag_p99_ms``, ``staleness_s``, ``spread_bps``...) are computed here
so rules never do arithmetic on raw fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import msgspec

from pipeline.alerting.errors import BadInput
from pipeline.contracts import decoder_for
from pipeline.contracts.records import (
    Anomaly,
    Bar,
    Bbo,
    ConsumerLag,
    DeadLetter,
    FeedMetrics,
    Record,
    ReferencePrice,
)
from pipeline.contracts.topics import ANOMALIES, BARS_1M, BARS_1S, BBO, CONSUMER_LAG, DLQ, FEED_METRICS, REFERENCE

BPS = Decimal(10_000)


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One observation of one series, in event time."""

    source: str
    ts: int
    labels: dict[str, str]
    metrics: dict[str, float]
    prices: dict[str, str] = {}


def _feed_metrics(r: FeedMetrics) -> Sample:
    per_min = 60_000_000 / r.interval_us
    metrics: dict[str, float] = {
        "messages": r.messages,
        "bytes": r.bytes,
        "parse_errors": r.parse_errors,
        "gaps": r.gaps,
        "resyncs": r.resyncs,
        "gaps_resyncs": r.gaps + r.resyncs,
        "reconnects": r.reconnects,
        "checksum_failures": r.checksum_failures,
        "messages_per_min": r.messages * per_min,
        "gaps_resyncs_per_min": (r.gaps + r.resyncs) * per_min,
        "reconnects_per_min": r.reconnects * per_min,
        "checksum_failures_per_min": r.checksum_failures * per_min,
    }
    if r.rate is not None:
        metrics["rate"] = r.rate
    if r.lag_p50_us is not None:
        metrics["lag_p50_ms"] = r.lag_p50_us / 1000
    if r.lag_p99_us is not None:
        metrics["lag_p99_ms"] = r.lag_p99_us / 1000
    if r.staleness_us is not None:
        metrics["staleness_s"] = r.staleness_us / 1_000_000
    if r.connected is not None:
        metrics["connected"] = 1.0 if r.connected else 0.0
    if r.health_score is not None:
        metrics["health_score"] = r.health_score
    labels = {"exchange": r.exchange, "stream": r.stream, "source": r.source}
    return Sample(source="feed_metrics", ts=r.ts_event, labels=labels, metrics=metrics)


def _bps(numerator: Decimal, denominator: Decimal) -> float:
    return float(numerator * BPS / denominator) if denominator else 0.0


def _bar(source: str) -> Callable[[Bar], Sample]:
    def convert(r: Bar) -> Sample:
        open_, high, low, close = Decimal(r.open), Decimal(r.high), Decimal(r.low), Decimal(r.close)
        metrics: dict[str, float] = {
            "volume": float(Decimal(r.volume)),
            "quote_volume": float(Decimal(r.quote_volume)),
            "trade_count": r.trade_count,
            "return_bps": _bps(close - open_, open_),
            "range_bps": _bps(high - low, low),
            "crossed_s": (r.crossed_us or 0) / 1_000_000,
        }
        for name in ("spread_mean_bps", "spread_max_bps", "mid_change_bps"):
            value = getattr(r, name)
            if value is not None:
                metrics[name] = value
        labels = {"exchange": r.exchange, "symbol": r.symbol, "interval": r.interval}
        prices = {"close": r.close, "vwap": r.vwap, "open": r.open}
        return Sample(source=source, ts=r.window_end, labels=labels, metrics=metrics, prices=prices)

    return convert


def _bbo(r: Bbo) -> Sample:
    bid, ask = Decimal(r.bid_price), Decimal(r.ask_price)
    mid = (bid + ask) / 2
    metrics = {"spread_bps": _bps(ask - bid, mid), "crossed": 1.0 if bid >= ask and ask > 0 else 0.0}
    labels = {"exchange": r.exchange, "symbol": r.symbol}
    return Sample(source="bbo", ts=r.ts_event, labels=labels, metrics=metrics, prices={"mid": str(mid)})


def _anomaly(r: Anomaly) -> Sample:
    metrics = {"score": r.score, "value": r.value}
    if r.time_to_threshold_s is not None:
        metrics["time_to_threshold_s"] = r.time_to_threshold_s
    labels = {
        "series_id": r.series_id,
        "metric": r.metric,
        "detector": r.detector,
        "kind": r.kind,
        "exchange": r.exchange or "",
        "symbol": r.symbol or "",
        "stream": r.stream or "",
    }
    return Sample(source="anomalies", ts=r.ts_event, labels=labels, metrics=metrics)


def _dead_letter(r: DeadLetter) -> Sample:
    labels = {"source": r.source, "reason": r.reason, "topic": r.topic or "", "exchange": r.exchange or ""}
    return Sample(source="dlq", ts=r.ts_recv, labels=labels, metrics={"count": 1.0})


def _reference(r: ReferencePrice) -> list[Sample]:
    """One sample per venue the aggregator compared with the cross-venue reference price."""
    out = []
    for venue, divergence in sorted(r.divergence_bps.items()):
        exchange, _, symbol = venue.partition(":")
        excluded = r.excluded.get(venue)
        metrics = {
            "divergence_bps": divergence,
            "abs_divergence_bps": abs(divergence),
            "diverging": 1.0 if excluded == "diverging" else 0.0,
            "stale": 1.0 if excluded == "stale" else 0.0,
            "venues": r.venues,
        }
        labels = {"asset": r.asset, "exchange": exchange, "symbol": symbol}
        out.append(Sample(source="reference", ts=r.ts_event, labels=labels, metrics=metrics))
    return out


def _consumer_lag(r: ConsumerLag) -> Sample:
    labels = {"group": r.group, "topic": r.topic}
    metrics = {"lag": r.lag, "committed": r.committed, "stalled_s": r.stalled_s}
    return Sample(source="consumer_lag", ts=r.ts, labels=labels, metrics=metrics)


@dataclass(frozen=True)
class Source:
    """One input source: its topic, record type, label names, metric names and converter."""

    name: str
    topic: str
    record_type: type[Record]
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    convert: Callable[[Record], Sample | list[Sample]]
    prices: tuple[str, ...] = ()
    # False: stamped with the wall clock of whoever wrote it (DLQ, lag probe); such records never move
    # the watermark, so a replay of old data is not thrown forward by a live dead letter.
    event_time: bool = True

    def samples(self, value: bytes) -> list[Sample]:
        """Decode one topic value (validating it) into its samples; raises :class:`BadInput`."""
        try:
            record = decoder_for(self.record_type).decode(value)
        except msgspec.DecodeError as exc:
            raise BadInput("decode_error", f"{self.topic}: {exc}") from exc
        try:
            converted = self.convert(record)
        except (InvalidOperation, ZeroDivisionError, ValueError) as exc:
            raise BadInput("bad_value", f"{self.topic}: {exc}") from exc
        return converted if isinstance(converted, list) else [converted]


_FEED_METRICS = (
    "messages", "bytes", "parse_errors", "gaps", "resyncs", "gaps_resyncs", "reconnects", "checksum_failures",
    "messages_per_min", "gaps_resyncs_per_min", "reconnects_per_min", "checksum_failures_per_min", "rate",
    "lag_p50_ms", "lag_p99_ms", "staleness_s", "connected", "health_score",
)  # fmt: skip
_BAR_METRICS = (
    "volume", "quote_volume", "trade_count", "return_bps", "range_bps", "crossed_s", "spread_mean_bps",
    "spread_max_bps", "mid_change_bps",
)  # fmt: skip
_BAR_LABELS = ("exchange", "symbol", "interval")

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("feed_metrics", FEED_METRICS.name, FeedMetrics, ("exchange", "stream", "source"), _FEED_METRICS,
               _feed_metrics),  # type: ignore[arg-type]
        Source("bars_1s", BARS_1S.name, Bar, _BAR_LABELS, _BAR_METRICS, _bar("bars_1s"),  # type: ignore[arg-type]
               ("close", "vwap", "open")),
        Source("bars_1m", BARS_1M.name, Bar, _BAR_LABELS, _BAR_METRICS, _bar("bars_1m"),  # type: ignore[arg-type]
               ("close", "vwap", "open")),
        Source("bbo", BBO.name, Bbo, ("exchange", "symbol"), ("spread_bps", "crossed"), _bbo,  # type: ignore[arg-type]
               ("mid",)),
        Source("anomalies", ANOMALIES.name, Anomaly,
               ("series_id", "metric", "detector", "kind", "exchange", "symbol", "stream"),
               ("score", "value", "time_to_threshold_s"), _anomaly),  # type: ignore[arg-type]
        Source("dlq", DLQ.name, DeadLetter, ("source", "reason", "topic", "exchange"), ("count",),
               _dead_letter, event_time=False),  # type: ignore[arg-type]
        Source("reference", REFERENCE.name, ReferencePrice, ("asset", "exchange", "symbol"),
               ("divergence_bps", "abs_divergence_bps", "diverging", "stale", "venues"), _reference),  # type: ignore[arg-type]
        Source("consumer_lag", CONSUMER_LAG.name, ConsumerLag, ("group", "topic"),
               ("lag", "committed", "stalled_s"), _consumer_lag, event_time=False),  # type: ignore[arg-type]
    )
}  # fmt: skip

"""The demo's live terminal view: what flows through the topics, read by a consumer of its own."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from pipeline.contracts import Alert, Anomaly, Bar, FeedMetrics, Notification, Trade, decode, topics

WATCHED = {
    topics.TRADES.name: Trade,
    topics.BARS_1S.name: Bar,
    topics.FEED_METRICS.name: FeedMetrics,
    topics.ANOMALIES.name: Anomaly,
    topics.ALERTS.name: Alert,
    topics.NOTIFICATIONS.name: Notification,
    topics.DLQ.name: None,
}


@dataclass
class DemoStats:
    """Counts and latest state per topic, updated from consumed records."""

    started: float = field(default_factory=time.monotonic)
    records: Counter[str] = field(default_factory=Counter)
    health: dict[tuple[str, str], FeedMetrics] = field(default_factory=dict)
    last_bar: dict[tuple[str, str], Bar] = field(default_factory=dict)
    anomalies: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=6))
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=8))
    alert_states: dict[str, Alert] = field(default_factory=dict)
    alert_log: list[Alert] = field(default_factory=list)  # every change, for the summary
    notifications: Counter[str] = field(default_factory=Counter)
    sent: list[Notification] = field(default_factory=list)  # delivered notifications
    rows: dict[str, int] = field(default_factory=dict)
    # pipeline time (epoch us) -> the wall time it was read at (the demo's ScaledClock.wall_us)
    to_wall_us: Callable[[float], float] = float
    # wall ms from a record's pipeline time stamp to the record on its topic (the broker's timestamp), per stage
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    bar_lag: list[tuple[int, float]] = field(default_factory=list)  # (window end, wall ms to the topic) per 1 s bar
    alert_at_ms: dict[str, int] = field(default_factory=dict)  # episode (fingerprint@fired_at) -> alert on topic
    peak_rss: dict[str, int] = field(default_factory=dict)  # child name -> peak resident bytes (sampled)
    cpu_s: dict[str, float] = field(default_factory=dict)  # child name -> CPU seconds (last sample)

    def _stage(self, stage: str, topic_ms: int | None, since_ms: float) -> None:
        if topic_ms is not None and topic_ms > 0:
            self.stage_ms.setdefault(stage, []).append(topic_ms - since_ms)

    def add(self, topic: str, value: bytes, timestamp_ms: int | None = None) -> None:
        """Count a record; ``timestamp_ms`` (the broker record's timestamp, wall ms) feeds the stage latencies."""
        self.records[topic] += 1
        record_type = WATCHED.get(topic)
        if record_type is None:
            return
        record = decode(record_type, value)
        if isinstance(record, Trade):  # venue send (simulated ts_event) -> trade record on md.trades.v1
            self._stage("frame_to_trade", timestamp_ms, self.to_wall_us(record.ts_event) / 1000)
        elif isinstance(record, FeedMetrics):
            if record.source == "aggregator" or (record.exchange, record.stream) not in self.health:
                self.health[(record.exchange, record.stream)] = record
        elif isinstance(record, Bar):
            self.last_bar[(record.exchange, record.symbol)] = record
            if record.interval == "1s":  # window end (its last possible trade) -> bar on md.bars.1s.v1
                self._stage("window_end_to_bar", timestamp_ms, self.to_wall_us(record.window_end) / 1000)
                if timestamp_ms:
                    self.bar_lag.append((record.window_end, timestamp_ms - self.to_wall_us(record.window_end) / 1000))
        elif isinstance(record, Anomaly):
            self.anomalies.append(record)
        elif isinstance(record, Alert):
            self.alerts.append(record)
            self.alert_states[record.fingerprint] = record
            self.alert_log.append(record)
            if record.state == "firing" and record.fired_at is not None and timestamp_ms:
                # the rule's event time at the transition -> alert on ops.alerts.v1
                self._stage("event_to_alert", timestamp_ms, self.to_wall_us(record.ts_event) / 1000)
                self.alert_at_ms.setdefault(f"{record.fingerprint}@{record.fired_at}", timestamp_ms)
        elif isinstance(record, Notification):
            self.notifications[record.status] += 1
            if record.status == "sent":
                self.sent.append(record)
                # alert on ops.alerts.v1 -> its first notification sent (ops.notifications.v1)
                for episode in record.firing:
                    alerted = self.alert_at_ms.pop(episode, None)
                    if alerted is not None:
                        self._stage("alert_to_notification", timestamp_ms, alerted)

    def render(self, title: str) -> Panel:
        venues = Table("venue", "stream", "rate/s", "lag p99 ms", "gaps", "health", title="feeds", expand=True)
        for (exchange, stream), m in sorted(self.health.items())[:14]:
            venues.add_row(
                exchange,
                stream,
                f"{m.rate or 0:.0f}",
                "-" if m.lag_p99_us is None else f"{m.lag_p99_us / 1000:.0f}",
                str(m.gaps),
                "-" if m.health_score is None else f"{m.health_score:.0f}",
            )
        bars = Table("venue", "symbol", "close", "volume", "trades", title="latest 1s bars", expand=True)
        for (exchange, symbol), bar in sorted(self.last_bar.items())[:10]:
            bars.add_row(exchange, symbol, bar.close, bar.volume, str(bar.trade_count))
        alerts = Table("state", "sev", "rule", "labels", title="alert changes", expand=True)
        for alert in reversed(self.alerts):
            labels = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
            alerts.add_row(alert.state, alert.severity, alert.rule, labels[:60])
        anomalies = Table("series", "score", "detector", title="anomalies", expand=True)
        for anomaly in reversed(self.anomalies):
            anomalies.add_row(anomaly.series_id, f"{anomaly.score:.2f}", anomaly.detector)
        flows = Table("topic", "records", title="records seen", expand=True)
        for topic in WATCHED:
            flows.add_row(topic, str(self.records[topic]))
        for table, count in sorted(self.rows.items()):
            flows.add_row(f"clickhouse {table}", str(count))
        elapsed = time.monotonic() - self.started
        return Panel(
            Group(venues, bars, anomalies, alerts, flows),
            title=f"{title} · {elapsed:.0f}s · Ctrl-C to stop",
        )

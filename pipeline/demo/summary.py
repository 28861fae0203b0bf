"""The demo's closing summary: incidents injected vs alerts raised (with latencies), rows per table, per-stage
latencies (frame -> trade -> bar -> alert -> notification, p50/p99 from record and broker timestamps) and the
peak memory of each process."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.contracts import Alert, IncidentLabel, Notification, read_labels
from pipeline.demo.receiver import WebhookReceiver
from pipeline.demo.view import DemoStats
from pipeline.sinks.schema import table_name

# Which shipped alert rules answer which simulator incident kind (docs/simulator.md, docs/alerting.md).
EXPECTED_RULES: dict[str, tuple[str, ...]] = {
    "price_spike": ("PriceSpikeAnomaly",),
    "flash_crash": ("PriceSpikeAnomaly",),
    "volume_burst": ("VolumeBurst",),
    "spread_blowout": ("SpreadBlowout",),
    "frozen_price": ("FrozenPrice",),
    "feed_stall": ("FeedStalled",),
    "disconnect_storm": ("VenueDisconnected", "ReconnectStorm"),
    "sequence_gap": ("SequenceGapRate",),
    "bad_checksum": ("ChecksumFailures",),
    "crossed_book": ("CrossedBook",),
    "latency_increase": ("FeedLatencyHigh",),
    "venue_divergence": ("VenueDivergence", "VenueCloseDivergence"),
    "malformed_frames": ("DeadLetterRate",),
    # pipeline faults the demo runner injects (pipeline/demo/faults.yaml)
    "sink_down": ("SinkStalled",),
    "aggregation_down": ("WorkerStalled",),
    "anomaly_down": ("WorkerStalled",),
    "alerting_down": ("RuleEngineDown",),
}
# How long after its start an incident may take to raise an expected alert and still count as caught: the rule's
# `for` (read from the rules) plus this allowance, in simulated seconds. The allowance is the condition's own
# detection time (a window or staleness that must fill before the condition is true) plus 15 s for the pipeline
# (collector -> Kafka -> worker -> rule engine on a loaded 2-core machine). docs/anomaly.md, "Demo bounds".
PIPELINE_ALLOWANCE_S = 15.0
DETECTION_S: dict[str, float] = {
    "spread_blowout": 10.0,  # `hold: 10s` bars above the limit
    "frozen_price": 30.0,  # 30 s window of zero range
    "feed_stall": 30.0,  # staleness > 30 s
    "venue_divergence": 15.0,  # the reference price and its divergence settle on a few 1 s updates
    "malformed_frames": 5.0,  # more than 10 dead letters at 2 a second
    "sink_down": 15.0,  # the lag probe's stall clock: 15 s without a commit while records wait
    "aggregation_down": 15.0,
    "anomaly_down": 15.0,
    "alerting_down": 15.0,  # the notifier's dead-man's switch: 15 s without the engine's heartbeat
}
# An alert counts as explained by an incident of matching kind and venue active around it: from EXPLAIN_LEAD_S
# before its start (label and event clocks differ by a frame's latency) to its end plus the kind's bound (a
# consequence trails its cause: a frozen price jumps when it resumes, a stalled stream's rate collapses after it).
EXPLAIN_LEAD_S = 5.0
# Other alerts an incident rightly causes (they are not false alarms): a stalled symbol's message rate collapses, a
# frozen book sends no book updates (its book stream stalls), a price that was frozen or diverging jumps when it
# resumes, a lagging venue's trades arrive too late for its bars and its feed lag is forecast to breach its limit, a
# reconnecting venue replays trades (lag again).
CONSEQUENCES: dict[str, tuple[str, ...]] = {
    "feed_stall": ("MessageRateCollapse",),
    "frozen_price": ("PriceSpikeAnomaly", "FeedStalled", "MessageRateCollapse"),
    "venue_divergence": ("PriceSpikeAnomaly",),
    "disconnect_storm": ("FeedStalled", "MessageRateCollapse", "CapacityBreachPredicted"),
    "latency_increase": ("DeadLetterRate", "CapacityBreachPredicted"),
    "malformed_frames": ("CapacityBreachPredicted",),  # the dead-letter burst is forecast to breach the DLQ limit
    # a dead component's input piles up: its lag grows and is forecast to breach; no 1 s bars without aggregation
    "sink_down": ("ConsumerLagGrowing", "CapacityBreachPredicted"),
    "aggregation_down": ("ConsumerLagGrowing", "CapacityBreachPredicted", "PipelineStalled", "BarsStalled"),
    "anomaly_down": ("ConsumerLagGrowing", "CapacityBreachPredicted"),
}
# States of an alert that has fired: inhibited or silenced alerts were raised too, only not notified.
RAISED = frozenset({"firing", "silenced", "acked", "flapping"})


@dataclass(frozen=True)
class IncidentOutcome:
    incident: str
    kind: str
    venue: str
    symbol: str | None
    expected: tuple[str, ...]
    rule: str | None
    fingerprint: str | None
    latency_s: float | None  # incident start -> alert fired (simulated seconds)
    resolved_after_end_s: float | None  # incident end -> alert resolved; None: still raised at the end
    notified_s: float | None  # incident start -> first notification sent for the alert
    bound_s: float | None = None  # the latest latency that counts as caught (the rule's `for` + allowance)
    late_s: float | None = None  # not caught: latency of an expected alert that fired after the bound

    @property
    def caught(self) -> bool:
        return self.rule is not None


@dataclass
class DemoSummary:
    incidents: list[IncidentOutcome]
    rows: dict[str, int]
    records: dict[str, int]
    notifications: int
    duplicate_notifications: dict[str, int]
    query_hint: str
    unexplained: list[str] = field(default_factory=list)  # raised alerts no incident accounts for
    # alert fired (its event time) -> first notification sent, per caught incident (simulated ms)
    notification_latency_ms: list[float] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)
    # per stage: wall ms from the record's own pipeline-time stamp to the record on its topic: p50, p99, n
    stage_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)  # per child process (with its own children)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per child process, until drained
    # window end -> 1 s bar (wall ms) p50 per 30 simulated seconds of the run: when the aggregation fell behind
    bar_lag_by_phase: dict[str, float] = field(default_factory=dict)
    run: dict[str, object] = field(default_factory=dict)  # speed, wall seconds (set by the runner)

    @property
    def rows_match(self) -> bool:
        return all(self.rows.get(t, 0) == n for t, n in self.records.items())

    def as_dict(self) -> dict[str, object]:
        """The machine-readable summary (``marketprism demo --summary-json``)."""
        return {
            "incidents": [{**asdict(o), "caught": o.caught} for o in self.incidents],
            "caught": sum(o.caught for o in self.incidents),
            "rows": self.rows,
            "records": self.records,
            "rows_match": self.rows_match,
            "notifications": self.notifications,
            "duplicate_notifications": self.duplicate_notifications,
            "notification_latency_ms": self.notification_latency_ms,
            "unexplained_alerts": self.unexplained,
            "leftover_pids": self.leftover_pids,
            "stage_latency_ms": self.stage_latency_ms,
            "peak_rss_mib": self.peak_rss_mib,
            "cpu_s": self.cpu_s,
            "bar_lag_by_phase_ms": self.bar_lag_by_phase,
            "run": self.run,
        }

    def print(self, console: Console) -> None:
        table = Table(
            "incident",
            "kind",
            "venue",
            "symbol",
            "alert",
            "latency s",
            "bound s",
            "resolved s",
            "notified s",
            title="incidents vs alerts (simulated seconds)",
        )
        for o in self.incidents:
            table.add_row(
                o.incident,
                o.kind,
                o.venue,
                o.symbol or "*",
                o.rule or (f"[red]late ({_fmt(o.late_s)} s)[/red]" if o.late_s is not None else "[red]none[/red]"),
                _fmt(o.latency_s),
                _fmt(o.bound_s),
                _fmt(o.resolved_after_end_s) if o.caught else "-",
                _fmt(o.notified_s),
            )
        console.print(table)
        rows = Table("table", "rows", "topic records", title="stored")
        for name, records in sorted(self.records.items()):
            stored = self.rows.get(name, 0)
            mark = "" if stored == records else " [red]≠[/red]"
            rows.add_row(name, f"{stored}{mark}", str(records))
        console.print(rows)
        caught = sum(o.caught for o in self.incidents)
        console.print(
            f"{caught}/{len(self.incidents)} incidents raised their alert within its bound; {self.notifications} "
            f"webhook notifications, {len(self.duplicate_notifications)} duplicated"
        )
        if self.unexplained:
            console.print(f"alerts no incident explains: {', '.join(self.unexplained)}")
        if self.stage_latency_ms or self.peak_rss_mib:
            perf = Table(
                "stage / process",
                "p50 ms",
                "p99 ms",
                "n",
                "peak RSS MiB",
                "CPU s",
                title="latency (wall clock) and resources",
            )
            for stage, q in self.stage_latency_ms.items():
                perf.add_row(stage, f"{q['p50']:.0f}", f"{q['p99']:.0f}", f"{q['n']:.0f}", "", "")
            for name, mib in sorted(self.peak_rss_mib.items()):
                perf.add_row(name, "", "", "", f"{mib:.0f}", f"{self.cpu_s.get(name, 0):.1f}")
            console.print(perf)
        console.print(f"query the data: {self.query_hint}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 (nearest rank) and the sample count."""
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": round(rank(0.50), 1), "p99": round(rank(0.99), 1), "n": len(ordered)}


STAGES = ("frame_to_trade", "window_end_to_bar", "event_to_alert", "alert_to_notification")


def _symbol_tokens(stream: str) -> set[str]:
    return {t for t in re.split(r"[:@]", stream.lower()) if t}


def _concerns(label: IncidentLabel, labels: dict[str, str]) -> bool:
    """Whether an alert's labels point at the incident's venue (and symbol, where the alert names one)."""
    exchange = labels.get("exchange")
    series = labels.get("series_id", "")
    # health:<exchange>:<stream>:...; the DLQ rate (health:dlq_per_s) is every venue's: a dead-letter burst anywhere
    if exchange is None and series.startswith("health:consumer_lag:"):
        exchange = "pipeline"  # a consumer group's lag: the pipeline's, as its faults' labels say
    elif exchange is None and series.startswith("health:") and series != "health:dlq_per_s":
        exchange = series.split(":")[1]
    if (exchange or label.venue) != label.venue:
        return False
    if not label.symbol:
        return True
    if "symbol" in labels:
        return labels["symbol"] == label.symbol
    stream = labels.get("stream")
    if stream is None or label.raw_symbol is None:
        return True
    tokens = _symbol_tokens(stream)
    # a per-symbol stream (`books:ETH-USDT`, `ethusdt@depth@100ms`) must be this symbol's; a channel-wide stream
    # (`l2_data`, a connection) carries every symbol of the venue
    raw = label.raw_symbol.lower()
    return raw in tokens or raw.replace("/", "").replace("-", "") in tokens or len(tokens) == 1


@dataclass(frozen=True)
class _Episode:
    rule: str
    fingerprint: str
    labels: dict[str, str]
    fired_at: int
    resolved_at: int | None


def _episodes(alerts: list[Alert]) -> list[_Episode]:
    """One entry per (fingerprint, fired_at): when it was raised and, if it was, resolved."""
    found: dict[tuple[str, int], _Episode] = {}
    for a in alerts:
        if a.fired_at is None or (a.state not in RAISED and a.state != "resolved"):
            continue
        key = (a.fingerprint, a.fired_at)
        known = found.get(key)
        resolved = a.resolved_at if a.state == "resolved" else (known.resolved_at if known else None)
        found[key] = _Episode(a.rule, a.fingerprint, a.labels, a.fired_at, resolved)
    return sorted(found.values(), key=lambda e: e.fired_at)


def rule_for_s(rule: str) -> float:
    """The shipped rule's `for` in seconds (0 for a rule the rule files do not hold, as RuleEngineDown)."""
    return _rule_for_table().get(rule, 0.0)


@functools.cache
def _rule_for_table() -> dict[str, float]:
    from pipeline.alerting.rules import load_rules

    return {r.name: r.for_ / 1e6 for r in load_rules([DEMO_RULES]).rules}


DEMO_RULES = Path(__file__).with_name("rules.yaml")


def bound_s(kind: str, rule: str) -> float:
    """Latest incident start -> alert latency (simulated seconds) that counts as caught."""
    return rule_for_s(rule) + DETECTION_S.get(kind, 0.0) + PIPELINE_ALLOWANCE_S


def kind_bound_s(kind: str) -> float:
    """The longest bound of the kind's expected rules (how long its alerts may trail it)."""
    return max((bound_s(kind, r) for r in EXPECTED_RULES.get(kind, ())), default=PIPELINE_ALLOWANCE_S)


def _outcome(label: IncidentLabel, episodes: list[_Episode], sent: list[Notification]) -> IncidentOutcome:
    expected = EXPECTED_RULES.get(label.kind, ())
    matching = [
        e for e in episodes if e.rule in expected and e.fired_at >= label.start_us and _concerns(label, e.labels)
    ]
    best = next(
        (e for e in matching if (e.fired_at - label.start_us) / 1e6 <= bound_s(label.kind, e.rule)),
        None,
    )
    bound = kind_bound_s(label.kind) if expected else None
    if best is None:
        late = (matching[0].fired_at - label.start_us) / 1e6 if matching else None
        return IncidentOutcome(
            label.id, label.kind, label.venue, label.symbol, expected, None, None, None, None, None, bound, late
        )
    notified = min((n.ts for n in sent if best.fingerprint in n.fingerprints and n.ts >= best.fired_at), default=None)
    return IncidentOutcome(
        label.id,
        label.kind,
        label.venue,
        label.symbol,
        expected,
        best.rule,
        best.fingerprint,
        (best.fired_at - label.start_us) / 1e6,
        None if best.resolved_at is None else max(0.0, (best.resolved_at - label.end_us) / 1e6),
        None if notified is None else (notified - label.start_us) / 1e6,
        bound_s(label.kind, best.rule),
    )


def _unexplained(labels: list[IncidentLabel], episodes: list[_Episode]) -> list[str]:
    """Raised alerts no incident explains (what a user would call a false alarm): an alert is explained only by an
    incident whose kind expects or causes its rule, on its venue (and symbol), active around the time it fired
    (from ``EXPLAIN_LEAD_S`` before the incident's start to its end plus its kind's bound)."""
    out = []
    for e in episodes:
        explained = (
            label
            for label in labels
            if e.rule in EXPECTED_RULES.get(label.kind, ()) + CONSEQUENCES.get(label.kind, ())
            and label.start_us - EXPLAIN_LEAD_S * 1e6 <= e.fired_at <= label.end_us + kind_bound_s(label.kind) * 1e6
        )
        if not any(_concerns(label, e.labels) for label in explained):
            out.append(f"{e.rule}{{{','.join(f'{k}={v}' for k, v in sorted(e.labels.items()) if k in _KEYS)}}}")
    return sorted(set(out))


_KEYS = {"exchange", "symbol", "stream", "source", "series_id", "group", "topic"}


def _table_rows(home: Path, config: Path) -> dict[str, int]:
    """Rows per table of the embedded database, read through ``marketprism query``."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "query",
            "--format",
            "JSONEachRow",
            "SELECT table, sum(rows) AS rows FROM system.parts WHERE active AND database NOT IN "
            "('system', 'INFORMATION_SCHEMA', 'information_schema') GROUP BY table",
        ],
        env={**os.environ, "MARKETPRISM_CONFIG": str(config)},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {}
    rows = (json.loads(line) for line in out.stdout.splitlines() if line.strip())
    return {row["table"]: int(row["rows"]) for row in rows}


def build_summary(
    home: Path, labels_path: Path, topic_records: dict[str, int], receiver: WebhookReceiver, stats: DemoStats
) -> DemoSummary:
    labels: list[IncidentLabel] = []
    if labels_path.exists():
        labels = read_labels(labels_path)
    episodes = _episodes(stats.alert_log)
    rows = _table_rows(home, home / "config.yaml")
    records = {table_name(topic): count for topic, count in topic_records.items()}
    summary = DemoSummary(
        incidents=[_outcome(label, episodes, stats.sent) for label in labels],
        rows=rows,
        records=records,
        notifications=len(receiver.received),
        duplicate_notifications=receiver.duplicates,
        query_hint=f'.venv/bin/marketprism --config {home / "config.yaml"} query "SELECT count() FROM trades"',  # noqa: S608 - a hint printed for the user, never executed
        unexplained=_unexplained(labels, episodes),
    )
    summary.stage_latency_ms = {s: percentiles(stats.stage_ms[s]) for s in STAGES if stats.stage_ms.get(s)}
    summary.peak_rss_mib = {name: round(rss / 2**20, 1) for name, rss in sorted(stats.peak_rss.items())}
    summary.cpu_s = {name: round(cpu, 1) for name, cpu in sorted(stats.cpu_s.items())}
    if stats.bar_lag:
        first = min(end for end, _ in stats.bar_lag)
        phases: dict[int, list[float]] = {}
        for end, lag in stats.bar_lag:
            phases.setdefault((end - first) // 30_000_000 * 30, []).append(lag)
        summary.bar_lag_by_phase = {f"{start}s": percentiles(lags)["p50"] for start, lags in sorted(phases.items())}
    summary.notification_latency_ms = sorted(
        round((o.notified_s - o.latency_s) * 1000, 1)
        for o in summary.incidents
        if o.notified_s is not None and o.latency_s is not None
    )
    return summary

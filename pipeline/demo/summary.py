"""The demo's closing summary: incidents injected vs alerts raised (with latencies), rows per table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from pipeline.demo.receiver import WebhookReceiver
from pipeline.demo.view import DemoStats
from pipeline.sinks.schema import table_name

# Which shipped alert rules answer which simulator incident kind (docs/simulator.md, docs/alerting.md).
EXPECTED_RULES: dict[str, tuple[str, ...]] = {
    "price_spike": ("PriceSpikeAnomaly",),
    "flash_crash": ("PriceSpikeAnomaly",),
    "volume_burst": ("VolumeBurst",),
    "spread_blowout": ("SpreadBlowout",),
    "frozen_price": ("FrozenPrice", "PriceSpikeAnomaly"),
    "feed_stall": ("FeedStalled",),
    "disconnect_storm": ("VenueDisconnected",),
    "sequence_gap": ("SequenceGapRate",),
    "bad_checksum": ("ChecksumFailures",),
    "crossed_book": ("CrossedBook",),
    "latency_increase": ("FeedLatencyHigh",),
    "venue_divergence": ("VenueDivergence", "VenueCloseDivergence"),
    "malformed_frames": ("DeadLetterRate",),
}


class _Label(msgspec.Struct, frozen=True):
    id: str
    kind: str
    venue: str
    symbol: str | None
    start_us: int
    end_us: int


@dataclass(frozen=True)
class IncidentOutcome:
    incident: str
    kind: str
    venue: str
    symbol: str | None
    rule: str | None
    latency_s: float | None

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
    leftover_pids: list[int] = field(default_factory=list)

    @property
    def rows_match(self) -> bool:
        return all(self.rows.get(t) == n for t, n in self.records.items())

    def print(self, console: Console) -> None:
        table = Table("incident", "kind", "venue", "symbol", "alert", "latency s", title="incidents vs alerts")
        for o in self.incidents:
            table.add_row(
                o.incident, o.kind, o.venue, o.symbol or "*", o.rule or "[red]none[/red]",
                "-" if o.latency_s is None else f"{o.latency_s:.1f}",
            )
        console.print(table)
        rows = Table("table", "rows", "topic records", title="stored")
        for name, records in sorted(self.records.items()):
            stored = self.rows.get(name)
            mark = "" if stored == records else " [red]≠[/red]"
            rows.add_row(name, f"{stored}{mark}", str(records))
        console.print(rows)
        caught = sum(o.caught for o in self.incidents)
        console.print(
            f"{caught}/{len(self.incidents)} incidents raised their alert; {self.notifications} webhook "
            f"notifications, {len(self.duplicate_notifications)} duplicated"
        )
        console.print(f"query the data: {self.query_hint}")


def _outcome(label: _Label, fired: list[tuple[str, dict[str, str], int]]) -> IncidentOutcome:
    expected = EXPECTED_RULES.get(label.kind, ())
    best: tuple[int, str] | None = None
    for rule, labels, at in fired:
        if rule not in expected or at < label.start_us:
            continue
        if labels.get("exchange", label.venue) != label.venue:
            continue
        if label.symbol and labels.get("symbol", label.symbol) != label.symbol:
            continue
        if best is None or at < best[0]:
            best = (at, rule)
    if best is None:
        return IncidentOutcome(label.id, label.kind, label.venue, label.symbol, None, None)
    return IncidentOutcome(
        label.id, label.kind, label.venue, label.symbol, best[1], (best[0] - label.start_us) / 1e6
    )


def _table_rows(home: Path, config: Path) -> dict[str, int]:
    """Rows per table of the embedded database, read through ``marketprism query``."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "query", "--format", "JSONEachRow",
         "SELECT table, sum(rows) AS rows FROM system.parts WHERE active AND database NOT IN "
         "('system', 'INFORMATION_SCHEMA', 'information_schema') GROUP BY table"],
        env={**os.environ, "MARKETPRISM_CONFIG": str(config)}, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        return {}
    rows = (json.loads(line) for line in out.stdout.splitlines() if line.strip())
    return {row["table"]: int(row["rows"]) for row in rows}


def build_summary(
    home: Path, labels_path: Path, topic_records: dict[str, int], receiver: WebhookReceiver, stats: DemoStats
) -> DemoSummary:
    labels = []
    if labels_path.exists():
        labels = [msgspec.json.decode(line, type=_Label) for line in labels_path.read_bytes().splitlines() if line]
    fired = [(a.rule, a.labels, a.fired_at or a.ts_event) for a in stats.alerts_fired]
    rows = _table_rows(home, home / "config.yaml")
    records = {table_name(topic): count for topic, count in topic_records.items()}
    return DemoSummary(
        incidents=[_outcome(label, fired) for label in labels],
        rows=rows,
        records=records,
        notifications=len(receiver.received),
        duplicate_notifications=receiver.duplicates,
        query_hint=f'.venv/bin/marketprism --config {home / "config.yaml"} query "SELECT count() FROM trades"',
    )

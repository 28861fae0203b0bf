"""What the console's pages show, without HTTP: the overview's numbers, the alert list's filters and groups,
an alert's timeline and chart, silence matcher sets from an alert, forecasts and anomaly charts. Reads only the
live views (and history rows the routes pass in); routes render the results with the templates.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.api.console.charts import Point
from pipeline.api.console.series import read_tail
from pipeline.api.service import AlertQuery, BadRequest, alert_labels, group_alerts, parse_matchers
from pipeline.api.views import ACTIVE_STATES, LiveViews
from pipeline.contracts.records import Alert, Anomaly
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SEVERITIES = ("P1", "P2", "P3", "P4")
STATES = ("firing", "pending", "acked", "flapping", "silenced", "resolved", "inactive")
DEFAULT_STATES = ("firing", "pending", "acked", "flapping")  # silenced alerts are hidden unless asked for
GROUPINGS = ("rule", "exchange", "severity", "none")


def when(ts_us: int | None) -> str:
    """A UTC time of day with the date when not today (``-`` for none)."""
    if not ts_us:
        return "-"
    t = time.gmtime(ts_us / 1e6)
    if time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d", time.gmtime()):
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M:%S", t)


def number(value: float | None, digits: int = 3) -> str:
    """A measurement for people: thousands grouped, small values to ``digits`` significant digits."""
    if value is None:
        return "-"
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def ago(ts_us: int | None, now_us: int) -> str:
    if not ts_us:
        return "-"
    return duration(max(0.0, (now_us - ts_us) / 1e6)) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


def safe_link(url: str | None) -> str | None:
    """A runbook URL that may become a link: http(s) or a relative path; never ``javascript:`` or ``data:``."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme in ("http", "https") or (not parts.scheme and not parts.netloc and not url.startswith("//")):
        return url.strip()
    return None


def split_matchers(text: str) -> list[str]:
    """``a="x", b=~"y,z"`` (commas or new lines between matchers, commas inside quotes kept) -> the matchers."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text.strip().strip("{}"):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch in ",\n" and not quoted:
            if "".join(current).strip():
                out.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        out.append("".join(current).strip())
    return out


@dataclass
class AlertFilters:
    states: list[str] = field(default_factory=lambda: list(DEFAULT_STATES))
    severities: list[str] = field(default_factory=list)
    matchers: str = ""
    text: str = ""
    group: str = "rule"
    error: str | None = None  # a bad matcher: shown beside the field, the rest of the filters still apply

    def query(self) -> AlertQuery:
        try:
            matchers = parse_matchers(split_matchers(self.matchers), "matchers")
        except BadRequest as exc:
            self.error = exc.message
            matchers = ()
        return AlertQuery(
            states=tuple(s for s in self.states if s in STATES),
            severities=tuple(s for s in self.severities if s in SEVERITIES),
            matchers=matchers,
            text=self.text or None,
            include_inactive=True,
        )

    def group_by(self) -> list[str] | None:
        if self.group == "none" or not self.group:
            return None
        return ["alertname" if self.group == "rule" else self.group]


def alert_groups(alerts: Sequence[Alert], filters: AlertFilters) -> list[dict[str, Any]]:
    by = filters.group_by()
    if by is None:
        return [{"labels": {}, "count": len(alerts), "alerts": list(alerts)}] if alerts else []
    return group_alerts(alerts, by)


def severity_counts(views: LiveViews) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for alert in views.alerts.by_fingerprint.values():
        if alert.state in ("firing", "acked", "flapping"):
            counts[alert.severity] = counts.get(alert.severity, 0) + 1
    return counts


def overview(views: LiveViews, reader: Any, now_us: int) -> dict[str, Any]:
    """Venues with health and feed rates, reference prices and divergence, firing counts, pipeline health."""
    scores = views.feeds.venue_scores()
    firing: dict[str, int] = {}
    for alert in views.alerts.by_fingerprint.values():
        if alert.state in ("firing", "acked", "flapping") and "exchange" in alert.labels:
            firing[alert.labels["exchange"]] = firing.get(alert.labels["exchange"], 0) + 1
    excluded: dict[str, set[str]] = {}
    for ref in views.markets.reference.values():
        for venue, why in ref.excluded.items():
            excluded.setdefault(venue.partition(":")[0], set()).add(why)
    venues = []
    for exchange in sorted(set(scores) | set(firing)):
        streams = []
        for (ex, stream, source), m in sorted(views.feeds.latest.items()):
            if ex != exchange or source != "collector":
                continue
            rate = m.rate if m.rate is not None else m.messages / (m.interval_us / 1e6)
            streams.append(
                {
                    "stream": stream,
                    "rate": rate,
                    "staleness_s": None if m.staleness_us is None else m.staleness_us / 1e6,
                    "lag_ms": None if m.lag_p99_us is None else m.lag_p99_us / 1e3,
                    "connected": m.connected,
                    "age": ago(m.ts_event, now_us),
                }
            )
        venues.append(
            {
                "exchange": exchange,
                "score": scores.get(exchange),
                "streams": streams,
                "firing": firing.get(exchange, 0),
                "flags": sorted(excluded.get(exchange, ())),
            }
        )
    references = []
    for asset, ref in sorted(views.markets.reference.items()):
        references.append(
            {
                "asset": asset,
                "price": ref.price,
                "venues": ref.venues,
                "at": when(ref.ts_event),
                "divergence": [
                    (venue, bps, ref.excluded.get(venue)) for venue, bps in sorted(ref.divergence_bps.items())
                ],
            }
        )
    health = [a for sid, a in sorted(views.anomalies.latest.items()) if sid.startswith("health:")]
    pipeline_alerts = [
        a for a in views.alerts.by_fingerprint.values() if a.state in ACTIVE_STATES and "exchange" not in a.labels
    ]
    return {
        "venues": venues,
        "references": references,
        "severity": severity_counts(views),
        "ready": reader is None or reader.caught_up.is_set(),
        "behind": getattr(reader, "lag", {}) if reader is not None else {},
        "reader_error": getattr(reader, "error", None),
        "health": health,
        "pipeline_alerts": sorted(pipeline_alerts, key=lambda a: (a.severity, a.rule)),
    }


def silence_matchers(alert: Alert) -> list[str]:
    """The matchers of a silence made from an alert: every label (alertname and severity included), quoted."""
    labels = alert_labels(alert)
    return [f"{name}={_quote(value)}" for name, value in sorted(labels.items())]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass(frozen=True)
class TimelineEntry:
    ts: int
    kind: str  # transition | notification | action
    what: str
    who: str | None
    detail: str | None


def timeline(
    transitions: Iterable[dict[str, Any]], notifications: Iterable[dict[str, Any]], seen: Iterable[Alert]
) -> list[TimelineEntry]:
    """The alert's transitions (ClickHouse, or the versions this process saw) and notifications, newest first."""
    out: dict[tuple[int, str, str], TimelineEntry] = {}
    for row in transitions:
        entry = TimelineEntry(
            int(row["ts_event"]), "transition", str(row["state"]), row.get("actor"), _value_text(row.get("value"))
        )
        out[(entry.ts, entry.kind, entry.what)] = entry
    for alert in seen:
        entry = TimelineEntry(alert.ts_event, "transition", alert.state, alert.actor, _value_text(alert.value))
        out.setdefault((entry.ts, entry.kind, entry.what), entry)
        if alert.comment:
            out[(entry.ts, "comment", alert.comment)] = TimelineEntry(
                alert.ts_event, "comment", "comment", alert.actor, alert.comment
            )
    for row in notifications:
        status = f"{row['status']} via {row['channel']} to {row['receiver']} (attempt {row['attempt']})"
        entry = TimelineEntry(int(row["ts"]), "notification", status, None, row.get("error"))
        out[(entry.ts, entry.kind, entry.what)] = entry
    return sorted(out.values(), key=lambda e: (-e.ts, e.kind))


def _value_text(value: Any) -> str | None:
    return None if value is None else f"value {float(value):.6g}"


def firing_windows(alert: Alert, seen: Sequence[Alert], now_us: int) -> list[tuple[int, int | None, str]]:
    """(start, end, label) of the alert's firing episodes known here: from ``fired_at`` to ``resolved_at``."""
    episodes: dict[int, int | None] = {}
    for version in [*seen, alert]:
        if version.fired_at:
            end = version.resolved_at if version.resolved_at and version.resolved_at >= version.fired_at else None
            episodes[version.fired_at] = end if end is not None else episodes.get(version.fired_at)
    return [(start, end, "firing") for start, end in sorted(episodes.items())]


def threshold_of(alert: Alert) -> float | None:
    """The rule's threshold: the ``threshold`` annotation, else the shipped rule's threshold condition."""
    text = alert.annotations.get("threshold")
    if text:
        try:
            return float(text)
        except ValueError:
            pass
    return rule_threshold(alert.rule)


@functools.cache
def _shipped_leaves() -> dict[str, Any]:
    """Rule name -> its single threshold condition (source, metric, op, value), for the shipped rules (the core
    rules and the demo's)."""
    from pipeline.alerting.errors import RuleLoadError
    from pipeline.alerting.rules import Threshold, leaves, load_rules

    try:
        ruleset = load_rules([Path(__file__).parents[2] / "demo" / "rules.yaml"])
    except RuleLoadError as exc:  # the shipped file is tested; a broken install only loses the threshold line
        log.warning("console: core rules not loaded: %s", exc)
        return {}
    out = {}
    for rule in ruleset.rules:
        found = [leaf for leaf in leaves(rule.condition) if isinstance(leaf, Threshold)]
        if len(found) == 1 and len(leaves(rule.condition)) == 1:
            out[rule.name] = found[0]
    return out


def rule_leaf(rule: str) -> Any:
    """The shipped rule's threshold condition (``None``: not a shipped single-threshold rule)."""
    return _shipped_leaves().get(rule)


def rule_threshold(rule: str) -> float | None:
    leaf = rule_leaf(rule)
    return None if leaf is None else float(leaf.value)


async def leaf_series(settings: Settings, leaf: Any, alert: Alert, tail: int = 5_000) -> list[Point]:
    """The values of the condition's metric for the alert's series: the source topic's recent records turned into
    samples by the rule engine's own source converter, kept when their labels equal the alert's."""
    from pipeline.alerting.errors import AlertingError
    from pipeline.alerting.sources import SOURCES
    from pipeline.contracts.matchers import all_match

    source = SOURCES[leaf.source]
    wanted = {name: alert.labels[name] for name in source.labels if name in alert.labels}

    def convert(value: bytes) -> list[Point]:
        try:
            samples = source.samples(value)
        except AlertingError:
            return []
        return [
            Point(s.ts, s.metrics[leaf.metric])
            for s in samples
            if leaf.metric in s.metrics
            and all(s.labels.get(k) == v for k, v in wanted.items())
            and all_match(leaf.matchers, s.labels)
        ]

    points = await read_tail(settings, source.topic, convert, tail)
    return sorted(points, key=lambda p: p.ts_us)[-2_000:]


def forecast_rows(items: Iterable[tuple[Anomaly, list[Alert], str]]) -> list[dict[str, Any]]:
    rows = []
    for forecast, related, action in items:
        spread = None
        if forecast.lower is not None and forecast.upper is not None:
            spread = (forecast.lower, forecast.upper)
        rows.append(
            {
                "f": forecast,
                "breach_in": duration(forecast.time_to_threshold_s),
                "confidence": forecast.score,
                "spread": spread,
                "related": related,
                "action": action,
            }
        )
    return sorted(rows, key=lambda r: r["f"].time_to_threshold_s if r["f"].time_to_threshold_s is not None else 1e18)

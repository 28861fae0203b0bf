"""Scores the anomaly worker against the simulator's labelled incidents (``marketprism anomaly evaluate``).

Inputs meet it as they meet any downstream consumer: the labels JSON Lines file the simulator writes
(format in docs/simulator.md, read here with a local struct) and the ``ops.anomalies.v1`` topic (or a
JSON Lines dump of it). The series count comes from the keys of the worker's checkpoint changelogs (one
key per series it keeps) plus every series that reported.

For each incident of a scored kind, **detected** means an ``Anomaly(kind="anomaly")`` on one of the kind's
metrics (:data:`RIGHT_METRICS`), on the incident's venue (and symbol, when both name one), with
``ts_event`` (simulated time: bar ends, reference and feed-metric stamps) in
``[start - pre, start + within]``; its latency is ``ts_event - start``. An anomaly is **false** when no
incident on its venue (and symbol, when both name one; venue-wide incidents cover every series of the
venue) has a window ``[start - pre, end + slack]`` around it. The rate is false anomalies per
series-hour over the evaluated span.

``capture(..., inputs=DIR)`` also records the worker's input topics (bars, feed metrics, reference prices) as
JSON Lines, and :func:`replay` streams such a recording through the same :class:`SeriesRegistry` code the
worker runs (each series sees its records in partition order, as in the worker), so one recorded hour of the
real pipeline can be re-scored under another detector configuration without running it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.anomaly.registry import SeriesRegistry
from pipeline.contracts import Anomaly, Bar, FeedMetrics, decoder_for
from pipeline.contracts.labels import IncidentLabel
from pipeline.contracts.labels import read_labels as read_labels
from pipeline.contracts.records import ReferencePrice
from pipeline.contracts.topics import ANOMALIES, BARS_1M, BARS_1S, FEED_METRICS, REFERENCE
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SECOND_US = 1_000_000
INPUTS = (BARS_1S.name, BARS_1M.name, FEED_METRICS.name, REFERENCE.name)
CHANGELOGS = ("anomaly-bar-models-changelog", "anomaly-feed-models-changelog", "anomaly-reference-models-changelog")

# Which series answer which incident kind (metric names as in Anomaly.metric, docs/anomaly.md).
RIGHT_METRICS: dict[str, frozenset[str]] = {
    "price_spike": frozenset({"log_return"}),
    "flash_crash": frozenset({"log_return"}),
    "volume_burst": frozenset({"volume", "trade_count"}),
    "spread_blowout": frozenset({"spread_bps"}),
    "frozen_price": frozenset({"frozen_bars"}),
    "venue_divergence": frozenset({"divergence_bps"}),
    "latency_increase": frozenset({"feed_lag_p99_s"}),
    "feed_stall": frozenset({"feed_staleness_s", "feed_rate"}),
}
MARKET_KINDS = (
    "price_spike", "flash_crash", "volume_burst", "spread_blowout", "frozen_price", "venue_divergence",
    "latency_increase",
)  # fmt: skip


FEED_SUFFIXES = ("lag_p99_s", "rate", "staleness_s")


def family(series_id: str) -> str:
    """``feed`` for the feed-health series (lag, rate, staleness per stream), ``market`` for the rest."""
    return "feed" if series_id.rsplit(":", 1)[-1] in FEED_SUFFIXES else "market"


Label = IncidentLabel  # one line of the simulator's labels file (the contract record)


def read_anomaly_dump(path: Path) -> list[Anomaly]:
    decode = decoder_for(Anomaly).decode
    return [decode(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass(frozen=True)
class Options:
    within_s: float = 5.0  # detected when the first right anomaly is at most this late
    pre_s: float = 1.0  # ... or at most this early (a bar ending just after the start carries it)
    slack_s: float = 60.0  # after an incident's end, its consequences are not false anomalies
    lead_s: float = 300.0  # the evaluated span starts this long before the first incident (default)
    from_us: int | None = None
    to_us: int | None = None


@dataclass
class IncidentResult:
    label: Label
    scored: bool
    detected: bool = False
    latency_s: float | None = None  # first right anomaly within the window, relative to the start
    series_id: str | None = None
    detector: str | None = None
    first_any_s: float | None = None  # first right anomaly anywhere in [start - pre, end + slack]


@dataclass
class Evaluation:
    incidents: list[IncidentResult]
    false: list[Anomaly]
    series: int
    span_us: tuple[int, int]
    anomalies: int
    options: Options = field(default_factory=Options)
    series_by_family: dict[str, int] = field(default_factory=dict)

    def false_rate(self, fam: str) -> float:
        """False anomalies per series-hour of one family (``market`` or ``feed``)."""
        hours = self.series_by_family.get(fam, 0) * (self.span_us[1] - self.span_us[0]) / SECOND_US / 3600.0
        return sum(family(a.series_id) == fam for a in self.false) / hours if hours > 0 else 0.0

    @property
    def series_hours(self) -> float:
        return self.series * (self.span_us[1] - self.span_us[0]) / SECOND_US / 3600.0

    def recall(self, kinds: Iterable[str] = MARKET_KINDS) -> tuple[int, int]:
        chosen = [r for r in self.incidents if r.scored and r.label.kind in set(kinds)]
        return sum(r.detected for r in chosen), len(chosen)

    @property
    def false_per_series_hour(self) -> float:
        return len(self.false) / self.series_hours if self.series_hours > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        hit, total = self.recall()
        return {
            "recall": {"detected": hit, "incidents": total, "ratio": hit / total if total else None},
            "recall_by_kind": {
                kind: dict(zip(("detected", "incidents"), self.recall([kind]), strict=True))
                for kind in sorted({r.label.kind for r in self.incidents if r.scored})
            },
            "false_anomalies": len(self.false),
            "false_by_metric": dict(Counter(a.metric for a in self.false).most_common()),
            "series": self.series,
            "series_hours": round(self.series_hours, 3),
            "false_per_series_hour": round(self.false_per_series_hour, 4),
            "by_family": {
                fam: {
                    "series": n,
                    "false": sum(family(a.series_id) == fam for a in self.false),
                    "false_per_series_hour": round(self.false_rate(fam), 4),
                }
                for fam, n in sorted(self.series_by_family.items())
            },
            "anomalies": self.anomalies,
            "span_us": list(self.span_us),
            "options": self.options.__dict__,
            "incidents": [
                {
                    "id": r.label.id,
                    "kind": r.label.kind,
                    "venue": r.label.venue,
                    "symbol": r.label.symbol,
                    "scored": r.scored,
                    "detected": r.detected,
                    "latency_s": r.latency_s,
                    "series_id": r.series_id,
                    "detector": r.detector,
                    "first_any_s": r.first_any_s,
                }
                for r in self.incidents
            ],
        }


def related(label: Label, anomaly: Anomaly) -> bool:
    """Whether an incident can explain an anomaly: same venue, and same symbol unless either is venue-wide."""
    if anomaly.exchange != label.venue:
        return False
    return label.symbol is None or anomaly.symbol is None or anomaly.symbol == label.symbol


def evaluate(
    labels: Sequence[Label], anomalies: Sequence[Anomaly], series: Iterable[str], options: Options | None = None
) -> Evaluation:
    """Detection and latency per incident, and the false anomalies over the evaluated span."""
    o = options or Options()
    pre, within, slack = (round(s * SECOND_US) for s in (o.pre_s, o.within_s, o.slack_s))
    found = sorted((a for a in anomalies if a.kind == "anomaly"), key=lambda a: a.ts_event)
    results = []
    # with an explicit span, only the incidents whose detection window lies inside it are scored
    scorable = [
        lb for lb in labels
        if (o.from_us is None or lb.start_us >= o.from_us) and (o.to_us is None or lb.start_us + within <= o.to_us)
    ]  # fmt: skip
    for label in scorable:
        metrics = RIGHT_METRICS.get(label.kind)
        result = IncidentResult(label, scored=metrics is not None)
        if metrics is not None:
            lo, hi = label.start_us - pre, label.end_us + slack
            right = [a for a in found if a.metric in metrics and related(label, a) and lo <= a.ts_event <= hi]
            if right:
                result.first_any_s = (right[0].ts_event - label.start_us) / SECOND_US
            early = [a for a in right if a.ts_event <= label.start_us + within]
            if early:
                first = early[0]
                result.detected = True
                result.latency_s = (first.ts_event - label.start_us) / SECOND_US
                result.series_id, result.detector = first.series_id, first.detector
        results.append(result)
    # the span follows the market incidents (the demo's injected pipeline faults, venue "pipeline", may start
    # at the scenario's first second and would stretch the lead before the first incident)
    spanned = [lb for lb in labels if lb.venue != "pipeline"] or list(labels)
    if spanned:
        start = o.from_us if o.from_us is not None else min(lb.start_us for lb in spanned) - round(o.lead_s * SECOND_US)
        end = o.to_us if o.to_us is not None else max(lb.end_us for lb in spanned) + slack
    else:
        start = o.from_us if o.from_us is not None else (found[0].ts_event if found else 0)
        end = o.to_us if o.to_us is not None else (found[-1].ts_event if found else start)
    in_span = [a for a in found if start <= a.ts_event <= end]
    false = [
        a for a in in_span
        if not any(related(lb, a) and lb.start_us - pre <= a.ts_event <= lb.end_us + slack for lb in labels)
    ]  # fmt: skip
    all_series = set(series) | {a.series_id for a in found}
    by_family = Counter(family(sid) for sid in all_series)
    return Evaluation(results, false, len(all_series), (start, end), len(in_span), o, dict(by_family))


# -- reading the topics ------------------------------------------------------------------------------------------


@dataclass
class Capture:
    """What was read from the broker: the anomalies and the series ids the worker keeps."""

    anomalies: list[Anomaly] = field(default_factory=list)
    series: set[str] = field(default_factory=set)

    def dump(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        encoder = msgspec.json.Encoder()
        (directory / "anomalies.jsonl").write_bytes(b"".join(encoder.encode(a) + b"\n" for a in self.anomalies))
        (directory / "series.txt").write_text("".join(f"{s}\n" for s in sorted(self.series)))

    @classmethod
    def load(cls, directory: Path) -> Capture:
        series = directory / "series.txt"
        return cls(
            read_anomaly_dump(directory / "anomalies.jsonl"),
            set(series.read_text().split()) if series.exists() else set(),
        )


async def capture(
    settings: Settings,
    follow: bool = False,
    dump: Path | None = None,
    dump_every_s: float = 10.0,
    inputs: Path | None = None,
) -> Capture:
    """Read ``ops.anomalies.v1`` and the checkpoint changelogs' keys from the beginning: up to their current
    ends, or (``follow``) until SIGINT/SIGTERM or the broker goes away, dumping every ``dump_every_s``; with
    ``inputs``, also record the worker's input topics there (``<topic>.jsonl``, the records as on the wire)."""
    out = Capture()
    decode = decoder_for(Anomaly).decode
    names = [settings.topic(ANOMALIES.name), *(settings.topic(c) for c in CHANGELOGS)]
    recorders = _open_recorders(settings, inputs) if inputs is not None else {}
    names += list(recorders)
    consumer = make_consumer(settings.kafka, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        known = await consumer.topics()
        tps = [
            TopicPartition(t, p) for t in names if t in known for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = None if follow else await log_end_offsets(settings.kafka, tps)
        anomaly_topic = names[0]
        last_dump = loop.time()
        idle_checks = 0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for m in messages:
                    if tp.topic == anomaly_topic:
                        try:
                            out.anomalies.append(decode(m.value))
                        except msgspec.DecodeError as exc:
                            log.warning("skipping an undecodable anomaly at %s:%d: %s", tp, m.offset, exc)
                    elif tp.topic in recorders:
                        if m.value and b"\n" not in m.value:
                            recorders[tp.topic].write(m.value + b"\n")
                    elif m.key:
                        out.series.add(m.key.decode(errors="replace"))
            if ends is not None:
                positions = [await _position(consumer, tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                continue
            if dump is not None and loop.time() - last_dump >= dump_every_s:
                out.dump(dump)
                last_dump = loop.time()
            if not batch:
                idle_checks += 1
                if idle_checks % 10 == 0 and not await _broker_up(settings):
                    log.info("broker gone: stopping the capture")
                    break
            else:
                idle_checks = 0
    finally:
        if follow:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        for recorder in recorders.values():  # what was read is kept first, whatever stopping the consumer does
            recorder.close()
        if dump is not None:
            out.dump(dump)
        await _stop(consumer)
    return out


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop the consumer; with the broker gone, aiokafka's stop re-raises the cancellation of its fetch task
    (seen after an hour run: the traceback ended the command before its last dump). Only a cancellation of this
    task itself goes on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("consumer stopped with its fetch task cancelled (the broker went away)")


def replay(
    inputs: Path, config: DetectorConfig, report_floor: float, policy: dict[str, dict[str, Any]] | None = None
) -> Capture:
    """Stream a recording of the worker's inputs through :class:`SeriesRegistry` (the worker's code): the
    anomalies it reports and the series it keeps."""
    out = Capture()
    kinds: list[tuple[str, Any, str]] = [
        (BARS_1S.name, Bar, "on_bar"), (BARS_1M.name, Bar, "on_bar"),
        (FEED_METRICS.name, FeedMetrics, "on_feed_metrics"), (REFERENCE.name, ReferencePrice, "on_reference"),
    ]  # fmt: skip
    for name, record_type, method in kinds:
        path = inputs / f"{name}.jsonl"
        if not path.exists():
            continue
        registry = SeriesRegistry(config, report_floor, policy=policy)
        decode = decoder_for(record_type).decode
        with path.open("rb") as lines:
            for line in lines:
                try:
                    record = decode(line)
                except msgspec.DecodeError:
                    continue  # the worker sends those to the DLQ
                found, _ = getattr(registry, method)(record)
                out.anomalies += found
        out.series |= set(registry.series)
    return out


def _open_recorders(settings: Settings, inputs: Path) -> dict[str, Any]:
    inputs.mkdir(parents=True, exist_ok=True)
    return {settings.topic(name): (inputs / f"{name}.jsonl").open("wb") for name in INPUTS}


async def _position(consumer: Any, tp: TopicPartition) -> int:
    return int(await consumer.position(tp))


async def _broker_up(settings: Settings) -> bool:
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), 2.0)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return True


def report_lines(ev: Evaluation) -> list[str]:
    """A plain-text report (the CLI prints it as a table; tests and docs use the same numbers)."""
    hit, total = ev.recall()
    lines = [f"recall within {ev.options.within_s:g} s: {hit}/{total} market incidents"]
    for kind in MARKET_KINDS:
        k_hit, k_total = ev.recall([kind])
        if k_total:
            lines.append(f"  {kind}: {k_hit}/{k_total}")
    lines.append(
        f"false anomalies: {len(ev.false)} on {ev.series} series over {(ev.span_us[1] - ev.span_us[0]) / 3.6e9:.3f} h"
        f" = {ev.false_per_series_hour:.4f} per series-hour"
    )
    for fam, n in sorted(ev.series_by_family.items()):
        count = sum(family(a.series_id) == fam for a in ev.false)
        lines.append(f"  {fam} series: {count} on {n} = {ev.false_rate(fam):.4f} per series-hour")
    lines.append("  by metric: " + json.dumps(dict(Counter(a.metric for a in ev.false).most_common())))
    return lines

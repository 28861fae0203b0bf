"""The rule engine process: an aiokafka loop around :class:`AlertEngine`.

Why not a Faust agent: the engine must (1) read the compacted ``ops.alerts.v1`` and its checkpoint to
the end *before* consuming inputs, (2) seek every input partition to the offsets stored *with* the
evaluation state, and (3) hold event time back while a partition lags (a watermark over partitions),
so that a restart replays the same inputs into the same state and regenerates the same transitions.
Faust offers none of these (its tables restore from changelogs at their own offsets, its timers are
wall-clock) and costs ~45x per record (DESIGN.md baselines).

Exactly-once transitions without Kafka transactions: each transition carries a per-fingerprint
``version``; after a restart the engine resumes from its last checkpoint, regenerates the transitions
after it deterministically and publishes only versions above those already on ``ops.alerts.v1``.
Order of durable writes per batch: transitions (flushed) -> checkpoint (flushed).

Checkpoints are sealed: each carries an HMAC-SHA256 tag of its value in the header ``marketprism-seal``
(:mod:`pipeline.kafka.sealed`, key ``security.checkpoint_key``). At start the engine resumes from its latest
checkpoint whose tag verifies and whose state decodes; a forged, unsealed or unreadable one is dead-lettered
(``checkpoint_*`` reasons, ``marketprism_alerting_checkpoints_refused_total``) and skipped. Any input record
whose processing raises is dead-lettered (``processing_error``) and the engine goes on with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from pipeline.alerting import control
from pipeline.alerting.engine import AlertEngine
from pipeline.alerting.errors import BadInput
from pipeline.alerting.lagprobe import default_groups, run_probe
from pipeline.alerting.metrics import (
    ACTIVE,
    BAD_INPUTS,
    CHECKPOINTS,
    CHECKPOINTS_REFUSED,
    EVENT_TIME,
    INPUTS,
    REPLAYED,
    TRANSITIONS,
)
from pipeline.alerting.rules import RuleSet
from pipeline.alerting.sources import SOURCES, Source
from pipeline.clock import Clock, SystemClock
from pipeline.contracts import DecodeError, decoder_for, encode
from pipeline.contracts.records import Alert, AlertAction, RuleEngineCheckpoint, Silence
from pipeline.kafka import DeadLetterPublisher, RecordProducer, make_consumer, make_producer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.kafka.sealed import Sealer, sealer_for
from pipeline.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_MAX_BYTES = 16 * 1024 * 1024
SEAL_HEADER = "marketprism-seal"
SEAL_PURPOSE = "alerting-checkpoint"


@dataclass(frozen=True)
class RunnerOptions:
    engine_id: str = "alerting"
    start_from: str = "latest"  # where inputs start without a checkpoint: "latest" | "earliest"
    idle_advance_us: int = 30_000_000  # advance event time at wall speed after this long without input (0: never)
    checkpoint_interval_us: int = 1_000_000
    poll_ms: int = 200
    # Tansu holds a fetch for its whole max wait when little data is there: aiokafka's 500 ms default would be
    # most of the condition -> notification latency (docs/benchmarks.md, notifier section)
    fetch_wait_ms: int = 100
    lag_groups: tuple[str, ...] | None = None  # consumer groups the lag probe measures (None: MarketPrism's own)
    lag_interval_us: int = 2_000_000  # 0 disables the lag probe; the stall rules' bound (15 s) is ~7 rounds
    # a checkpoint at least this often, input or not: the heartbeat the notifier's dead-man's switch watches
    # (pipeline/alerting/deadman.py)
    heartbeat_us: int = 5_000_000


class RuleEngineRunner:
    def __init__(
        self, settings: Settings, rules: RuleSet, options: RunnerOptions = RunnerOptions(), clock: Clock | None = None
    ):
        self.settings = settings
        self.options = options
        self.clock = clock or SystemClock()
        self.engine = AlertEngine(rules)
        self.published: dict[str, int] = {}
        self._sources: dict[str, Source] = {SOURCES[s].topic: SOURCES[s] for s in self.engine.evaluator.sources()}
        self._partition_ts: dict[TopicPartition, int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._last_checkpoint_wall = 0
        self._last_input_wall = 0
        self._idle_base: tuple[int, int] | None = None  # (event time, wall time) when inputs went idle
        self._dirty = False
        self.ready = asyncio.Event()
        self.sealer: Sealer = sealer_for(settings, SEAL_PURPOSE)
        self._refused: list[tuple[str, str, ConsumerRecord[bytes, bytes]]] = []  # dead-lettered once the DLQ runs

    # ------------------------------------------------------------------ start

    def _refuse(self, reason: str, error: str, message: ConsumerRecord[bytes, bytes]) -> None:
        CHECKPOINTS_REFUSED.labels(reason=reason).inc()
        log.error("checkpoint at offset %d refused (%s): %s", message.offset, reason, error)
        self._refused.append((reason, error, message))

    def _verified(self, message: ConsumerRecord[bytes, bytes]) -> RuleEngineCheckpoint | None:
        """The checkpoint of one record if its seal verifies and it decodes; else refused (None)."""
        value = message.value or b""
        if len(value) > self.sealer.max_bytes:
            self._refuse("checkpoint_too_large", f"{len(value)} bytes", message)
            return None
        tags = [v for k, v in (message.headers or ()) if k == SEAL_HEADER]
        if not tags:
            self._refuse("checkpoint_unsealed", "no seal header", message)
            return None
        if not self.sealer.verify(value, tags[-1]):
            self._refuse("checkpoint_bad_tag", "seal does not verify under any accepted key", message)
            return None
        try:
            return decoder_for(RuleEngineCheckpoint).decode(value)
        except DecodeError as exc:
            self._refuse("checkpoint_corrupt", str(exc), message)
            return None

    async def _restore(self) -> dict[str, int]:
        records = await control.read_raw(self.settings, control.CHECKPOINTS_TOPIC)
        mine = [m for m in records if m.key == self.options.engine_id.encode() and m.value]
        alerts = await control.current_alerts(self.settings)
        self.published = {fp: a.version for fp, a in alerts.items()}
        for message in reversed(mine):  # the newest checkpoint that verifies and restores
            checkpoint = self._verified(message)
            if checkpoint is None:
                continue
            try:
                self.engine.restore(checkpoint.state)
            except Exception as exc:  # sealed by us but unreadable now (an older state format): the one before
                self.engine = AlertEngine(self.engine.ruleset)
                self._refuse("checkpoint_corrupt", f"{type(exc).__name__}: {exc}", message)
                continue
            log.info("resumed from checkpoint at event time %d (%d alerts on the topic)", self.engine.now, len(alerts))
            return checkpoint.offsets
        if self.options.start_from == "earliest":
            log.info("no checkpoint: replaying inputs from the beginning (%d alerts already published)", len(alerts))
        else:
            self.engine.seed(list(alerts.values()))
            log.info("no checkpoint: resumed %d alerts from %s", len(alerts), control.ALERTS_TOPIC)
        return {}

    def _input_topics(self) -> list[str]:
        return [*(s.topic for s in self._sources.values()), control.SILENCES_TOPIC, control.ACTIONS_TOPIC]

    async def _position_inputs(self, consumer, offsets: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
        tps = [tp for name in self._input_topics() for tp in control.partitions(self.settings, name)]
        consumer.assign(tps)
        self._ends = await log_end_offsets(self.settings.kafka, tps)
        for tp in tps:
            name = tp.topic.removeprefix(self.settings.topic_prefix)
            stored = offsets.get(f"{name}:{tp.partition}")
            if stored is not None:
                consumer.seek(tp, stored)
            elif name == control.SILENCES_TOPIC or (
                name != control.ACTIONS_TOPIC and self.options.start_from == "earliest"
            ):
                await consumer.seek_to_beginning(tp)
            else:
                await consumer.seek_to_end(tp)
            self._positions[tp] = await consumer.position(tp)

    # ------------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        producer = make_producer(self.settings.kafka, max_request_size=CHECKPOINT_MAX_BYTES)
        await producer.start()
        dlq = DeadLetterPublisher(RecordProducer(producer, self.settings.topic_prefix), "alerting")
        consumer = make_consumer(self.settings.kafka, group_id=None, fetch_max_wait_ms=self.options.fetch_wait_ms)
        await consumer.start()
        probe: asyncio.Task[None] | None = None
        try:
            offsets = await self._restore()
            for reason, error, message in self._refused:
                await dlq.publish(
                    reason,
                    error,
                    (message.value or b"")[:4096].hex(),
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                )
            self._refused.clear()
            await self._position_inputs(consumer, offsets)
            self._last_input_wall = self.clock.now_us()
            if self.options.lag_interval_us and "consumer_lag" in self.engine.evaluator.sources():
                groups = list(self.options.lag_groups or default_groups(self.settings))
                probe = asyncio.create_task(
                    run_probe(self.settings, producer, groups, self.options.lag_interval_us / 1e6, self.clock, stop)
                )
            self.ready.set()
            log.info("rule engine ready: %d input partitions, event time %d", len(self._positions), self.engine.now)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.options.poll_ms, max_records=5000)
                alerts: list[Alert] = []
                for tp, messages in batch.items():
                    for message in messages:
                        alerts += await self._handle(tp, message, dlq)
                        self._positions[tp] = message.offset + 1
                    self._dirty = True
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self._ends[tp] = max(self._ends.get(tp, 0), hw)
                alerts += self._advance(bool(batch))
                await self._publish(producer, alerts)
                await self._maybe_checkpoint(producer, force=bool(alerts))
            await self._maybe_checkpoint(producer, force=True)
        finally:
            if probe is not None:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
            with contextlib.suppress(Exception):
                await consumer.stop()
            await producer.stop()

    async def _handle(self, tp: TopicPartition, message, dlq: DeadLetterPublisher) -> list[Alert]:  # type: ignore[no-untyped-def]
        name = tp.topic.removeprefix(self.settings.topic_prefix)
        try:
            if message.value is None:
                raise BadInput("empty", f"{name}: record without a value")
            if name == control.SILENCES_TOPIC:
                return self.engine.apply_silence(_decode(Silence, message.value, name))
            if name == control.ACTIONS_TOPIC:
                return self.engine.apply_action(_decode(AlertAction, message.value, name))
            source = self._sources[name]
            out: list[Alert] = []
            for sample in source.samples(message.value):
                INPUTS.labels(source=source.name).inc()
                self._partition_ts[tp] = max(self._partition_ts.get(tp, 0), sample.ts)
                out += self.engine.process(sample)
            return out
        except BadInput as exc:
            reason, error = exc.reason, str(exc)
        except Exception as exc:  # a record that decodes but breaks evaluation: dead letter, go on with the next
            log.exception("%s record at %d:%d raised while evaluating", name, tp.partition, message.offset)
            reason, error = "processing_error", f"{name}: {type(exc).__name__}: {exc}"
        BAD_INPUTS.labels(reason=reason).inc()
        await dlq.publish(
            reason, error, message.value or b"", topic=tp.topic, partition=tp.partition, offset=message.offset
        )
        return []

    def _watermark(self) -> int | None:
        """Event time every data partition has reached: a partition still behind its end holds it back."""
        sources = {tp: self._sources.get(tp.topic.removeprefix(self.settings.topic_prefix)) for tp in self._positions}
        data = [tp for tp, source in sources.items() if source is not None and source.event_time]
        if not data:  # only wall-clock sources: their time is all there is
            data = [tp for tp, source in sources.items() if source is not None]
        behind = [tp for tp in data if self._positions[tp] < self._ends.get(tp, 0)]
        if behind:
            held = [self._partition_ts.get(tp) for tp in behind]
            return None if any(t is None for t in held) else min(t for t in held if t is not None)
        seen = [self._partition_ts[tp] for tp in data if tp in self._partition_ts]
        return max(seen) if seen else None

    def _advance(self, had_input: bool) -> list[Alert]:
        wall = self.clock.now_us()
        watermark = self._watermark()
        out: list[Alert] = []
        if watermark is not None and watermark > self.engine.now:
            out += self.engine.advance(watermark)
            self._idle_base = None
        if had_input:
            self._last_input_wall = wall
            return out
        idle_for = wall - self._last_input_wall
        if self.options.idle_advance_us and idle_for >= self.options.idle_advance_us and self.engine.now:
            if self._idle_base is None:
                self._idle_base = (self.engine.now, self._last_input_wall)
            base_event, base_wall = self._idle_base
            out += self.engine.advance(base_event + (wall - base_wall))
        EVENT_TIME.set(self.engine.now / 1_000_000)
        return out

    async def _publish(self, producer: AIOKafkaProducer, alerts: list[Alert]) -> None:
        """Send new transitions and wait for every acknowledgement (a failure stops the process before
        any checkpoint covers the lost transition; the restart regenerates it)."""
        pending = []
        topic = self.settings.topic(control.ALERTS_TOPIC)
        for alert in alerts:
            if alert.version <= self.published.get(alert.fingerprint, 0):
                REPLAYED.inc()
                log.info(
                    "%s %s v%d regenerated after restart: already published",
                    alert.rule,
                    alert.fingerprint,
                    alert.version,
                )
                continue
            pending.append(await producer.send(topic, encode(alert), key=alert.fingerprint.encode()))
            self.published[alert.fingerprint] = alert.version
            TRANSITIONS.labels(rule=alert.rule, state=alert.state).inc()
            # firing/resolved are news for an operator; pending/inactive churn (a sparse stream's rate flickering
            # under its threshold for a second) is counted in the metric and logged at debug level only
            level = logging.INFO if alert.state in ("firing", "resolved") else logging.DEBUG
            log.log(
                level, "%s %s %s v%d at %d", alert.rule, alert.fingerprint, alert.state, alert.version, alert.ts_event
            )
        if pending:
            await asyncio.gather(*pending)
        ACTIVE.set(len(self.engine.active()))

    async def _maybe_checkpoint(self, producer: AIOKafkaProducer, *, force: bool) -> None:
        wall = self.clock.now_us()
        since = wall - self._last_checkpoint_wall
        if not self._dirty and since < self.options.heartbeat_us:
            return
        if self._dirty and not force and since < self.options.checkpoint_interval_us:
            return
        offsets = {
            f"{tp.topic.removeprefix(self.settings.topic_prefix)}:{tp.partition}": pos
            for tp, pos in self._positions.items()
        }
        checkpoint = RuleEngineCheckpoint(
            engine_id=self.options.engine_id, ts=wall, offsets=offsets, state=self.engine.snapshot().decode()
        )
        value = encode(checkpoint)
        if len(value) > self.sealer.max_bytes:  # a restart would refuse it: say so while there is time to act
            log.error(
                "checkpoint of %d bytes exceeds security.checkpoint_max_bytes (%d): raise it or a restart starts cold",
                len(value),
                self.sealer.max_bytes,
            )
        await producer.send_and_wait(
            self.settings.topic(control.CHECKPOINTS_TOPIC),
            value,
            key=self.options.engine_id.encode(),
            headers=[(SEAL_HEADER, self.sealer.tag(value))],
        )
        CHECKPOINTS.inc()
        self._last_checkpoint_wall = wall
        self._dirty = False


def _decode(record_type, value: bytes, name: str):  # type: ignore[no-untyped-def]
    try:
        return decoder_for(record_type).decode(value)
    except DecodeError as exc:
        raise BadInput("decode_error", f"{name}: {exc}") from exc

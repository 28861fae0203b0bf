"""The rule engine's dead-man's switch: a rule engine cannot report its own death, so another process watches its
heartbeat and raises ``RuleEngineDown`` on ``ops.alerts.v1`` when it stops.

Heartbeat: the engine writes a sealed checkpoint to ``ops.alerting_checkpoints.v1`` at least every
``RunnerOptions.heartbeat_us`` (5 s) from its main loop, input or not, so the topic's end offsets move while the
engine evaluates. The watcher (run inside ``marketprism notify``, the process that must deliver the page anyway;
Alertmanager's answer is an always-firing Watchdog alert and an outside service paging on its absence, which puts
the watching in a third system) reads those end offsets every second (a ListOffsets call: no checkpoint body is
fetched) and fires when they have not moved for ``silence_s`` wall seconds (15 s: three missed heartbeats) once it
has seen the engine beat (a move), or ``startup_grace_s`` (120 s) after its own start if it never has but an
engine has checkpointed here before (one that did not come back; the grace keeps a slow start-up on a loaded
machine from paging; a notifier used without any engine, an empty topic, is never paged); it resolves on the next
move. A killed (SIGKILL), hung (SIGSTOP) or wedged engine is thus paged 15-17 s after it stops, by a process that
does not share its fate. One watcher watches every engine writing to the topic (a deployment runs one engine, or
several behind one checkpoint topic: any heartbeat counts).

Transitions follow the engine's own format (fingerprinted, versioned) so the notifier, the API and the console
treat the page as any other alert; the engine skips the rule when it seeds alerts it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.alerting import control
from pipeline.alerting.evaluate import fingerprint
from pipeline.clock import Clock
from pipeline.contracts import encode
from pipeline.contracts.records import Alert
from pipeline.kafka import make_producer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

RULE = "RuleEngineDown"
SILENCE_S = 15.0  # wall seconds without a heartbeat: three missed 5 s heartbeats
STARTUP_GRACE_S = 120.0  # wall seconds an engine never seen beating has to start before it is paged
# as the engine labels its alerts (engine.py: the rule's labels, its `by` values, alertname and severity)
LABELS = {"component": "alerting", "category": "pipeline", "team": "platform", "alertname": RULE, "severity": "P1"}


@dataclass
class EngineWatch:
    """The watcher's state machine, fed end offsets and times; returns the transitions to publish."""

    silence_s: float = SILENCE_S
    startup_grace_s: float = STARTUP_GRACE_S
    fingerprint: str = field(default_factory=lambda: fingerprint(RULE, {"component": "alerting"}))
    version: int = 0
    firing: Alert | None = None
    _end: int | None = None
    _moved_at: float | None = None  # wall seconds of the last move seen (or of the first reading)
    _started_at: float | None = None  # wall seconds of the first reading
    _beat_seen: bool = False

    def resume(self, current: Alert | None) -> None:
        """Continue from the alert's state on ``ops.alerts.v1`` (a restarted watcher keeps its versions)."""
        if current is not None:
            self.version = current.version
            self.firing = current if current.state == "firing" else None

    def observe(self, end: int, wall_s: float, now_us: int) -> Alert | None:
        """Fold one reading of the heartbeat topic's end offset; a transition when the engine died or came back."""
        if self._started_at is None:
            self._started_at = wall_s
        if self._end is None or end != self._end:
            first = self._end is None
            self._end, self._moved_at = end, wall_s
            self._beat_seen = self._beat_seen or not first
            if self.firing is not None and not first:  # a heartbeat after the silence: the engine is back
                return self._transition("resolved", now_us, 0.0)
            return None
        assert self._moved_at is not None
        silent = wall_s - self._moved_at
        known = self._beat_seen or self._end > 0  # an engine has run against this topic
        armed = self._beat_seen or (known and wall_s - self._started_at >= self.startup_grace_s)
        if self.firing is None and armed and silent >= self.silence_s:
            return self._transition("firing", now_us, silent)
        return None

    def _transition(self, state: str, now_us: int, silent_s: float) -> Alert:
        self.version += 1
        since = self.firing.active_since if self.firing is not None else now_us
        alert = Alert(
            fingerprint=self.fingerprint,
            rule=RULE,
            state=state,  # type: ignore[arg-type]
            severity="P1",
            labels=dict(LABELS),
            annotations={
                "summary": f"rule engine silent for {silent_s:.0f} s: no alert rule is being evaluated"
                if state == "firing"
                else "rule engine heartbeat back",
                "description": "No checkpoint (the engine's heartbeat) on ops.alerting_checkpoints.v1 for "
                f"{self.silence_s:.0f} s: the engine is dead, hung or cut off from the broker.",
            },
            ts_event=now_us,
            active_since=since,
            fired_at=self.firing.fired_at if self.firing is not None else now_us,
            resolved_at=now_us if state == "resolved" else None,
            value=round(silent_s, 3),
            version=self.version,
        )
        self.firing = alert if state == "firing" else None
        return alert


async def watch_engine(
    settings: Settings, stop: asyncio.Event, clock: Clock, silence_s: float = SILENCE_S, interval_s: float = 1.0
) -> None:
    """Watch the engine's heartbeat until ``stop``, publishing ``RuleEngineDown`` transitions. Broker errors are
    logged and the watch goes on (a reading that fails is no heartbeat, but also no evidence of a death: the
    silence is measured between readings that succeed, which is what a partitioned broker looks like too)."""
    watch = EngineWatch(silence_s=silence_s)
    with contextlib.suppress(KafkaError, TimeoutError):
        watch.resume((await control.current_alerts(settings)).get(watch.fingerprint))
    partitions = control.partitions(settings, control.CHECKPOINTS_TOPIC)
    producer: AIOKafkaProducer = make_producer(settings.kafka)
    await producer.start()
    log.info("watching the rule engine's heartbeat (page after %.0f s of silence)", silence_s)
    try:
        while not stop.is_set():
            try:
                ends = await asyncio.wait_for(log_end_offsets(settings.kafka, partitions), 10.0)
                alert = watch.observe(sum(ends.values()), time.monotonic(), clock.now_us())
                if alert is not None:
                    log.warning("%s %s v%d (%s)", alert.rule, alert.state, alert.version, alert.annotations["summary"])
                    await producer.send_and_wait(
                        settings.topic(control.ALERTS_TOPIC), encode(alert), key=alert.fingerprint.encode()
                    )
            except (KafkaError, TimeoutError) as exc:
                log.warning("rule engine heartbeat not read: %s", exc or "timeout")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        await producer.stop()

"""The engine: composes the stages (evaluate -> lifecycle -> flap -> inhibit/silence presentation) and
turns every change of an alert's presented state into a versioned :class:`Alert` record.

Time is event time only: ``process`` evaluates a sample's series at the sample's time (after running
that series' own deadlines up to it), ``advance`` moves every series to a watermark. So a replay of the
same inputs yields the same transitions, which is what makes restart without loss or duplicates work.
"""

from __future__ import annotations

import logging

import msgspec

from pipeline.alerting import flap, inhibit, lifecycle, silence
from pipeline.alerting.conditions import NEVER
from pipeline.alerting.errors import BadInput
from pipeline.alerting.evaluate import Evaluator, Instance
from pipeline.alerting.lifecycle import Slot
from pipeline.alerting.rules import Rule, RuleSet
from pipeline.alerting.sources import Sample
from pipeline.alerting.templates import render
from pipeline.contracts.records import Alert, AlertAction, Silence

log = logging.getLogger(__name__)

_SHOWN_ACTIVE = ("firing", "acked", "silenced")


class EngineState(msgspec.Struct, kw_only=True):
    """Everything the engine needs to resume (the checkpoint's ``state``)."""

    now: int = 0
    instances: list[Instance] = []
    peers: dict[str, dict[str, list[tuple[int, str]]]] = {}
    slots: list[Slot] = []
    silences: list[Silence] = []


_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(EngineState)


class AlertEngine:
    def __init__(self, rules: RuleSet):
        self.ruleset = rules
        self.rules: dict[str, Rule] = {r.name: r for r in rules.rules}
        self.evaluator = Evaluator(rules)
        self.slots: dict[str, Slot] = {}
        self.silences: dict[str, Silence] = {}
        self.now = 0

    # ------------------------------------------------------------------ inputs

    def process(self, sample: Sample) -> list[Alert]:
        """Evaluate every rule instance a sample feeds, at the sample's event time."""
        out: list[Alert] = []
        for instance, indexes in self.evaluator.route(sample):
            deferred = self.evaluator.deferred(instance)
            if not deferred:
                self._advance_instance(instance, sample.ts, out, inclusive=False)
            self.evaluator.apply(instance, indexes, sample)
            if not deferred:
                self._observe(instance, max(sample.ts, instance.evaluated_at), out)
        return out

    def advance(self, until: int) -> list[Alert]:
        """Move event time to ``until``: run every deadline (for, keep_firing_for, absence, windows,
        flap quiet periods, silence starts and ends) up to it."""
        out: list[Alert] = []
        while (boundary := silence.next_boundary(self.silences, self.now)) <= until:
            self._advance_all(boundary, out)
            self.now = boundary
            self._present_all(boundary, out)
            self.silences = {k: s for k, s in self.silences.items() if s.ends_at > boundary}
        self._advance_all(until, out)
        self.now = max(self.now, until)
        return out

    def apply_action(self, action: AlertAction) -> list[Alert]:
        """An operator's ack / unack / resolve, applied at the engine's current event time."""
        slot = self.slots.get(action.fingerprint)
        if slot is None:
            raise BadInput("unknown_alert", f"{action.action} of unknown alert {action.fingerprint}")
        out: list[Alert] = []
        if action.action in ("ack", "unack"):
            if not lifecycle.acknowledge(slot, action.actor, action.comment, action.action == "ack"):
                raise BadInput("not_firing", f"{action.action} of {action.fingerprint}: alert is {slot.shown}")
            self._present(slot, self.now, out)
        else:
            change = lifecycle.resolve_manually(slot, self.now, action.actor, action.comment)
            if change is None:
                raise BadInput("not_active", f"resolve of {action.fingerprint}: alert is {slot.shown}")
            self._present_all(self.now, out, also=slot)
        return out

    def apply_silence(self, item: Silence) -> list[Alert]:
        silence.check(item)
        self.silences[item.silence_id] = item
        if item.ends_at <= self.now:
            del self.silences[item.silence_id]
        out: list[Alert] = []
        self._present_all(self.now, out)
        return out

    # ------------------------------------------------------------------ stages

    def _slot(self, instance: Instance) -> Slot:
        slot = self.slots.get(instance.fingerprint)
        if slot is None:
            rule = self.rules[instance.rule]
            labels = dict(instance.series)
            labels.update({k: render(v, instance.series, None) for k, v in rule.labels.items()})
            labels.update(alertname=rule.name, severity=rule.severity)
            slot = Slot(fingerprint=instance.fingerprint, rule=rule.name, severity=rule.severity, labels=labels)
            self.slots[instance.fingerprint] = slot
        return slot

    def _deadline(self, instance: Instance) -> int:
        when = self.evaluator.next_change(instance)
        slot = self.slots.get(instance.fingerprint)
        if slot is not None:
            rule = self.rules[instance.rule]
            when = min(when, lifecycle.deadline(slot, rule), flap.quiet_deadline(slot, rule.flap))
        return when

    def _advance_instance(self, instance: Instance, until: int, out: list[Alert], *, inclusive: bool) -> None:
        while True:
            when = self._deadline(instance)
            if when == NEVER or when > until or (when == until and not inclusive):
                return
            self._observe(instance, max(when, instance.evaluated_at), out)

    def _advance_all(self, until: int, out: list[Alert]) -> None:
        for instance in list(self.evaluator.instances.values()):
            self._advance_instance(instance, until, out, inclusive=True)

    def _observe(self, instance: Instance, at: int, out: list[Alert]) -> None:
        rule = self.rules[instance.rule]
        observation = self.evaluator.observe(instance, at)
        slot = self._slot(instance)
        change = lifecycle.observe(slot, rule, observation)
        if change is not None:
            flap.record(slot, change, rule.flap)
            self._present_all(change.ts, out, also=slot)
        elif flap.settle(slot, rule.flap, at):
            self._present(slot, at, out)

    def _presented(self, slot: Slot, at: int) -> tuple[str, str | None, str | None]:
        if slot.flapping:
            return "flapping", None, f"{len(slot.changes)} firing/resolved changes; held until quiet"
        if slot.phase != "firing":
            manual = slot.phase == "resolved" and slot.rearm
            return slot.phase, (slot.actor if manual else None), (slot.comment if manual else None)
        muted = silence.muting(self.silences, slot.labels, at)
        if muted is not None:
            return "silenced", f"silence:{muted.silence_id}", muted.comment
        firing = [s for s in self.slots.values() if s.phase == "firing"]
        source = inhibit.inhibitor(slot, self.ruleset.inhibit_rules, firing)
        if source is not None:
            labels = ",".join(f"{k}={v}" for k, v in sorted(source.labels.items()) if k not in ("severity",))
            return "silenced", "inhibition", f"inhibited by {source.rule} ({source.fingerprint}) {{{labels}}}"
        if slot.acked:
            return "acked", slot.actor, slot.comment
        return "firing", None, None

    def _present(self, slot: Slot, at: int, out: list[Alert]) -> None:
        state, actor, comment = self._presented(slot, at)
        if state == slot.shown:
            return
        if state == "inactive" and slot.shown == "resolved":
            return
        slot.version += 1
        slot.shown = state
        rule = self.rules[slot.rule]
        annotations = {k: render(v, slot.labels, slot.value) for k, v in rule.annotations.items()}
        out.append(
            Alert(
                fingerprint=slot.fingerprint,
                rule=slot.rule,
                state=state,  # type: ignore[arg-type]
                severity=slot.severity,  # type: ignore[arg-type]
                labels=slot.labels,
                annotations=annotations,
                ts_event=at,
                active_since=slot.active_since,
                fired_at=slot.fired_at,
                resolved_at=slot.resolved_at,
                value=slot.value,
                version=slot.version,
                actor=actor,
                comment=comment,
            )
        )

    def _present_all(self, at: int, out: list[Alert], also: Slot | None = None) -> None:
        if also is not None:
            self._present(also, at, out)
        for slot in list(self.slots.values()):
            if slot is not also and (slot.phase == "firing" or slot.shown in _SHOWN_ACTIVE):
                self._present(slot, at, out)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> bytes:
        state = EngineState(
            now=self.now,
            instances=list(self.evaluator.instances.values()),
            peers=self.evaluator.peers,
            slots=list(self.slots.values()),
            silences=list(self.silences.values()),
        )
        return _state_encoder.encode(state)

    def restore(self, data: bytes | str) -> None:
        """Resume from a checkpoint; series and alerts of rules no longer loaded are dropped."""
        state = _state_decoder.decode(data)
        self.now = state.now
        self.evaluator.instances = {i.fingerprint: i for i in state.instances if i.rule in self.rules}
        self.evaluator.peers = state.peers
        self.slots = {s.fingerprint: s for s in state.slots if s.rule in self.rules}
        self.silences = {s.silence_id: s for s in state.silences}

    def seed(self, alerts: list[Alert]) -> None:
        """Resume alert phases from the compacted ``ops.alerts.v1`` view when there is no checkpoint:
        firing alerts stay firing, pending ones keep their start (their series resume on the next sample)."""
        for alert in alerts:
            if alert.rule not in self.rules:
                log.info("alert %s of unloaded rule %s not resumed", alert.fingerprint, alert.rule)
                continue
            phase: lifecycle.Phase = (
                "firing" if alert.state in ("firing", "acked", "silenced", "flapping") else
                "pending" if alert.state == "pending" else
                "resolved" if alert.state == "resolved" else "inactive"
            )  # fmt: skip
            self.slots[alert.fingerprint] = Slot(
                fingerprint=alert.fingerprint,
                rule=alert.rule,
                severity=alert.severity,
                labels=dict(alert.labels),
                phase=phase,
                active_since=alert.active_since,
                fired_at=alert.fired_at,
                resolved_at=alert.resolved_at,
                value=alert.value,
                acked=alert.state == "acked",
                actor=alert.actor,
                comment=alert.comment,
                flapping=alert.state == "flapping",
                changes=[alert.ts_event] if alert.state == "flapping" else [],
                shown=alert.state,
                version=alert.version,
            )
            self.now = max(self.now, alert.ts_event)

    def active(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.phase in ("pending", "firing")]

"""Stage 2, lifecycle: an alert's phase (inactive -> pending -> firing -> resolved) from observations,
with ``for``, ``keep_firing_for``, operator acks and manual resolves. Emits a frozen :class:`PhaseChange`."""

from __future__ import annotations

from typing import Literal

import msgspec

from pipeline.alerting.conditions import NEVER
from pipeline.alerting.evaluate import Observation
from pipeline.alerting.rules import Rule

Phase = Literal["inactive", "pending", "firing", "resolved"]


class Slot(msgspec.Struct, kw_only=True):
    """Everything known about one fingerprint (checkpointed; also rebuilt from ops.alerts.v1)."""

    fingerprint: str
    rule: str
    severity: str
    labels: dict[str, str]
    phase: Phase = "inactive"
    active_since: int | None = None
    fired_at: int | None = None
    resolved_at: int | None = None
    cleared_at: int | None = None
    value: float | None = None
    acked: bool = False
    actor: str | None = None
    comment: str | None = None
    rearm: bool = False
    changes: list[int] = []
    flapping: bool = False
    shown: str = "inactive"
    version: int = 0


class PhaseChange(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    phase: Phase
    ts: int


def deadline(slot: Slot, rule: Rule) -> int:
    """When the phase may change with the condition unchanged (``for`` elapsing, ``keep_firing_for`` ending)."""
    if slot.phase == "pending" and slot.active_since is not None:
        return slot.active_since + rule.for_
    if slot.phase == "firing" and slot.cleared_at is not None:
        return slot.cleared_at + rule.keep_firing_for
    return NEVER


def _change(slot: Slot, phase: Phase, ts: int) -> PhaseChange:
    slot.phase = phase
    return PhaseChange(fingerprint=slot.fingerprint, phase=phase, ts=ts)


def observe(slot: Slot, rule: Rule, obs: Observation) -> PhaseChange | None:
    """Apply one observation; the engine observes at every deadline, so at most one change results."""
    at, truth = obs.ts, obs.active
    slot.value = obs.value if obs.value is not None else slot.value
    if slot.rearm:
        slot.rearm = truth
        return None
    if slot.phase in ("inactive", "resolved"):
        if not truth:
            return None
        slot.active_since, slot.fired_at, slot.resolved_at, slot.cleared_at = at, None, None, None
        slot.acked, slot.actor, slot.comment = False, None, None
        if rule.for_ == 0:
            slot.fired_at = at
            return _change(slot, "firing", at)
        return _change(slot, "pending", at)
    if slot.phase == "pending":
        assert slot.active_since is not None
        if not truth:
            return _change(slot, "inactive", at)
        if at >= slot.active_since + rule.for_:
            slot.fired_at = slot.active_since + rule.for_
            return _change(slot, "firing", slot.fired_at)
        return None
    # firing
    if truth:
        slot.cleared_at = None
        return None
    if slot.cleared_at is None:
        slot.cleared_at = at
    end = slot.cleared_at + rule.keep_firing_for
    if at >= end:
        slot.resolved_at, slot.cleared_at = end, None
        return _change(slot, "resolved", end)
    return None


def acknowledge(slot: Slot, actor: str, comment: str | None, on: bool) -> bool:
    """Ack (or un-ack) a firing alert; returns whether anything changed."""
    if slot.phase != "firing" or slot.acked == on:
        return False
    slot.acked, slot.actor, slot.comment = on, actor, comment
    return True


def resolve_manually(slot: Slot, at: int, actor: str, comment: str | None) -> PhaseChange | None:
    """An operator resolves a pending/firing alert; it re-arms once its condition has been false."""
    if slot.phase not in ("pending", "firing"):
        return None
    slot.resolved_at, slot.cleared_at, slot.rearm = at, None, True
    slot.actor, slot.comment = actor, comment
    return _change(slot, "resolved", at)

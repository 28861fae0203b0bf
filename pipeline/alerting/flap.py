"""Stage 3, flap detection: too many firing/resolved changes within a window hold the alert as
``flapping`` (reported once) until it has been quiet for a while."""

from __future__ import annotations

from pipeline.alerting.conditions import NEVER
from pipeline.alerting.lifecycle import PhaseChange, Slot
from pipeline.alerting.rules import Flap


def record(slot: Slot, change: PhaseChange, flap: Flap | None) -> None:
    """Count a firing/resolved change; start flapping when the window holds ``max_changes`` of them."""
    if flap is None or change.phase not in ("firing", "resolved"):
        return
    slot.changes = [t for t in slot.changes if t > change.ts - flap.window] + [change.ts]
    if len(slot.changes) >= flap.max_changes:
        slot.flapping = True


def quiet_deadline(slot: Slot, flap: Flap | None) -> int:
    if flap is None or not slot.flapping or not slot.changes:
        return NEVER
    return slot.changes[-1] + flap.quiet


def settle(slot: Slot, flap: Flap | None, at: int) -> bool:
    """End flapping once quiet long enough; returns whether it ended."""
    if slot.flapping and at >= quiet_deadline(slot, flap):
        slot.flapping = False
        slot.changes = []
        return True
    return False

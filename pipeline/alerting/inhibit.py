"""Stage 4, inhibition: a firing alert matching an inhibit rule's source mutes firing alerts matching its
target that share the ``equal`` labels (e.g. a venue down mutes that venue's market alerts)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.alerting.lifecycle import Slot
from pipeline.alerting.rules import InhibitRule
from pipeline.contracts.matchers import all_match


def inhibitor(slot: Slot, rules: Iterable[InhibitRule], firing: Iterable[Slot]) -> Slot | None:
    """The firing alert that inhibits ``slot``, if any."""
    candidates = list(firing)
    for rule in rules:
        if not all_match(rule.target_matchers, slot.labels):
            continue
        for source in candidates:
            if source.fingerprint == slot.fingerprint or not all_match(rule.source_matchers, source.labels):
                continue
            if all(source.labels.get(name, "") == slot.labels.get(name, "") for name in rule.equal):
                return source
    return None

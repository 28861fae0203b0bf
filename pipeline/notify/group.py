"""Group stage: Alertmanager's dispatcher on an injected clock.

Each alert goes to the routes the tree picks; per route it joins the aggregation group of its
``group_by`` labels. A new group is first due ``group_wait`` after it was created (at once when
its oldest episode began more than ``group_wait`` ago, e.g. after a restart), then every
``group_interval`` while it exists; the dedup stage decides whether a due group needs a message
(new episode, resolution, or ``repeat_interval`` passed). Resolved alerts leave their group once a
flush has carried them; an empty group is dropped. Escalated alerts join groups of a synthetic
route (``<route>/esc<n>``) that are due at once.

States: ``firing`` fires, ``flapping`` is announced once, ``acked``/``silenced`` are muted (kept,
never repeated or escalated), ``resolved``/``inactive`` resolve, ``pending`` is not the notifier's
business. A record older (by ``version``) than the last one seen for its fingerprint is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from pipeline.contracts import Alert
from pipeline.notify.base import Batch, Clock, GroupAlert
from pipeline.notify.routing import EscalationStep, Route, group_key, routing_labels

log = logging.getLogger(__name__)


def episode_start(alert: Alert) -> int:
    return alert.fired_at or alert.active_since or alert.ts_event


def to_group_alert(alert: Alert, previous: GroupAlert | None) -> GroupAlert | None:
    """The group's view of ``alert`` given the last view of its fingerprint (None: ignore it)."""
    fp = alert.fingerprint
    if alert.state == "pending":
        return None
    if alert.state == "firing":
        return GroupAlert(fingerprint=fp, episode=f"{fp}@{episode_start(alert)}", status="firing", alert=alert)
    if alert.state == "flapping":
        start = alert.active_since or episode_start(alert)
        return GroupAlert(fingerprint=fp, episode=f"{fp}@{start}:flapping", status="flapping", alert=alert)
    known = previous.episode if previous is not None else f"{fp}@{episode_start(alert)}"
    if alert.state in ("acked", "silenced"):
        if previous is not None and previous.status == "resolved":
            known = f"{fp}@{episode_start(alert)}"
        return GroupAlert(fingerprint=fp, episode=known, status="muted", alert=alert)
    return GroupAlert(fingerprint=fp, episode=known, status="resolved", alert=alert)  # resolved, inactive


@dataclass
class AggregationGroup:
    route: Route
    key: str
    labels: dict[str, str]
    next_flush: int
    escalation: int = 0
    alerts: dict[str, GroupAlert] = field(default_factory=dict)
    flushing: bool = False


class Dispatcher:
    def __init__(self, tree: Route, clock: Clock):
        self._tree = tree
        self._clock = clock
        self._groups: dict[str, AggregationGroup] = {}
        self._latest: dict[str, GroupAlert] = {}
        self._member_of: dict[str, set[str]] = {}

    @property
    def groups(self) -> dict[str, AggregationGroup]:
        return self._groups

    def on_alert(self, alert: Alert) -> tuple[GroupAlert | None, list[Route]]:
        """Put one state change into its groups; returns the group view and the routes it matched."""
        previous = self._latest.get(alert.fingerprint)
        if previous is not None and alert.version and alert.version < previous.alert.version:
            log.info("ignoring stale %s v%d (have v%d)", alert.fingerprint, alert.version, previous.alert.version)
            return None, []
        item = to_group_alert(alert, previous)
        if item is None:
            return None, []
        self._latest[alert.fingerprint] = item
        routes = self._tree.match(routing_labels(alert))
        for route in routes:
            self._add(route, item, escalation=0)
        for key in list(self._member_of.get(alert.fingerprint, ())):
            if (group := self._groups.get(key)) is not None:
                group.alerts[alert.fingerprint] = item
        return item, routes

    def escalate(self, fingerprint: str, route: Route, level: int, step: EscalationStep) -> None:
        """Send a still-firing alert also to ``step.receiver`` (escalation ``level``, from 1)."""
        item = self._latest.get(fingerprint)
        if item is None or item.status != "firing":
            return
        synthetic = replace(
            route, id=f"{route.id}/esc{level}", receiver=step.receiver, group_wait_us=0, routes=(), escalate=()
        )
        log.info("escalating %s to %s (level %d)", fingerprint, step.receiver, level)
        self._add(synthetic, item, escalation=level)

    def _add(self, route: Route, item: GroupAlert, escalation: int) -> None:
        labels = route.group_labels(routing_labels(item.alert))
        key = group_key(route, labels)
        group = self._groups.get(key)
        if group is None:
            now = self._clock.now_us()
            first = now + route.group_wait_us
            if episode_start(item.alert) + route.group_wait_us <= now:
                first = now
            group = self._groups[key] = AggregationGroup(route, key, labels, first, escalation)
        group.alerts[item.fingerprint] = item
        self._member_of.setdefault(item.fingerprint, set()).add(key)

    def next_deadline(self) -> int | None:
        return min((g.next_flush for g in self._groups.values() if not g.flushing), default=None)

    def due(self) -> list[tuple[AggregationGroup, Batch]]:
        """Groups due now, each with its batch; they stay marked flushing until :meth:`flushed`."""
        now = self._clock.now_us()
        found = []
        for group in self._groups.values():
            if group.flushing or group.next_flush > now:
                continue
            group.flushing = True
            group.next_flush = now + group.route.group_interval_us
            batch = Batch(
                receiver=group.route.receiver,
                route=group.route.id,
                group_key=group.key,
                group_labels=dict(group.labels),
                alerts=tuple(sorted(group.alerts.values(), key=lambda a: a.fingerprint)),
                ts=now,
                repeat_interval_us=group.route.repeat_interval_us,
                escalation=group.escalation,
            )
            found.append((group, batch))
        return found

    def flushed(self, group: AggregationGroup, batch: Batch) -> None:
        """Drop the resolved alerts the flush carried (unless they changed meanwhile), then empty groups."""
        group.flushing = False
        for item in batch.resolved:
            if group.alerts.get(item.fingerprint) == item:
                del group.alerts[item.fingerprint]
                members = self._member_of.get(item.fingerprint)
                if members is not None:
                    members.discard(group.key)
                    if not members:
                        del self._member_of[item.fingerprint]
                        if self._latest.get(item.fingerprint) == item:
                            del self._latest[item.fingerprint]
        if not group.alerts and self._groups.get(group.key) is group:
            del self._groups[group.key]

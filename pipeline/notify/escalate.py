"""Escalation stage: an episode of a route's ``escalate`` severities (P1 by default) still firing
and unacknowledged ``after`` its start also goes to the step's receiver. Acknowledging, silencing,
flapping or resolving the alert cancels its pending steps; a new episode arms them again. Deadlines
count from the episode's ``fired_at``, so a restarted notifier keeps them (and the notification log
stops a second message for a step already sent)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.notify.base import Clock, GroupAlert
from pipeline.notify.group import episode_start
from pipeline.notify.routing import EscalationStep, Route


@dataclass(frozen=True)
class Due:
    fingerprint: str
    route: Route
    level: int
    step: EscalationStep


class Escalator:
    def __init__(self, clock: Clock):
        self._clock = clock
        self._pending: dict[tuple[str, str, int], tuple[int, Due]] = {}
        self._done: set[tuple[str, str, int]] = set()

    def on_alert(self, item: GroupAlert | None, routes: list[Route]) -> None:
        if item is None:
            return
        if item.status != "firing":
            mine = f"{item.fingerprint}@"
            for key in [k for k in self._pending if k[0].startswith(mine)]:
                del self._pending[key]
            if item.status == "resolved":  # the episode is over: forget which of its steps ran
                self._done = {k for k in self._done if not k[0].startswith(mine)}
            return
        start = episode_start(item.alert)
        for route in routes:
            for index, step in enumerate(route.escalate):
                key = (item.episode, route.id, index)
                if item.alert.severity in step.severities and key not in self._pending and key not in self._done:
                    self._pending[key] = (start + step.after_us, Due(item.fingerprint, route, index + 1, step))

    def next_deadline(self) -> int | None:
        return min((deadline for deadline, _ in self._pending.values()), default=None)

    def due(self) -> list[Due]:
        now = self._clock.now_us()
        ready = sorted((d, k) for k, (d, _) in self._pending.items() if d <= now)
        found = []
        for _, key in ready:
            found.append(self._pending.pop(key)[1])
            self._done.add(key)
        return found

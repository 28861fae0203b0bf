"""The routing tree: label matchers (:mod:`pipeline.contracts.matchers`) and
Alertmanager's matching walk (depth first; a matching child stops the walk unless it says
``continue``; a node none of whose children match takes the alert itself).

An alert's labels for matching and grouping are its ``labels`` plus ``rule`` (also as
``alertname``) and ``severity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.contracts import Alert
from pipeline.contracts.matchers import Matcher


@dataclass(frozen=True)
class EscalationStep:
    """After ``after_us`` of an episode unacknowledged, its alert also goes to ``receiver``."""

    after_us: int
    receiver: str
    severities: frozenset[str]


@dataclass(frozen=True)
class Route:
    """One node of the compiled tree; timings in microseconds, ``group_by`` None means every label."""

    id: str
    receiver: str
    matchers: tuple[Matcher, ...]
    continue_: bool
    group_by: tuple[str, ...] | None
    group_wait_us: int
    group_interval_us: int
    repeat_interval_us: int
    escalate: tuple[EscalationStep, ...] = ()
    routes: tuple[Route, ...] = field(default=())

    def match(self, labels: dict[str, str]) -> list[Route]:
        """The routes an alert with ``labels`` goes to (empty when this node does not match)."""
        if not all(m.matches(labels) for m in self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            matched = child.match(labels)
            found += matched
            if matched and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: dict[str, str]) -> dict[str, str]:
        if self.group_by is None:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}

    def walk(self) -> list[Route]:
        return [self, *(r for child in self.routes for r in child.walk())]


def routing_labels(alert: Alert) -> dict[str, str]:
    return {**alert.labels, "rule": alert.rule, "alertname": alert.rule, "severity": alert.severity}


def group_key(route: Route, group_labels: dict[str, str]) -> str:
    inner = ",".join(f"{k}={v!r}" for k, v in sorted(group_labels.items()))
    return f"{route.id}:{{{inner}}}"

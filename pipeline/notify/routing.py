"""The routing tree: label matchers (``=``, ``!=``, ``=~``, ``!~``; regexes fully anchored) and
Alertmanager's matching walk (depth first; a matching child stops the walk unless it says
``continue``; a node none of whose children match takes the alert itself).

An alert's labels for matching and grouping are its ``labels`` plus ``rule`` (also as
``alertname``) and ``severity``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.contracts import Alert

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        match = _MATCHER.match(text)
        if match is None:
            raise ValueError(f"bad matcher {text!r}: expected name=value, name!=value, name=~regex or name!~regex")
        name, op, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"^(?:{value})$")
            except re.error as exc:
                raise ValueError(f"bad regex in matcher {text!r}: {exc}") from exc
        return cls(name, op, value, regex)

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.match(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value!r}"


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

"""Stage 1, evaluation: routes samples to rule instances (one per rule and ``by`` label values), keeps
leaf state and turns (instance, event time) into a frozen :class:`Observation`."""

from __future__ import annotations

import hashlib
import json

import msgspec

from pipeline.alerting.conditions import NEVER, LeafState, Peers, accepts, evaluate_tree, next_change, update
from pipeline.alerting.rules import Divergence, Leaf, Rule, RuleSet, leaves
from pipeline.alerting.sources import Sample


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """A rule instance's condition at one event time."""

    rule: str
    fingerprint: str
    series: dict[str, str]
    ts: int
    active: bool
    value: float | None


class Instance(msgspec.Struct, kw_only=True):
    """One series of one rule (checkpointed)."""

    rule: str
    fingerprint: str
    series: dict[str, str]
    leaves: list[LeafState]
    evaluated_at: int = 0
    due: list[int] = []  # sample times of a cross-series rule waiting for the watermark


def fingerprint(rule: str, series: dict[str, str]) -> str:
    """Stable id of an alert: the rule and its identifying labels (sha256, 16 hex digits)."""
    text = json.dumps([rule, sorted(series.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _peer_key(rule: str, index: int, series: dict[str, str]) -> str:
    return f"{rule}|{index}|{series.get('symbol', '')}"


PEER_HISTORY_US = 600_000_000  # peer prices kept beyond max_age, for evaluations behind the newest sample


class Evaluator:
    """Owns instances and divergence peer tables; pure over its inputs (event time only)."""

    def __init__(self, rules: RuleSet):
        self.rules = {r.name: r for r in rules.rules}
        self._leaves: dict[str, list[Leaf]] = {r.name: leaves(r.condition) for r in rules.rules}
        self._routes: dict[str, list[tuple[Rule, int, Leaf]]] = {}
        for rule in rules.rules:
            for index, leaf in enumerate(self._leaves[rule.name]):
                self._routes.setdefault(leaf.source, []).append((rule, index, leaf))
        self.instances: dict[str, Instance] = {}
        self._fingerprints: dict[tuple[str, tuple[str, ...]], str] = {}
        self.peers: dict[str, Peers] = {}

    def sources(self) -> set[str]:
        return set(self._routes)

    def route(self, sample: Sample) -> list[tuple[Instance, list[int]]]:
        """The instances a sample belongs to, each with the indexes of the leaves that take it."""
        found: dict[str, tuple[Instance, list[int]]] = {}
        for rule, index, leaf in self._routes.get(sample.source, ()):
            if not accepts(leaf, sample):
                continue
            values = tuple(sample.labels.get(b, "") for b in rule.by)
            fp = self._fingerprints.get((rule.name, values))
            if fp is None:
                fp = self._fingerprints[(rule.name, values)] = fingerprint(
                    rule.name, dict(zip(rule.by, values, strict=True))
                )
            series = dict(zip(rule.by, values, strict=True))
            if fp not in found:
                instance = self.instances.get(fp)
                if instance is None:
                    states = [LeafState() for _ in self._leaves[rule.name]]
                    instance = Instance(
                        rule=rule.name, fingerprint=fp, series=series, leaves=states, evaluated_at=sample.ts
                    )
                    self.instances[fp] = instance
                found[fp] = (instance, [])
            found[fp][1].append(index)
        return list(found.values())

    def apply(self, instance: Instance, indexes: list[int], sample: Sample) -> None:
        """Fold a sample into the instance's leaves (late samples, older than the leaf's last, are ignored)."""
        rule_leaves = self._leaves[instance.rule]
        for index in indexes:
            leaf, state = rule_leaves[index], instance.leaves[index]
            if state.last_ts is not None and sample.ts < state.last_ts:
                continue
            update(leaf, state, sample)
            if isinstance(leaf, Divergence):
                table = self.peers.setdefault(_peer_key(instance.rule, index, sample.labels), {})
                history = table.setdefault(sample.labels["exchange"], [])
                history.append((sample.ts, sample.prices[leaf.price]))
                horizon = sample.ts - leaf.max_age - PEER_HISTORY_US
                table[sample.labels["exchange"]] = [h for h in history if h[0] >= horizon]
        if self.deferred(instance) and (not instance.due or instance.due[-1] != sample.ts):
            instance.due.append(sample.ts)

    def deferred(self, instance: Instance) -> bool:
        """A rule comparing series (divergence) is evaluated when the watermark passes a sample's time, so
        every venue's price as of that time has arrived whatever the partition order."""
        return any(isinstance(leaf, Divergence) for leaf in self._leaves[instance.rule])

    def next_change(self, instance: Instance) -> int:
        rule_leaves = self._leaves[instance.rule]
        pairs = zip(rule_leaves, instance.leaves, strict=True)
        when = min((next_change(leaf, state, instance.evaluated_at) for leaf, state in pairs), default=NEVER)
        return min(when, instance.due[0]) if instance.due else when

    def observe(self, instance: Instance, at: int) -> Observation:
        rule = self.rules[instance.rule]
        rule_leaves = self._leaves[instance.rule]
        peers = [
            self.peers.get(_peer_key(instance.rule, i, instance.series)) if isinstance(leaf, Divergence) else None
            for i, leaf in enumerate(rule_leaves)
        ]
        truth, value, _ = evaluate_tree(rule.condition, instance.leaves, at, peers, instance.series.get("exchange", ""))
        instance.evaluated_at = max(instance.evaluated_at, at)
        instance.due = [t for t in instance.due if t > at]
        return Observation(
            rule=rule.name, fingerprint=instance.fingerprint, series=instance.series, ts=at, active=truth, value=value
        )

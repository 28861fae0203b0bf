"""Rule files: the YAML format (see ``docs/alerting.md``), validated with pydantic at load.

Errors name the file, the rule and the field (``core.yaml: rule FeedLatencyHigh: condition.op: ...``).
Durations are ``250ms``, ``30s``, ``5m``, ``2h``, ``1d`` or a number of seconds; they become microseconds.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.alerting import templates
from pipeline.alerting.errors import RuleLoadError
from pipeline.alerting.sources import SOURCES
from pipeline.contracts.matchers import Matcher, parse_matcher, where_matchers

_UNITS = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")


def parse_duration(value: Any) -> int:
    """A duration (``30s``, ``5m``, ``1h``, ``250ms``, ``1d`` or seconds) in microseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return int(value * 1_000_000)
    if isinstance(value, str) and (found := _DURATION.match(value.strip())):
        return int(float(found.group(1)) * _UNITS[found.group(2) or "s"])
    raise ValueError(f"expected a duration like 250ms, 30s, 5m, 1h, got {value!r}")


Duration = Annotated[int, BeforeValidator(parse_duration)]
Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["P1", "P2", "P3", "P4"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _Leaf(_Model):
    source: str
    where: dict[str, str] = {}

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"unknown source {value!r}; known: {sorted(SOURCES)}")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, str]) -> dict[str, str]:
        where_matchers(value)
        return value

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        return where_matchers(self.where)


class _MetricLeaf(_Leaf):
    """A condition comparing one ``metric`` of its source with ``op value``."""

    metric: str
    op: Op
    value: float

    @model_validator(mode="after")
    def _metric(self) -> Self:
        known = SOURCES[self.source].metrics
        if self.metric not in known:
            raise ValueError(f"unknown metric {self.metric!r} of source {self.source}; known: {known}")
        return self


class Threshold(_MetricLeaf):
    """``metric op value``; with ``recovery`` it stays true until ``metric op recovery`` is false
    (hysteresis); with ``hold`` a sample counts only for that long (else until the next one)."""

    type: Literal["threshold"]
    recovery: float | None = None
    hold: Duration | None = None

    @model_validator(mode="after")
    def _recovery(self) -> Threshold:
        if self.recovery is not None and self.op in ("==", "!="):
            raise ValueError("recovery needs an ordering op (>, >=, <, <=)")
        return self


class Absent(_Leaf):
    """True when the series has sent nothing for ``after`` (event time)."""

    type: Literal["absent"]
    after: Duration


class Rate(_MetricLeaf):
    """Change of ``metric`` over the trailing ``window``: ``delta`` per ``per`` or ``percent`` of the oldest."""

    type: Literal["rate"]
    window: Duration
    mode: Literal["delta", "percent"] = "delta"
    per: Duration = 1_000_000
    recovery: float | None = None


class Sum(_MetricLeaf):
    """Sum of ``metric`` over the trailing ``window`` (``count`` of the dlq source counts records)."""

    type: Literal["sum"]
    window: Duration


class AnomalyScore(_Leaf):
    """An ``ops.anomalies.v1`` record of kind ``anomaly`` with ``score >= min_score`` in the last ``hold``."""

    type: Literal["anomaly"]
    source: str = "anomalies"
    min_score: float = Field(default=0.9, ge=0, le=1)
    hold: Duration = 60_000_000


class Forecast(_Leaf):
    """An ``ops.anomalies.v1`` forecast predicting a threshold crossing within ``horizon`` and no sooner than
    ``min_lead`` (a breach due sooner is imminent, not predicted: the threshold rules answer it, and a forecast
    that short is mostly a transient ramp)."""

    type: Literal["forecast"]
    source: str = "anomalies"
    horizon: Duration
    min_lead: Duration = 0
    hold: Duration = 120_000_000


class Divergence(_Leaf):
    """This venue's price vs the median of the other venues of the same symbol, in basis points."""

    type: Literal["divergence"]
    price: str = "close"
    threshold_bps: float = Field(gt=0)
    recovery_bps: float | None = None
    min_peers: int = Field(default=2, ge=1)
    max_age: Duration = 120_000_000

    @model_validator(mode="after")
    def _price(self) -> Divergence:
        if self.price not in SOURCES[self.source].prices:
            raise ValueError(f"source {self.source} has no price {self.price!r}; known: {SOURCES[self.source].prices}")
        if "symbol" not in SOURCES[self.source].labels or "exchange" not in SOURCES[self.source].labels:
            raise ValueError(f"source {self.source} has no exchange/symbol labels")
        return self


class All(_Model):
    type: Literal["all"]
    conditions: list[Condition] = Field(min_length=1)


class AnyOf(_Model):
    type: Literal["any"]
    conditions: list[Condition] = Field(min_length=1)


Leaf = Threshold | Absent | Rate | Sum | AnomalyScore | Forecast | Divergence
Condition = Annotated[
    Threshold | Absent | Rate | Sum | AnomalyScore | Forecast | Divergence | All | AnyOf, Field(discriminator="type")
]
All.model_rebuild()
AnyOf.model_rebuild()


def leaves(condition: Condition) -> list[Leaf]:
    """The leaves of a condition tree in document order (their index is their identity)."""
    if isinstance(condition, All | AnyOf):
        return [leaf for sub in condition.conditions for leaf in leaves(sub)]
    return [condition]


class Flap(_Model):
    """``max_changes`` firing/resolved changes within ``window`` make the alert flapping; it is held
    until it has not changed for ``quiet``."""

    window: Duration = 600_000_000
    max_changes: int = Field(default=6, ge=2)
    quiet: Duration = 300_000_000


_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"


class Rule(_Model):
    name: str = Field(pattern=_NAME)
    severity: Severity
    by: list[str] = []
    condition: Condition
    for_: Duration = Field(default=0, alias="for")
    keep_firing_for: Duration = 0
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    flap: Flap | None = Flap()
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        for i, leaf in enumerate(leaves(self.condition)):
            missing = [b for b in self.by if b not in SOURCES[leaf.source].labels]
            if missing:
                raise ValueError(f"condition leaf {i} (source {leaf.source}) has no label(s) {missing} named in by")
            if isinstance(leaf, Divergence) and "exchange" not in self.by:
                raise ValueError("a divergence condition needs exchange (and symbol) in by")
        known = set(self.by) | set(self.labels) | {"value", "rule", "severity", "alertname"}
        for kind, items in (("labels", self.labels), ("annotations", self.annotations)):
            for key, template in items.items():
                unknown = templates.fields(template) - known
                if unknown:
                    raise ValueError(f"{kind}.{key}: template names {sorted(unknown)}; it may use {sorted(known)}")
        return self


class InhibitRule(_Model):
    """While an alert matching ``source`` fires, alerts matching ``target`` with equal ``equal`` labels are
    muted (published as ``silenced`` with actor ``inhibition``)."""

    source: list[str]
    target: list[str]
    equal: list[str] = []

    @field_validator("source", "target")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_matcher(text)
        return value

    @property
    def source_matchers(self) -> tuple[Matcher, ...]:
        return tuple(parse_matcher(t) for t in self.source)

    @property
    def target_matchers(self) -> tuple[Matcher, ...]:
        return tuple(parse_matcher(t) for t in self.target)


class RuleFile(_Model):
    rules: list[Rule] = []
    inhibit_rules: list[InhibitRule] = []


class RuleSet(BaseModel):
    """Every loaded rule (unique names) and inhibition rule."""

    model_config = ConfigDict(frozen=True)
    rules: tuple[Rule, ...]
    inhibit_rules: tuple[InhibitRule, ...]

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


_TAGS = {"threshold", "absent", "rate", "sum", "anomaly", "forecast", "divergence", "all", "any"}


def _where(path: str, data: Any, loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into ``file: rule NAME: field.path`` (union tags left out)."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        name = f"#{loc[1]}"
        rules = data.get("rules") if isinstance(data, dict) else None
        if isinstance(rules, list) and isinstance(rules[loc[1]], dict):
            name = str(rules[loc[1]].get("name", name))
        field = ".".join(str(p) for p in loc[2:] if p not in _TAGS)
        return f"{path}: rule {name}: {field or '<rule>'}"
    return f"{path}: {'.'.join(str(p) for p in loc) or '<file>'}"


def parse_rule_file(text: str, path: str) -> RuleFile:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RuleLoadError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return RuleFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(path, data, tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RuleLoadError(problems) from exc


def core_rules_text() -> str:
    return resources.files("pipeline.alerting").joinpath("rules/core.yaml").read_text()


def load_rules(paths: list[Path] | None = None, *, core: bool = True) -> RuleSet:
    """The shipped core rules (unless ``core=False``) plus every file (or ``*.yaml`` in a directory) given."""
    files: list[tuple[str, str]] = [("core.yaml", core_rules_text())] if core else []
    for path in paths or []:
        found = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        for item in found:
            try:
                files.append((str(item), item.read_text()))
            except OSError as exc:
                raise RuleLoadError(f"{item}: {exc}") from exc
    rules: list[Rule] = []
    inhibit: list[InhibitRule] = []
    seen: dict[str, str] = {}
    for name, text in files:
        parsed = parse_rule_file(text, name)
        for rule in parsed.rules:
            if rule.name in seen:
                raise RuleLoadError(f"{name}: rule {rule.name}: name: already defined in {seen[rule.name]}")
            seen[rule.name] = name
            rules.append(rule)
        inhibit.extend(parsed.inhibit_rules)
    return RuleSet(rules=tuple(rules), inhibit_rules=tuple(inhibit))

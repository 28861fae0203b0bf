"""The notifier's YAML configuration (pydantic-validated; docs/notify.md describes every field):
the routing tree, the receivers with their channels, and the retry policy. Loading compiles the
tree into :class:`~pipeline.notify.routing.Route` nodes, inheriting timings, ``group_by`` and the
receiver from the parent, and checks that every receiver a route names exists."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.contracts.matchers import Matcher
from pipeline.notify.base import ConfigError
from pipeline.notify.channels import ChannelConfig
from pipeline.notify.durations import Seconds, micros
from pipeline.notify.retry import RetryConfig
from pipeline.notify.routing import EscalationStep, Route


class EscalationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: Seconds = Field(gt=0)
    receiver: str
    severities: list[Literal["P1", "P2", "P3", "P4"]] = ["P1"]


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    receiver: str | None = None
    matchers: list[str] = []
    continue_: bool = Field(default=False, alias="continue")
    group_by: list[str] | None = None  # ["..."] groups by every label
    group_wait: Seconds | None = None
    group_interval: Seconds | None = Field(default=None, gt=0)
    repeat_interval: Seconds | None = Field(default=None, gt=0)
    escalate: list[EscalationConfig] = []
    routes: list[RouteConfig] = []

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        for text in value:
            Matcher.parse(text)
        return value


class ReceiverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    channels: list[ChannelConfig] = []


class NotifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: RouteConfig
    receivers: list[ReceiverConfig] = Field(min_length=1)
    retry: RetryConfig = RetryConfig()
    # A replica that takes the sending lease waits this long before sending (see notify.lease).
    takeover_grace: Seconds = 2.0

    @model_validator(mode="after")
    def _consistent(self) -> NotifierConfig:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique: {names}")
        if self.route.receiver is None:
            raise ValueError("route: the root route needs a receiver")
        if self.route.matchers:
            raise ValueError("route: the root route matches everything; it cannot have matchers")
        missing = sorted(_named_receivers(self.route) - set(names))
        if missing:
            raise ValueError(f"routes name undefined receiver(s) {missing}; defined: {names}")
        return self

    def receiver(self, name: str) -> ReceiverConfig:
        return next(r for r in self.receivers if r.name == name)


def _named_receivers(route: RouteConfig) -> set[str]:
    found = {route.receiver} if route.receiver else set()
    found |= {step.receiver for step in route.escalate}
    for child in route.routes:
        found |= _named_receivers(child)
    return found


DEFAULTS = {"group_wait": 30.0, "group_interval": 300.0, "repeat_interval": 4 * 3600.0}


def compile_routes(config: RouteConfig, parent: Route | None = None, path: str = "root") -> Route:
    def inherit(name: str) -> float:
        value = getattr(config, name)
        if value is not None:
            return float(value)
        if parent is None:
            return DEFAULTS[name]
        return getattr(parent, f"{name}_us") / 1_000_000

    if config.group_by is not None:
        group_by: tuple[str, ...] | None = None if "..." in config.group_by else tuple(config.group_by)
    else:
        group_by = parent.group_by if parent is not None else ("rule",)
    node = Route(
        id=path,
        receiver=config.receiver or (parent.receiver if parent else ""),
        matchers=tuple(Matcher.parse(m) for m in config.matchers),
        continue_=config.continue_,
        group_by=group_by,
        group_wait_us=micros(inherit("group_wait")),
        group_interval_us=micros(inherit("group_interval")),
        repeat_interval_us=micros(inherit("repeat_interval")),
        escalate=tuple(
            EscalationStep(micros(step.after), step.receiver, frozenset(step.severities)) for step in config.escalate
        ),
    )
    children = tuple(compile_routes(child, node, f"{path}.{i}") for i, child in enumerate(config.routes))
    return Route(**{**node.__dict__, "routes": children})


def parse_config(data: object, source: str = "<config>") -> NotifierConfig:
    try:
        return NotifierConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid notifier config: {problems}") from exc


def load_config(path: Path) -> NotifierConfig:
    """Read and validate a notifier YAML file; raises :class:`ConfigError` naming each bad field."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_config(data, str(path))

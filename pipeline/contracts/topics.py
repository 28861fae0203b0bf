"""The topic registry: each topic declared once (name, partitions, key, record, storage settings).

The registry lives in ``topics/registry.yaml``; the JSON Schema of each topic's value lives in
``schemas/<topic>.json`` and is generated from the topic's record type. Its ``environments`` section gives the
replication factor and ``min.insync.replicas`` of every topic per deployment environment (``prod`` 3 / 2: a write
acknowledged by ``acks=all`` survives the loss of one broker; ``local`` 1 / 1 for one broker); settings
``environment`` picks one.

Topics as objects: every producer and consumer takes its topic from here, never from a name it spells
itself. :data:`REGISTRY` is the registry file loaded once; the named constants (:data:`TRADES`,
:data:`BARS_1S`, :data:`DLQ`, ...) are its :class:`Topic` objects and :func:`topic_for` gives the one topic a
record type is published on (``topic_for(Trade) is TRADES``; ``Bar`` has two topics, use :data:`BARS_1S` /
:data:`BARS_1M` or :data:`BAR_TOPICS`). Internal topics (the traffic between the parts of one component: no
contract record, no schema, no ClickHouse table, not made by ``topics apply``) are declared in the file's
``internal`` section and are :class:`InternalTopic` objects (:data:`AGGREGATOR_SUMMARIES`). Names are
unprefixed; ``settings.topic(TRADES.name)`` puts the deployment's prefix in front.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from pipeline.contracts.records import RECORD_TYPES, Record

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = PROJECT_ROOT / "topics" / "registry.yaml"
SCHEMAS_DIR = PROJECT_ROOT / "schemas"


class RegistryError(ValueError):
    """The registry file is malformed or names an unknown record type."""


class _TopicSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    record: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"]
    description: str
    sink: bool = True


class _InternalSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    owner: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"]
    description: str


class _ReplicationSpec(msgspec.Struct, forbid_unknown_fields=True):
    replication_factor: int
    min_insync_replicas: int


class _RegistryFile(msgspec.Struct, forbid_unknown_fields=True):
    topics: list[_TopicSpec]
    environments: dict[str, _ReplicationSpec] = {}
    internal: list[_InternalSpec] = []


@dataclass(frozen=True)
class Replication:
    """How many copies of every partition a deployment keeps, and how many must have a write before ``acks=all``
    acknowledges it."""

    replication_factor: int = 1
    min_insync_replicas: int = 1


@dataclass(frozen=True)
class Topic:
    """One topic of the registry; ``name`` is the unprefixed contract name."""

    name: str
    record_type: type[Record]
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"]
    description: str
    sink: bool = True  # stored in ClickHouse by the sink; false for a topic whose records another topic holds

    @property
    def schema_path(self) -> Path:
        return SCHEMAS_DIR / f"{self.name}.json"

    def full_name(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def configs(self, replication: Replication | None = None) -> dict[str, str]:
        """Broker-level topic configs this topic must have (with ``min.insync.replicas`` of ``replication``)."""
        configs = {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}
        if replication is not None:
            configs["min.insync.replicas"] = str(replication.min_insync_replicas)
        return configs


@dataclass(frozen=True)
class InternalTopic:
    """A topic between the parts of one component (``owner``): its value is that component's own format, so
    no record type, schema or table; the owner creates it with these settings (``topics apply`` does not)."""

    name: str
    owner: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"]
    description: str

    def full_name(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"


@dataclass(frozen=True)
class TopicRegistry:
    topics: tuple[Topic, ...]
    environments: tuple[tuple[str, Replication], ...] = (("local", Replication()),)
    internal: tuple[InternalTopic, ...] = ()

    def replication(self, environment: str) -> Replication:
        """The replication of ``environment`` (settings ``environment``)."""
        for name, replication in self.environments:
            if name == environment:
                return replication
        raise RegistryError(
            f"no environment {environment!r} in the registry; known: {[n for n, _ in self.environments]}"
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.topics)

    def __len__(self) -> int:
        return len(self.topics)

    def get(self, name: str) -> Topic:
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(f"unknown topic {name!r}; registry has {[t.name for t in self.topics]}")

    def get_internal(self, name: str) -> InternalTopic:
        for topic in self.internal:
            if topic.name == name:
                return topic
        raise KeyError(f"unknown internal topic {name!r}; registry has {[t.name for t in self.internal]}")

    def for_record(self, record_type: type[Record]) -> Topic:
        """The one topic ``record_type`` is published on (:class:`RegistryError` when none or several)."""
        found = [t for t in self.topics if t.record_type is record_type]
        if len(found) != 1:
            raise RegistryError(
                f"{record_type.__name__} is the record of {len(found)} topics ({[t.name for t in found]}): "
                "name the topic instead"
            )
        return found[0]


def load_registry(path: Path = REGISTRY_PATH) -> TopicRegistry:
    """Load and check the registry file."""
    try:
        spec = msgspec.convert(yaml.safe_load(path.read_text()), _RegistryFile)
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise RegistryError(f"{path}: {exc}") from exc
    topics = []
    for item in spec.topics:
        if item.record not in RECORD_TYPES:
            raise RegistryError(f"{path}: topic {item.name}: unknown record type {item.record!r}")
        if item.partitions < 1:
            raise RegistryError(f"{path}: topic {item.name}: partitions must be >= 1")
        topics.append(
            Topic(
                name=item.name,
                record_type=RECORD_TYPES[item.record],
                key=item.key,
                partitions=item.partitions,
                retention_ms=item.retention_ms,
                cleanup_policy=item.cleanup_policy,
                description=item.description,
                sink=item.sink,
            )
        )
    internal = [
        InternalTopic(
            name=item.name,
            owner=item.owner,
            key=item.key,
            partitions=item.partitions,
            retention_ms=item.retention_ms,
            cleanup_policy=item.cleanup_policy,
            description=item.description,
        )
        for item in spec.internal
    ]
    names = [t.name for t in topics] + [t.name for t in internal]
    if len(set(names)) != len(names):
        raise RegistryError(f"{path}: duplicate topic names")
    environments = []
    for env, rep in (spec.environments or {"local": _ReplicationSpec(1, 1)}).items():
        if not 1 <= rep.min_insync_replicas <= rep.replication_factor:
            raise RegistryError(
                f"{path}: environment {env}: min_insync_replicas must be between 1 and replication_factor"
            )
        environments.append((env, Replication(rep.replication_factor, rep.min_insync_replicas)))
    return TopicRegistry(tuple(topics), tuple(environments), tuple(internal))


REGISTRY = load_registry()
"""The registry file of this checkout, loaded once (``load_registry(path)`` reads another one)."""


def topic_for(record_type: type[Record]) -> Topic:
    """The one topic of :data:`REGISTRY` that ``record_type`` is published on (``Bar``: use the constants)."""
    return REGISTRY.for_record(record_type)


# Every topic of the registry, once. Market data:
TRADES = REGISTRY.get("md.trades.v1")
TRADE_BATCHES = REGISTRY.get("md.trade_batches.v1")
BOOK = REGISTRY.get("md.book.v1")
BBO = REGISTRY.get("md.bbo.v1")
FUNDING = REGISTRY.get("md.funding.v1")
OPEN_INTEREST = REGISTRY.get("md.open_interest.v1")
LIQUIDATIONS = REGISTRY.get("md.liquidations.v1")
BARS_1S = REGISTRY.get("md.bars.1s.v1")
BARS_1M = REGISTRY.get("md.bars.1m.v1")
REFERENCE = REGISTRY.get("md.reference.v1")
# Operations:
FEED_METRICS = REGISTRY.get("ops.feed_metrics.v1")
ANOMALIES = REGISTRY.get("ops.anomalies.v1")
ALERTS = REGISTRY.get("ops.alerts.v1")
NOTIFICATIONS = REGISTRY.get("ops.notifications.v1")
DLQ = REGISTRY.get("ops.dlq.v1")
SILENCES = REGISTRY.get("ops.silences.v1")
ALERT_ACTIONS = REGISTRY.get("ops.alert_actions.v1")
ALERTING_CHECKPOINTS = REGISTRY.get("ops.alerting_checkpoints.v1")
CONSUMER_LAG = REGISTRY.get("ops.consumer_lag.v1")
# Internal:
AGGREGATOR_SUMMARIES = REGISTRY.get_internal("marketprism-aggregator-summaries")

BAR_TOPICS: dict[str, Topic] = {"1s": BARS_1S, "1m": BARS_1M}
"""The bar topics by interval name."""


def _normalised_descriptions(node: object) -> object:
    """``node`` with every ``description`` string cleaned as ``inspect.cleandoc`` does.

    msgspec copies docstrings into descriptions, and its releases (and Python 3.13's compiler)
    differ in how they dedent them; cleaning them here makes ``schemas/`` depend on the
    contracts alone, not on the library or interpreter version that generated it.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _normalised_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalised_descriptions(item) for item in node]
    return node


def json_schema(topic: Topic) -> dict[str, object]:
    """The JSON Schema (2020-12) of a topic's value, generated from its record type."""
    schema = _normalised_descriptions(msgspec.json.schema(topic.record_type))
    assert isinstance(schema, dict)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://marketprism.dev/schemas/{topic.name}.json",
        "title": f"{topic.name} value",
        "description": topic.description,
        **schema,
    }


def schema_text(topic: Topic) -> str:
    """The text of ``schemas/<topic>.json``: :func:`json_schema` as sorted, indented JSON."""
    return json.dumps(json_schema(topic), indent=2, sort_keys=True) + "\n"

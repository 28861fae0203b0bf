"""The topic registry: each topic declared once (name, partitions, key, record, storage settings).

The registry lives in ``topics/registry.yaml``; the JSON Schema of each topic's value lives in
``schemas/<topic>.json`` and is generated from the topic's record type. Its ``environments`` section gives the
replication factor and ``min.insync.replicas`` of every topic per deployment environment (``prod`` 3 / 2: a write
acknowledged by ``acks=all`` survives the loss of one broker; ``local`` 1 / 1 for one broker); settings
``environment`` picks one.
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


class _ReplicationSpec(msgspec.Struct, forbid_unknown_fields=True):
    replication_factor: int
    min_insync_replicas: int


class _RegistryFile(msgspec.Struct, forbid_unknown_fields=True):
    topics: list[_TopicSpec]
    environments: dict[str, _ReplicationSpec] = {}


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
class TopicRegistry:
    topics: tuple[Topic, ...]
    environments: tuple[tuple[str, Replication], ...] = (("local", Replication()),)

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
    names = [t.name for t in topics]
    if len(set(names)) != len(names):
        raise RegistryError(f"{path}: duplicate topic names")
    environments = []
    for env, rep in (spec.environments or {"local": _ReplicationSpec(1, 1)}).items():
        if not 1 <= rep.min_insync_replicas <= rep.replication_factor:
            raise RegistryError(
                f"{path}: environment {env}: min_insync_replicas must be between 1 and replication_factor"
            )
        environments.append((env, Replication(rep.replication_factor, rep.min_insync_replicas)))
    return TopicRegistry(tuple(topics), tuple(environments))


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

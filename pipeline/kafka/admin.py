"""Topic administration against the registry: apply (create what is missing, grow partitions),
check (report every difference) and describe.

Replication comes from the registry's environment (settings ``environment``): ``apply`` creates topics with its
replication factor and ``min.insync.replicas``; ``check`` reports a topic with fewer replicas or another
``min.insync.replicas`` (where the broker reports them). Neither is ever changed on an existing topic: a
reassignment is an operator's decision (docs/security.md, "Production")."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.contracts.topics import Replication, Topic, TopicRegistry
from pipeline.kafka.clients import client_options
from pipeline.kafka.errors import KafkaPlumbingError
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)


class TopicApplyError(KafkaPlumbingError, RuntimeError):
    """The broker could not be made to match the registry (the message says what and why)."""


@dataclass
class TopicState:
    """What the broker says about one topic (``None`` config values: the broker did not report them)."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication_factor: int | None = None  # the fewest replicas of any partition, when the broker reports them


@dataclass(frozen=True)
class Difference:
    topic: str
    what: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.what} expected {self.expected}, broker has {self.actual}"


def _admin(kafka: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(kafka))


async def describe(kafka: KafkaSettings, names: list[str]) -> dict[str, TopicState]:
    """Partition counts (and configs where the broker reports them) of the named topics that exist."""
    admin = _admin(kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in names if n in existing]
        if not wanted:
            return {}
        states = {
            item["topic"]: TopicState(item["topic"], len(item["partitions"]), replication_factor=_replicas(item))
            for item in await admin.describe_topics(wanted)
            if item.get("error_code", 0) == 0
        }
        try:
            resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in states]
            for response in await admin.describe_configs(resources):
                for _code, _msg, _rtype, rname, entries in response.resources:
                    if rname in states:
                        states[rname].configs = {e[0]: e[1] for e in entries if e[1] is not None}
        except KafkaError as exc:  # some brokers do not serve DescribeConfigs
            log.info("broker did not describe topic configs (%s); checking partitions only", exc)
        return states
    finally:
        await admin.close()


def _replicas(item: dict[str, Any]) -> int | None:
    counts = [len(p["replicas"]) for p in item.get("partitions") or () if isinstance(p, dict) and p.get("replicas")]
    return min(counts) if counts else None


def differences(
    registry: TopicRegistry, prefix: str, states: dict[str, TopicState], environment: str = "local"
) -> list[Difference]:
    """Every way the broker disagrees with the registry (in ``environment``)."""
    replication = registry.replication(environment)
    found: list[Difference] = []
    for topic in registry:
        name = topic.full_name(prefix)
        state = states.get(name)
        if state is None:
            found.append(Difference(name, "existence", "present", "missing"))
            continue
        if state.partitions != topic.partitions:
            found.append(Difference(name, "partitions", str(topic.partitions), str(state.partitions)))
        if state.replication_factor is not None and state.replication_factor != replication.replication_factor:
            found.append(
                Difference(
                    name, "replication factor", str(replication.replication_factor), str(state.replication_factor)
                )
            )
        for key, value in topic.configs(replication).items():
            actual = state.configs.get(key)
            if actual is not None and actual != value:
                found.append(Difference(name, key, value, actual))
    return found


async def check(
    kafka: KafkaSettings, registry: TopicRegistry, prefix: str, environment: str = "local"
) -> list[Difference]:
    states = await describe(kafka, [t.full_name(prefix) for t in registry])
    return differences(registry, prefix, states, environment)


def new_topic(topic: Topic, prefix: str, replication: Replication) -> NewTopic:
    return NewTopic(
        topic.full_name(prefix),
        num_partitions=topic.partitions,
        replication_factor=replication.replication_factor,
        topic_configs=topic.configs(replication),
    )


async def apply(kafka: KafkaSettings, registry: TopicRegistry, prefix: str, environment: str = "local") -> list[str]:
    """Create missing topics (with the replication of ``environment``) and grow partition counts; returns what was
    done.

    Shrinking partitions or changing a config of an existing topic is never done silently: those
    remain differences that ``check`` reports.
    """
    states = await describe(kafka, [t.full_name(prefix) for t in registry])
    done: list[str] = []
    admin = _admin(kafka)
    await admin.start()
    try:
        missing: list[Topic] = [t for t in registry if t.full_name(prefix) not in states]
        if missing:
            replication = registry.replication(environment)
            new = [new_topic(t, prefix, replication) for t in missing]
            try:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
            except KafkaError as exc:
                raise TopicApplyError(
                    f"could not create {len(new)} topic(s) with replication factor {replication.replication_factor} "
                    f"and min.insync.replicas {replication.min_insync_replicas} (environment {environment}): {exc}"
                ) from exc
            done += [
                f"created {t.full_name(prefix)} ({t.partitions} partitions, {replication.replication_factor} replicas)"
                for t in missing
            ]
        grow = {
            t.full_name(prefix): NewPartitions(t.partitions)
            for t in registry
            if (s := states.get(t.full_name(prefix))) is not None and s.partitions < t.partitions
        }
        if grow:
            try:
                await admin.create_partitions(grow)
            except KafkaError as exc:
                wanted = ", ".join(f"{name} to {p.total_count}" for name, p in grow.items())
                raise TopicApplyError(
                    f"could not grow partitions ({wanted}): {exc}; done before that: {done or 'nothing'}"
                ) from exc
            done += [f"grew {name} to {p.total_count} partitions" for name, p in grow.items()]
    finally:
        await admin.close()
    return done

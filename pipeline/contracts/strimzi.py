"""Strimzi ``KafkaTopic`` resources generated from the topic registry (``marketprism topics render --format strimzi``).

One resource per registry topic, and per internal topic (its owner still creates it when it is missing; declaring
it here gives it the environment's replication under the Topic Operator). Partitions, ``cleanup.policy`` and
``retention.ms`` come from the topic; ``replicas`` and ``min.insync.replicas`` from the registry's environment.
The deploy/k8s overlays commit this output (tests/deploy checks it is current): never edit those files by hand.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pipeline.contracts.topics import InternalTopic, RegistryError, Topic, TopicRegistry

API_VERSION = "kafka.strimzi.io/v1"  # Strimzi 0.49+ (1.x serves only v1)
CLUSTER_LABEL = "strimzi.io/cluster"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def resource_name(topic_name: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain) for a Kafka topic name: lower case, ``_`` as ``-``."""
    name = topic_name.lower().replace("_", "-")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise RegistryError(f"topic {topic_name!r} gives no valid Kubernetes name ({name!r})")
    return name


def kafka_topics(
    registry: TopicRegistry, environment: str, cluster: str, prefix: str = "", namespace: str | None = None
) -> list[dict[str, Any]]:
    """The ``KafkaTopic`` objects of every topic in ``registry`` with ``environment``'s replication."""
    replication = registry.replication(environment)
    objects = []
    seen: dict[str, str] = {}
    entries: list[Topic | InternalTopic] = [*registry.topics, *registry.internal]
    for topic in entries:
        full = topic.full_name(prefix)
        name = resource_name(full)
        if name in seen:
            raise RegistryError(f"topics {seen[name]!r} and {full!r} give the same Kubernetes name {name!r}")
        seen[name] = full
        metadata: dict[str, Any] = {
            "name": name,
            "labels": {
                CLUSTER_LABEL: cluster,
                "app.kubernetes.io/part-of": "marketprism",
                "app.kubernetes.io/managed-by": "marketprism-topics-render",
            },
            "annotations": {"marketprism.io/description": topic.description},
        }
        if isinstance(topic, InternalTopic):
            metadata["labels"]["marketprism.io/owner"] = topic.owner
        if namespace:
            metadata["namespace"] = namespace
        objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaTopic",
                "metadata": metadata,
                "spec": {
                    "topicName": full,
                    "partitions": topic.partitions,
                    "replicas": replication.replication_factor,
                    "config": {
                        "cleanup.policy": topic.cleanup_policy,
                        "retention.ms": topic.retention_ms,
                        "min.insync.replicas": replication.min_insync_replicas,
                    },
                },
            }
        )
    return objects


def render_strimzi(
    registry: TopicRegistry, environment: str, cluster: str, prefix: str = "", namespace: str | None = None
) -> str:
    """The resources as one multi-document YAML text, headed by the command that makes it."""
    command = f"marketprism topics render --format strimzi --environment {environment} --cluster {cluster}"
    if prefix:
        command += f" --prefix {prefix}"
    if namespace:
        command += f" --namespace {namespace}"
    header = f"# Generated from topics/registry.yaml by `{command}`: do not edit.\n"
    docs = [
        yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
        for obj in kafka_topics(registry, environment, cluster, prefix, namespace)
    ]
    return header + "---\n" + "---\n".join(docs)

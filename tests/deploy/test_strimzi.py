"""`marketprism topics render --format strimzi`: KafkaTopic resources from topics/registry.yaml, per environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.contracts.strimzi import kafka_topics, render_strimzi, resource_name
from pipeline.contracts.topics import RegistryError, load_registry


def _by_topic(objects: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {o["spec"]["topicName"]: o for o in objects}


@pytest.mark.parametrize(("environment", "replicas", "min_isr"), [("prod", 3, 2), ("local", 1, 1)])
def test_every_registry_topic_with_the_environments_replication(environment: str, replicas: int, min_isr: int) -> None:
    registry = load_registry()
    rendered = _by_topic(list(yaml.safe_load_all(render_strimzi(registry, environment, "kafka-a"))))
    expected = {t.name: t for t in registry} | {t.name: t for t in registry.internal}
    assert set(rendered) == set(expected)
    assert registry.replication(environment).replication_factor == replicas
    for name, topic in expected.items():
        obj = rendered[name]
        assert obj["apiVersion"] == "kafka.strimzi.io/v1" and obj["kind"] == "KafkaTopic"
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == "kafka-a"
        assert obj["spec"] == {
            "topicName": name,
            "partitions": topic.partitions,
            "replicas": replicas,
            "config": {
                "cleanup.policy": topic.cleanup_policy,
                "retention.ms": topic.retention_ms,
                "min.insync.replicas": min_isr,
            },
        }
    internal = rendered["marketprism-aggregator-summaries"]
    assert internal["metadata"]["labels"]["marketprism.io/owner"] == "aggregation"


def test_names_are_kubernetes_names_and_the_topic_name_is_kept() -> None:
    objects = kafka_topics(load_registry(), "prod", "k", prefix="Team1.", namespace="data")
    by_topic = _by_topic(objects)
    batches = by_topic["Team1.md.trade_batches.v1"]
    assert batches["metadata"]["name"] == "team1.md.trade-batches.v1"
    assert batches["metadata"]["namespace"] == "data"
    assert len({o["metadata"]["name"] for o in objects}) == len(objects)


def test_a_name_clash_or_an_invalid_name_is_an_error(tmp_path: Path) -> None:
    registry_file = tmp_path / "registry.yaml"
    topic = "{name: %s, record: Trade, key: k, partitions: 1, retention_ms: 1, cleanup_policy: delete, description: d}"
    registry_file.write_text(f"topics:\n  - {topic % 'a_b'}\n  - {topic % 'a-b'}\n")
    with pytest.raises(RegistryError, match="same Kubernetes name 'a-b'"):
        kafka_topics(load_registry(registry_file), "local", "k")
    with pytest.raises(RegistryError, match="no valid Kubernetes name"):
        resource_name("-starts-with-a-dash")
    with pytest.raises(RegistryError, match="no environment 'staging'"):
        kafka_topics(load_registry(), "staging", "k")


def test_the_command(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["topics", "render", "--format", "strimzi", "--environment", "prod"])
    assert result.exit_code == 0, result.output
    assert result.stdout == render_strimzi(load_registry(), "prod", "marketprism")
    assert result.stdout.startswith("# Generated from topics/registry.yaml by `marketprism topics render")
    out = tmp_path / "topics.yaml"
    result = runner.invoke(app, ["topics", "render", "--environment", "local", "--cluster", "c", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == render_strimzi(load_registry(), "local", "c")
    bad = runner.invoke(app, ["topics", "render", "--format", "helm"])
    assert bad.exit_code == 2 and "unknown format 'helm'" in bad.output
    unknown = runner.invoke(app, ["topics", "render", "--environment", "staging"])
    assert unknown.exit_code == 2 and "no environment 'staging'" in unknown.output

"""Replication per environment: the registry's prod (3 / 2) and local (1 / 1) replication, `topics apply`
creating topics with it, `topics check` reporting a topic with less, and the Faust changelogs following it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.contracts import load_registry
from pipeline.contracts.topics import RegistryError, Replication
from pipeline.kafka.admin import apply, check, describe
from pipeline.kafka.faust_app import create_app, table_topic_configs
from pipeline.settings import Settings


def test_registry_replication_per_environment(tmp_path: Path) -> None:
    registry = load_registry()
    assert registry.replication("prod") == Replication(replication_factor=3, min_insync_replicas=2)
    assert registry.replication("local") == Replication(replication_factor=1, min_insync_replicas=1)
    with pytest.raises(RegistryError, match="no environment 'staging'"):
        registry.replication("staging")
    bad = tmp_path / "registry.yaml"
    text = Path("topics/registry.yaml").read_text()
    bad.write_text(
        text.replace(
            "prod: {replication_factor: 3, min_insync_replicas: 2}",
            "prod: {replication_factor: 2, min_insync_replicas: 3}",
        )
    )
    with pytest.raises(RegistryError, match="min_insync_replicas must be between 1 and replication_factor"):
        load_registry(bad)


async def test_apply_in_prod_creates_three_replicas_and_check_holds_local_topics_to_it(settings: Settings) -> None:
    registry = load_registry()
    prod = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "prod."})
    done = await apply(prod.kafka, registry, prod.topic_prefix, "prod")
    assert done and all(line.endswith("3 replicas)") for line in done)
    assert await check(prod.kafka, registry, prod.topic_prefix, "prod") == []
    state = (await describe(prod.kafka, [prod.topic("ops.alerts.v1")]))[prod.topic("ops.alerts.v1")]
    assert state.replication_factor == 3 and state.configs["min.insync.replicas"] == "2"

    # topics made for one broker (local) do not pass a production check: each is reported, never silently fixed
    await apply(settings.kafka, registry, settings.topic_prefix, "local")
    diffs = await check(settings.kafka, registry, settings.topic_prefix, "prod")
    assert {(d.what, d.expected, d.actual) for d in diffs} == {
        ("replication factor", "3", "1"),
        ("min.insync.replicas", "2", "1"),
    }
    assert {d.topic for d in diffs} == {settings.topic(t.name) for t in registry}


def test_cli_topics_check_uses_the_environment_setting(settings: Settings) -> None:
    from pipeline.cli import app

    env = {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_METRICS_PORT": "0",
    }
    runner = CliRunner()
    assert runner.invoke(app, ["topics", "apply"], env=env).exit_code == 0  # local by default
    assert runner.invoke(app, ["topics", "check"], env=env).exit_code == 0
    prod = runner.invoke(app, ["topics", "check"], env=env | {"MARKETPRISM_ENVIRONMENT": "prod"})
    assert prod.exit_code == 1 and "replication factor expected 3, broker has 1" in prod.output


def test_faust_changelogs_follow_the_environment(settings: Settings) -> None:
    for environment, replicas, insync in (("prod", 3, "2"), ("local", 1, "1")):
        env_settings = settings.model_copy(update={"environment": environment})
        app = create_app(env_settings, "replication-probe")
        table = app.Table(
            "probe",
            partitions=3,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=table_topic_configs(env_settings),
        )
        assert app.conf.topic_replication_factor == replicas
        assert table.changelog_topic.replicas is None  # so Faust declares it with topic_replication_factor
        assert table_topic_configs(env_settings) == {"min.insync.replicas": insync}
        assert table.changelog_topic.config["min.insync.replicas"] == insync

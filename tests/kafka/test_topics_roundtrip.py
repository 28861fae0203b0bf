"""Every registry topic carries a schema-valid record through the real broker; `topics check` finds drift."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.contracts import load_registry
from pipeline.kafka.admin import TopicApplyError, apply, check
from pipeline.kafka.clients import client_options
from pipeline.selfcheck import run_selfcheck
from pipeline.settings import Settings


async def test_every_topic_round_trips_through_a_consumer_group(topics: Settings) -> None:
    results = await run_selfcheck(topics)
    assert {r.topic for r in results} == {topics.topic(t.name) for t in load_registry()}
    assert all(r.produced == 1 and r.consumed == 1 and r.valid for r in results), results


async def test_apply_is_idempotent_and_check_is_clean(topics: Settings) -> None:
    registry = load_registry()
    assert await apply(topics.kafka, registry, topics.topic_prefix) == []
    assert await check(topics.kafka, registry, topics.topic_prefix) == []


async def test_check_detects_wrong_partition_count_and_missing_topics(settings: Settings) -> None:
    registry = load_registry()
    wrong = settings.topic("md.trades.v1")
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(wrong, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    diffs = await check(settings.kafka, registry, settings.topic_prefix)
    by_topic = {(d.topic, d.what): d for d in diffs}
    assert by_topic[(wrong, "partitions")].expected == "6"
    assert by_topic[(wrong, "partitions")].actual == "2"
    assert (settings.topic("ops.alerts.v1"), "existence") in by_topic

    # Tansu does not serve CreatePartitions: apply creates what is missing, then says it cannot grow.
    with pytest.raises(TopicApplyError, match=f"{wrong} to 6"):
        await apply(settings.kafka, registry, settings.topic_prefix)
    remaining = await check(settings.kafka, registry, settings.topic_prefix)
    assert [(d.topic, d.what) for d in remaining] == [(wrong, "partitions")]


def test_cli_check_exits_nonzero_on_drift_and_apply_fixes_missing(settings: Settings) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    env = {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
    }
    runner = CliRunner()
    before = runner.invoke(app, ["topics", "check"], env=env)
    assert before.exit_code == 1
    assert "md.trades.v1: existence expected present, broker has missing" in before.output
    assert runner.invoke(app, ["topics", "apply"], env=env).exit_code == 0
    after = runner.invoke(app, ["topics", "check"], env=env)
    assert after.exit_code == 0, after.output

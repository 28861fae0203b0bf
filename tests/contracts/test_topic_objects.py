"""Topics as objects: every registry topic has its named constant, ``topic_for`` is exact, internal topics apart."""

from __future__ import annotations

import pytest

from pipeline.contracts import RECORD_TYPES, Bar, Trade, TradeBatch
from pipeline.contracts import topics as t
from pipeline.contracts.topics import REGISTRY, RegistryError, topic_for


def test_every_registry_topic_has_exactly_one_constant() -> None:
    constants = {name: value for name, value in vars(t).items() if name.isupper() and isinstance(value, t.Topic)}
    by_topic = {}
    for name, value in constants.items():
        assert value.name not in by_topic, f"{value.name} has two constants: {by_topic.get(value.name)} and {name}"
        by_topic[value.name] = name
    assert set(by_topic) == {topic.name for topic in REGISTRY}


def test_topic_for_gives_the_one_topic_of_a_record_type() -> None:
    assert topic_for(Trade) is t.TRADES
    assert topic_for(TradeBatch) is t.TRADE_BATCHES
    for topic in REGISTRY:
        if topic.record_type is not Bar:
            assert topic_for(topic.record_type) is topic
    with pytest.raises(RegistryError, match="Bar is the record of 2 topics"):
        topic_for(Bar)
    assert t.BAR_TOPICS == {"1s": t.BARS_1S, "1m": t.BARS_1M}
    unpublished = [r for r in RECORD_TYPES.values() if not any(x.record_type is r for x in REGISTRY)]
    for record_type in unpublished:
        with pytest.raises(RegistryError, match="record of 0 topics"):
            topic_for(record_type)


def test_internal_topics_are_declared_apart_from_the_contract_topics() -> None:
    assert t.AGGREGATOR_SUMMARIES.name == "marketprism-aggregator-summaries"
    assert t.AGGREGATOR_SUMMARIES.partitions == t.FEED_METRICS.partitions  # co-partitioned with feed metrics
    assert all(i.name not in {x.name for x in REGISTRY} for i in REGISTRY.internal)
    with pytest.raises(KeyError, match="unknown topic"):
        REGISTRY.get(t.AGGREGATOR_SUMMARIES.name)  # not a contract: no schema, no table, not in `topics apply`

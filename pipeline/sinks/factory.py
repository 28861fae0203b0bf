"""Build the sink for a ``clickhouse_url``: ``chdb:///path`` (embedded) or ``clickhouse://`` (server)."""

from __future__ import annotations

from typing import Any

from pipeline.contracts.topics import TopicRegistry
from pipeline.sinks.clickhouse import ClickHouseSink


def make_sink(url: str, registry: TopicRegistry, topic_prefix: str = "", **options: Any) -> ClickHouseSink:
    if url.startswith("chdb://"):
        from pipeline.sinks.chdb_backend import ChdbSink, chdb_path

        return ChdbSink(chdb_path(url), registry, topic_prefix, **options)
    from pipeline.sinks.driver_backend import ServerSink

    return ServerSink(url, registry, topic_prefix, **options)

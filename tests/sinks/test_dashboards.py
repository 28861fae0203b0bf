"""Every panel query of the provisioned dashboards, macros expanded for a time range as the ClickHouse
plugin does, runs on chdb holding sink-written data and returns rows; the provisioning is complete."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest
import yaml
from sinkhelpers import chdb_conn, corpus

from pipeline.bench.grafana import (
    DASHBOARDS_DIR,
    MacroError,
    TimeRange,
    expand,
    load_dashboards,
    panel_queries,
    variable_queries,
)
from pipeline.contracts import Anomaly, FeedMetrics, encode, load_registry
from pipeline.contracts.examples import EXAMPLES, T0
from pipeline.sinks.chdb_backend import ChdbSink

PROVISIONING = DASHBOARDS_DIR.parent / "provisioning"
START = dt.datetime.fromtimestamp(T0 / 1e6, dt.UTC) - dt.timedelta(hours=1)


def _extra() -> dict[str, list[msgspec.Struct]]:
    """Records the generated corpus lacks: aggregator health scores and forecasts."""
    fm, an = EXAMPLES[FeedMetrics], EXAMPLES[Anomaly]
    return {
        "ops.feed_metrics.v1": [
            msgspec.structs.replace(fm, source="aggregator", health_score=90.0 - i, ts_event=T0 + i * 1_000_000)
            for i in range(5)
        ],
        "ops.anomalies.v1": [
            msgspec.structs.replace(an, kind="forecast", time_to_threshold_s=60.0 - i, ts_event=T0 + i * 1_000_000)
            for i in range(5)
        ],
    }


@pytest.fixture
async def loaded(tmp_path: Path) -> str:
    path = str(tmp_path / "chdb")
    sink = ChdbSink(path, load_registry())
    await sink.setup()
    try:
        records = corpus(40)
        for topic, items in _extra().items():
            records[topic] = records[topic] + items
        for topic, items in records.items():
            for offset, record in enumerate(items):
                sink.add(topic, 0, offset, encode(record))
        assert not (await sink.flush()).dead
    finally:
        await sink.close()
    return path


def test_macros_follow_the_plugin() -> None:
    r = TimeRange(
        dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.datetime(2024, 1, 3, tzinfo=dt.UTC), dt.timedelta(seconds=90)
    )
    assert expand("$__timeFilter(ts)", r) == "ts >= toDateTime(1704153600) AND ts <= toDateTime(1704240000)"
    assert expand("$__timeInterval(ts)", r) == "toStartOfInterval(toDateTime(ts), INTERVAL 90 second)"
    assert expand("$__timeInterval_ms(ts)", r) == "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 90000 millisecond)"
    assert expand("$__dateFilter(d)", r) == "d >= toDate('2024-01-02') AND d <= toDate('2024-01-03')"
    assert expand("$__fromTime_ms,$__toTime", r) == "fromUnixTimestamp64Milli(1704153600000),toDateTime(1704240000)"
    assert expand("x IN (${v:singlequote}) AND $__interval_s", r, {"v": ["a", "b"]}) == "x IN ('a','b') AND 90"
    assert expand("$__dt(d, toDateTime(t))", r).endswith(
        "(toDateTime(t) >= toDateTime(1704153600) AND toDateTime(t) <= toDateTime(1704240000))"
    )
    with pytest.raises(MacroError):
        expand("$__timeFilter(a, b)", r)
    with pytest.raises(MacroError):
        expand("$__nope", r)


def test_provisioning_points_at_the_dashboards() -> None:
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "grafana-clickhouse-datasource"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "marketprism.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = load_dashboards()
    assert {d["title"] for d in dashboards.values()} == {"Market overview", "Feed health", "Alerts", "Anomalies"}
    for dashboard in dashboards.values():
        for query in panel_queries(dashboard):
            assert "$__timeFilter" in query.sql, query
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"]


def test_every_panel_query_returns_rows_on_chdb(loaded: str) -> None:
    time_range = TimeRange.for_points(START, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    checked = 0
    with chdb_conn(loaded) as conn:
        for dashboard in load_dashboards().values():
            values: dict[str, list[str]] = {}
            for name, sql in variable_queries(dashboard):
                result = str(conn.query(expand(sql, time_range, values), "TabSeparated"))
                values[name] = result.splitlines()
                assert values[name], (dashboard["title"], name)
            for query in panel_queries(dashboard):
                sql = expand(query.sql, time_range, values)
                result = str(conn.query(sql, "TabSeparated"))
                assert result.strip(), f"{query.dashboard} / {query.panel}: no rows from\n{sql}"
                checked += 1
    assert checked >= 25

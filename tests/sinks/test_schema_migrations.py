"""Tables for every registry topic, versioned idempotent migrations, exact Decimal columns (chdb)."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import msgspec
import yaml
from sinkhelpers import rows

from pipeline.contracts import Bar, Trade, encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.topics import REGISTRY_PATH
from pipeline.sinks.chdb_backend import ChdbSink, json_splicer
from pipeline.sinks.migrations import MIGRATIONS, applied_versions, managed_topics, migrate, set_ttl, status
from pipeline.sinks.schema import decimal_fits, table_for


def test_every_registry_topic_has_a_table_and_a_migration() -> None:
    registry = load_registry()
    assert {t.name for t in registry if t.sink} <= managed_topics()
    names = [table_for(t).name for t in registry if t.sink]
    assert len(set(names)) == len(names)
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    for topic in (t for t in registry if t.sink):
        ddl = table_for(topic).create_sql()
        assert "PARTITION BY toDate(`" in ddl and "TTL " in ddl and "non_replicated_deduplication_window" in ddl
        assert "`_topic` LowCardinality(String)" in ddl and "`_offset` UInt64" in ddl
    trades = table_for(registry.get("md.trades.v1")).create_sql()
    for column in ("`price` Decimal(38, 18)", "`ts_event` DateTime64(6, 'UTC')", "`exchange` LowCardinality(String)"):
        assert column in trades


def test_decimal_fits_is_exact_about_the_column_limits() -> None:
    assert decimal_fits("99999999999999999999.999999999999999999")
    assert decimal_fits("0.000000000000000001")
    assert decimal_fits("1.50000000000000000000000")  # trailing zeros lose nothing
    assert not decimal_fits("0.0000000000000000001")
    assert not decimal_fits("123456789012345678901")
    assert decimal_fits("-99999999999999999999")


async def test_migrate_is_idempotent_and_status_reports_the_version(tmp_path: Path) -> None:
    sink = ChdbSink(str(tmp_path / "db"), load_registry(), run_migrations=False)
    await sink.setup()
    try:
        before = await status(sink, load_registry())
        assert before.version == 0 and before.pending == [m.version for m in MIGRATIONS]
        assert len(await migrate(sink, load_registry())) == len(MIGRATIONS)
        assert await migrate(sink, load_registry()) == []
        after = await status(sink, load_registry())
        assert after.version == after.latest == MIGRATIONS[-1].version
        assert after.pending == [] and after.topics_without_table == [] and after.missing_columns == {}
        await sink.execute("ALTER TABLE notifications DROP COLUMN firing")
        assert (await status(sink, load_registry())).missing_columns == {"notifications": ["firing"]}
        trades = table_for(load_registry().get("md.trades.v1"))
        await set_ttl(sink, trades, 7)
        ddl = await sink.fetch("SELECT create_table_query FROM system.tables WHERE name = 'trades'")
        assert "toIntervalDay(7)" in str(ddl[0][0])
    finally:
        await sink.close()


def _fitting_decimals(n: int) -> list[str]:
    """Boundary values plus random strings of every width Decimal(38, 18) holds (seeded)."""
    rng = random.Random(18)
    values = ["0", "-0.000000000000000001", "99999999999999999999.999999999999999999", "1.10", "36512.01000000"]
    for _ in range(n):
        whole = str(rng.randrange(10 ** rng.randint(1, 20)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 18)))
        values.append(("-" if rng.random() < 0.2 else "") + whole + (f".{frac}" if frac else ""))
    return values


async def test_decimal_columns_hold_every_fitting_string_exactly(tmp_path: Path) -> None:
    values = _fitting_decimals(2000)
    path = str(tmp_path / "db")
    sink = ChdbSink(path, load_registry())
    await sink.setup()
    try:
        for i, v in enumerate(values):
            record = msgspec.structs.replace(EXAMPLES[Trade], price=v, size=v.lstrip("-"), trade_id=str(i))
            sink.add("md.trades.v1", 0, i, encode(record))
        assert not (await sink.flush()).dead
    finally:
        await sink.close()
    stored = rows(path, "SELECT toString(price), toString(size) FROM trades ORDER BY _offset")
    assert [Decimal(p) for p, _ in stored] == [Decimal(v) for v in values]
    assert [Decimal(s) for _, s in stored] == [Decimal(v.lstrip("-")) for v in values]


async def test_crossed_us_migration_turns_datetime_into_exact_micros(tmp_path: Path) -> None:
    """Bars tables created when ``crossed_us`` was typed as epoch micros (DateTime64) become Int64
    durations holding the same microseconds; an interrupted run completes when re-run."""
    registry = load_registry()
    sink = ChdbSink(str(tmp_path / "db"), registry, run_migrations=False)
    await sink.setup()
    try:
        assert await applied_versions(sink) == set()
        for m in MIGRATIONS:  # the database as it was before version 6, old column type
            if m.version < 6:
                await m.apply(sink, registry)
                await sink.execute(f"INSERT INTO _schema_migrations (version, description) VALUES ({m.version}, '')")
        for name in ("bars_1s", "bars_1m"):
            await sink.execute(f"ALTER TABLE {name} MODIFY COLUMN crossed_us Nullable(DateTime64(6, 'UTC'))")
        bars = [
            msgspec.structs.replace(EXAMPLES[Bar], crossed_us=v, first_trade_id=str(i))
            for i, v in enumerate([0, 1, 999_999, 1_234_567, 59_999_999, None])
        ]
        for topic, interval in (("md.bars.1s.v1", "1s"), ("md.bars.1m.v1", "1m")):  # as the old sink wrote them
            splice = json_splicer(topic, 0)
            lines = [splice(None, i, encode(msgspec.structs.replace(b, interval=interval))) for i, b in enumerate(bars)]
            await sink.insert_payload(sink.tables[topic], b"\n".join(lines), f"old-{topic}")
        # interrupt bars_1m half-way: values copied, old column dropped, not renamed yet
        await sink.execute("ALTER TABLE bars_1m ADD COLUMN crossed_us__v6 Nullable(Int64) AFTER crossed_us")
        await sink.execute(
            "ALTER TABLE bars_1m UPDATE crossed_us__v6 = toUnixTimestamp64Micro(crossed_us) "
            "WHERE crossed_us IS NOT NULL SETTINGS mutations_sync = 2"
        )
        await sink.execute("ALTER TABLE bars_1m DROP COLUMN crossed_us SETTINGS mutations_sync = 2")

        assert await migrate(sink, registry) == ["6: bars: crossed_us is a duration (Int64 microseconds)"]
        assert (await status(sink, registry)).missing_columns == {}
        want = [str(b.crossed_us) if b.crossed_us is not None else "\\N" for b in bars]
        for name in ("bars_1s", "bars_1m"):
            assert [r[0] for r in await sink.fetch(f"SELECT toTypeName(crossed_us) FROM {name} LIMIT 1")] == [
                "Nullable(Int64)"
            ]
            got = await sink.fetch(f"SELECT crossed_us FROM {name} ORDER BY _offset")
            assert [r[0] for r in got] == want, name
            columns = await sink.fetch(f"SELECT name FROM system.columns WHERE table = '{name}'")
            assert "crossed_us__v6" not in {r[0] for r in columns}
    finally:
        await sink.close()


async def test_topics_marked_sink_false_get_no_table(tmp_path: Path) -> None:
    """``sink: false`` in the registry (or ``skip_topics``) keeps a topic out: no table, not consumed."""
    spec = yaml.safe_load(REGISTRY_PATH.read_text())
    for item in spec["topics"]:
        if item["name"] == "md.bbo.v1":
            item["sink"] = False
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(spec))
    registry = load_registry(path)
    sink = ChdbSink(str(tmp_path / "db"), registry, skip_topics=["md.funding.v1"])
    await sink.setup()
    try:
        assert "md.bbo.v1" not in sink.tables and "md.funding.v1" not in sink.tables
        assert "md.trades.v1" in sink.tables
        assert {"md.bbo.v1", "md.funding.v1"} <= set(sink.skipped_topics)
        tables = {r[0] for r in await sink.fetch("SELECT name FROM system.tables WHERE database = currentDatabase()")}
        assert "bbo" not in tables and "trades" in tables
        st = await status(sink, registry)
        assert "md.bbo.v1" in st.not_stored and "md.funding.v1" not in st.not_stored
        assert st.topics_without_table == [] and st.pending == []
    finally:
        await sink.close()

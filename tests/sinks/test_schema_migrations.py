"""Tables for every registry topic, versioned idempotent migrations, exact Decimal columns (chdb)."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import msgspec
from sinkhelpers import rows

from pipeline.contracts import Trade, encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.sinks.chdb_backend import ChdbSink
from pipeline.sinks.migrations import MIGRATIONS, managed_topics, migrate, set_ttl, status
from pipeline.sinks.schema import decimal_fits, table_for


def test_every_registry_topic_has_a_table_and_a_migration() -> None:
    registry = load_registry()
    assert {t.name for t in registry} <= managed_topics()
    names = [table_for(t).name for t in registry]
    assert len(set(names)) == len(names)
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    for topic in registry:
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

"""Backup, restore and rebuild of the tables (pipeline/sinks/backup.py), with real parts: records on the
test broker -> the sink (consumer group) -> chdb; a backup made with the engine's own ``BACKUP``, the
tables dropped, ``RESTORE``d, and every table's row count and checksum compared; the same tables rebuilt
from the topics into a fresh database and compared with the sink's rows (``_ingested_at`` aside). On
Debian's clickhouse-server (18.16, no ``BACKUP`` statement) the logical backup path is run the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sinkhelpers import corpus, produce, variations, wait_for
from typer.testing import CliRunner

from pipeline.contracts import Trade, load_registry
from pipeline.contracts.topics import TRADES
from pipeline.settings import Settings
from pipeline.sinks.backup import (
    BackupError,
    Digest,
    backup,
    destination_sql,
    digests,
    local_dir,
    open_database,
    read_manifest,
    rebuild,
    restore,
    tables,
)
from pipeline.sinks.factory import make_sink
from pipeline.sinks.runner import RunnerOptions, SinkRunner

PER_TOPIC = 20
BAD_TRADE = b'{"exchange":"binance","symbol":"BTC-USDT"}'


def _digests(url: str, exclude: tuple[str, ...] = ()) -> dict[str, Digest]:
    db = open_database(url)
    try:
        return digests(db, exclude=exclude)
    finally:
        db.close()


def _drop_all(url: str) -> None:
    db = open_database(url)
    try:
        for name in tables(db):
            db.execute(f"DROP TABLE `{db.database}`.`{name}`")
        assert tables(db) == []
    finally:
        db.close()


async def _sink_everything(settings: Settings, names: list[str], expected: int) -> None:
    """Run the real sink (consumer group) over ``names`` until ``expected`` rows are written."""
    sink = make_sink(settings.clickhouse_url, load_registry(), settings.topic_prefix)
    runner = SinkRunner(
        settings,
        sink,
        [settings.topic(name) for name in names],
        RunnerOptions(group_id=f"{settings.topic_prefix}sink", batch_rows=113, batch_interval_s=0.3),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))

    async def written() -> bool:
        if task.done():
            task.result()  # surface a crash of the runner
        return sink.rows_written >= expected

    try:
        assert await wait_for(written, limit_s=180)
    finally:
        stop.set()
        await task


async def test_chdb_backup_restore_and_rebuild_from_topics(topics: Settings, tmp_path: Path) -> None:
    records = corpus(PER_TOPIC)
    await produce(topics, records, extra={TRADES.name: [BAD_TRADE]})
    names = sorted(records)
    expected = PER_TOPIC * len(records) + 1  # the bad trade comes back through ops.dlq.v1
    await _sink_everything(topics, names, expected)
    url = topics.clickhouse_url

    original = _digests(url)
    stored = {name: d for name, d in original.items() if name != "_schema_migrations"}
    assert sum(d.rows for d in stored.values()) == expected
    assert all(d.rows > 0 for d in stored.values()), stored

    # back up, drop every table, restore: every table (the migrations' record too) comes back identical
    target = tmp_path / "backups" / "first"
    made = backup(url, str(target))
    assert made.method == "BACKUP" and made.digests == original
    manifest = read_manifest(target)
    assert manifest is not None and manifest[1] == original
    with pytest.raises(BackupError, match="not an empty directory"):
        backup(url, str(target))
    _drop_all(url)
    assert _digests(url) == {}
    restored = restore(url, str(target))
    assert restored.mismatches == {}
    assert restored.digests == original == _digests(url)
    with pytest.raises(BackupError, match="--replace"):
        restore(url, str(target))
    assert restore(url, str(target), replace=True).mismatches == {}
    assert _digests(url) == original

    # rebuild from the topics into a fresh database: the same rows, exactly once
    fresh = f"chdb://{tmp_path / 'rebuilt'}"
    report = await rebuild(topics, fresh)
    assert {name: r.read for name, r in report.items() if r.read} == {
        name: len(items) + (name == TRADES.name) + (name == "ops.dlq.v1") for name, items in records.items()
    }
    assert report[TRADES.name].dead == {"invalid_record": 1}
    assert sum(r.written for r in report.values()) == expected  # the bad trade as its dead letter's row only
    without_time = ("_ingested_at",)
    rebuilt = _digests(fresh, exclude=without_time)
    assert rebuilt.keys() == original.keys()
    assert {n: d for n, d in rebuilt.items() if n in stored} == {
        n: d for n, d in _digests(url, exclude=without_time).items() if n in stored
    }

    # rebuild into the database that already holds everything: nothing is written twice
    again = await rebuild(topics, url, [TRADES.name])
    assert again[TRADES.name].written == 0
    assert again[TRADES.name].skipped == PER_TOPIC  # stored rows skipped; the bad trade is dead again
    assert _digests(url) == original


async def test_rebuild_completes_a_partly_lost_table(topics: Settings, tmp_path: Path) -> None:
    """Rows deleted from the table (a lost part) come back from the topic; the rest is not duplicated."""
    trades = variations(Trade, 300)
    await produce(topics, {TRADES.name: trades})
    await _sink_everything(topics, [TRADES.name], len(trades))
    url = topics.clickhouse_url
    original = _digests(url, exclude=("_ingested_at",))["trades"]
    db = open_database(url)
    try:
        db.execute("ALTER TABLE trades DELETE WHERE _offset % 3 = 0 SETTINGS mutations_sync = 1")
        assert digests(db, ["trades"])["trades"].rows < len(trades)
    finally:
        db.close()
    report = await rebuild(topics, url, [TRADES.name])
    assert report[TRADES.name].read == len(trades)
    assert report[TRADES.name].written + report[TRADES.name].skipped == len(trades)
    assert 0 < report[TRADES.name].written < len(trades)
    assert _digests(url, exclude=("_ingested_at",))["trades"] == original


def test_destinations() -> None:
    assert destination_sql("/backups/mp-1") == "File('/backups/mp-1')"
    assert destination_sql("it's") == f"File('{Path.cwd() / 'it'}\\'s')"
    for expression in ("Disk('backups', 'mp-1')", "S3('https://bucket.example/mp-1', 'key', 'secret')"):
        assert destination_sql(expression) == expression and local_dir(expression) is None
    assert local_dir("rel/dir") == Path.cwd() / "rel" / "dir"


def test_cli_backup_restore_rebuild(tmp_path: Path, settings: Settings) -> None:
    """The commands as users run them (chdb): backup, refuse a clash, restore --replace, rebuild errors."""
    from pipeline.cli import app

    url = settings.clickhouse_url
    env = {"MARKETPRISM_CLICKHOUSE_URL": url, "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}
    cli = CliRunner()
    migrated = cli.invoke(app, ["db", "migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    target = tmp_path / "bk"
    made = cli.invoke(app, ["db", "backup", str(target)], env=env)
    assert made.exit_code == 0, made.output
    assert "trades" in made.output and (target / "marketprism-manifest.json").is_file()
    refused = cli.invoke(app, ["db", "backup", f"File('{tmp_path / 'elsewhere'}')"], env=env)
    assert refused.exit_code == 2 and "BACKUP failed" in refused.output and "allowed_path" in refused.output
    clash = cli.invoke(app, ["db", "restore", str(target)], env=env)
    assert clash.exit_code == 2 and "--replace" in clash.output
    replaced = cli.invoke(app, ["db", "restore", str(target), "--replace"], env=env)
    assert replaced.exit_code == 0, replaced.output
    assert "every table matches the backup" in replaced.output
    missing = cli.invoke(app, ["db", "restore", str(tmp_path / "nothing")], env=env)
    assert missing.exit_code == 2 and "no backup" in missing.output
    trades = variations(Trade, 50)
    asyncio.run(_produce_to_fresh_topics(settings, {TRADES.name: trades}))
    first = cli.invoke(app, ["db", "rebuild", "--from-topics", "--topic", TRADES.name], env=env | prefix(settings))
    assert first.exit_code == 0, first.output
    assert f"{TRADES.name}: read 50, wrote 50, skipped 0" in first.output
    second = cli.invoke(app, ["db", "rebuild", "--from-topics", "--topic", TRADES.name], env=env | prefix(settings))
    assert second.exit_code == 0, second.output
    assert f"{TRADES.name}: read 50, wrote 0, skipped 50" in second.output
    no_flag = cli.invoke(app, ["db", "rebuild"], env=env)
    assert no_flag.exit_code == 2 and "--from-topics" in no_flag.output
    bad_topic = cli.invoke(app, ["db", "rebuild", "--from-topics", "--topic", "no.such.v1"], env=env)
    assert bad_topic.exit_code == 2 and "no table" in bad_topic.output


def prefix(settings: Settings) -> dict[str, str]:
    return {"MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix}


async def _produce_to_fresh_topics(settings: Settings, records: dict[str, list[Any]]) -> None:
    from pipeline.kafka.admin import apply

    await apply(settings.kafka, load_registry(), settings.topic_prefix)
    await produce(settings, records)


SERVER_TRADES = """CREATE TABLE {db}.trades (_topic String, _partition UInt32, _offset UInt64, exchange String,
    symbol String, raw_symbol String, trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String,
    ts_event DateTime, ts_recv UInt64) ENGINE = MergeTree PARTITION BY toDate(ts_event)
    ORDER BY (exchange, symbol, ts_event)"""  # as tests/sinks/test_backend_conformance.py: the 18.16 server's types


@pytest.fixture
def server_db(clickhouse_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from clickhouse_driver import Client

    db = f"backup_{uuid.uuid4().hex[:8]}"
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE DATABASE {db}")
    client.execute(SERVER_TRADES.format(db=db))
    try:
        yield f"clickhouse://default:@{clickhouse_server.host}:{clickhouse_server.tcp_port}/{db}"
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


@pytest.mark.clickhouse_server
async def test_server_backup_drop_restore(server_db: str, tmp_path: Path) -> None:
    sink = make_sink(server_db, load_registry(), "bk.", run_migrations=False)
    await sink.setup()
    try:
        for i, trade in enumerate(variations(Trade, 400)):
            from pipeline.contracts import encode

            sink.add("bk." + TRADES.name, i % 3, i // 3, encode(trade))
        cp = await sink.flush()
        assert cp.dead == []
    finally:
        await sink.close()
    original = _digests(server_db)
    assert original["trades"].rows == 400

    target = tmp_path / "server-backup"
    made = backup(server_db, str(target))
    assert made.method == "logical" and made.digests == original
    _drop_all(server_db)
    restored = restore(server_db, str(target))
    assert restored.mismatches == {} and restored.digests == original
    assert _digests(server_db) == original
    with pytest.raises(BackupError, match="--replace"):
        restore(server_db, str(target))
    assert restore(server_db, str(target), replace=True).mismatches == {}
    assert _digests(server_db) == original


@pytest.fixture
def second_server_db(clickhouse_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from clickhouse_driver import Client

    db = f"rebuilt_{uuid.uuid4().hex[:8]}"
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE DATABASE {db}")
    client.execute(SERVER_TRADES.format(db=db))
    try:
        yield f"clickhouse://default:@{clickhouse_server.host}:{clickhouse_server.tcp_port}/{db}"
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


@pytest.mark.clickhouse_server
async def test_server_rebuild_from_topics_matches_the_sink(
    topics: Settings, server_db: str, second_server_db: str
) -> None:
    """The real sink fills one server database from the broker; a rebuild from the topics fills a second
    one (18.16's own table types, no migrations) with the same rows, and a second rebuild adds nothing."""
    trades = variations(Trade, 250)
    await produce(topics, {TRADES.name: trades})
    original_settings = topics.model_copy(update={"clickhouse_url": server_db})
    sink = make_sink(server_db, load_registry(), topics.topic_prefix, run_migrations=False)
    runner = SinkRunner(
        original_settings,
        sink,
        [topics.topic(TRADES.name)],
        RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=71, batch_interval_s=0.3),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))

    async def written() -> bool:
        if task.done():
            task.result()
        return sink.rows_written >= len(trades)

    try:
        assert await wait_for(written, limit_s=180)
    finally:
        stop.set()
        await task
    original = _digests(server_db)
    assert original["trades"].rows == len(trades)

    report = await rebuild(topics, second_server_db, [TRADES.name], migrate=False, batch_rows=100)
    assert (report[TRADES.name].read, report[TRADES.name].written) == (len(trades), len(trades))
    assert _digests(second_server_db) == original
    again = await rebuild(topics, second_server_db, [TRADES.name], migrate=False)
    assert (again[TRADES.name].written, again[TRADES.name].skipped) == (0, len(trades))
    assert _digests(second_server_db) == original

"""Records on every registry topic -> the sink (real broker, consumer group) -> chdb: every record once,
decimals exactly as sent, bad records on ops.dlq.v1 and the rest stored."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer
from sinkhelpers import corpus, produce, rows, variations, wait_for

from pipeline.contracts import BookUpdate, Trade, encode, load_registry
from pipeline.kafka import consumer_options
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import ChdbSink, chdb_path
from pipeline.sinks.factory import make_sink
from pipeline.sinks.runner import RunnerOptions, SinkRunner
from pipeline.sinks.schema import decimal_fields, table_for

PER_TOPIC = 30
BAD_TRADES = [
    b"{not json",
    b'{"exchange":"binance","symbol":"BTC-USDT"}',
    b'{"exchange":"binance","symbol":"BTC-USDT","raw_symbol":"BTCUSDT","trade_id":"x","price":"0.0000000000000000001",'
    b'"size":"1","side":"buy","ts_event":1700000000000000,"ts_recv":1700000000000001}',
]


def _decimals(record: object, fields: tuple[tuple[str, str], ...]) -> Counter[tuple[str, Decimal]]:
    found: Counter[tuple[str, Decimal]] = Counter()
    for name, shape in fields:
        value = getattr(record, name)
        if shape == "levels":
            found.update((name, Decimal(x)) for level in value for x in level)
        elif shape == "map":
            found.update((name, Decimal(x)) for x in value.values())
        elif value is not None:
            found[(name, Decimal(value))] += 1
    return found


def _stored_decimals(path: str, table: str, fields: tuple[tuple[str, str], ...]) -> Counter[tuple[str, Decimal]]:
    found: Counter[tuple[str, Decimal]] = Counter()
    for name, shape in fields:
        if shape == "levels":
            sql = f"SELECT toString(x) FROM {table} ARRAY JOIN arrayFlatten(arrayMap(l -> [l.1, l.2], {name})) AS x"
        elif shape == "map":
            sql = f"SELECT toString(x) FROM {table} ARRAY JOIN mapValues({name}) AS x"
        else:
            sql = f"SELECT toString({name}) FROM {table} WHERE {name} IS NOT NULL"
        found.update((name, Decimal(r[0])) for r in rows(path, sql))
    return found


async def test_every_topic_lands_once_and_exact(topics: Settings) -> None:
    registry = load_registry()
    records = corpus(PER_TOPIC)
    await produce(topics, records, extra={"md.trades.v1": BAD_TRADES})

    sink = make_sink(topics.clickhouse_url, registry, topics.topic_prefix)
    tables = {t.name: table_for(t) for t in registry if t.name in records}
    runner = SinkRunner(
        topics,
        sink,
        [topics.topic(name) for name in records],
        RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=97, batch_interval_s=0.3),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    expected_rows = PER_TOPIC * len(records) + len(BAD_TRADES)  # the bad trades come back as dead letters
    try:
        assert await wait_for(lambda: _rows_written(sink, expected_rows, task), limit_s=180)
    finally:
        stop.set()
        await task

    path = chdb_path(topics.clickhouse_url)
    union = " UNION ALL ".join(f"SELECT _topic, count() FROM {t.name} GROUP BY _topic" for t in tables.values())
    counts = {r[0]: int(r[1]) for r in rows(path, union)}
    for name, items in records.items():
        table = tables[name]
        extra = len(BAD_TRADES) if name == "ops.dlq.v1" else 0
        assert counts.get(topics.topic(name)) == len(items) + extra, name
        dupes = rows(path, f"SELECT _partition, _offset, count() c FROM {table.name} GROUP BY 1, 2 HAVING c > 1")
        assert dupes == [], (name, dupes)
        fields = decimal_fields(table.record_type)
        if fields:
            want: Counter[tuple[str, Decimal]] = Counter()
            for record in items:
                want += _decimals(record, fields)
            assert _stored_decimals(path, table.name, fields) == want, name

    dead = rows(path, "SELECT reason, topic, offset FROM dlq WHERE source = 'sink.clickhouse' ORDER BY offset")
    assert [d[0] for d in dead] == ["invalid_record", "invalid_record", "decimal_out_of_range"]
    assert {d[1] for d in dead} == {topics.topic("md.trades.v1")}


async def _rows_written(sink, expected: int, task: asyncio.Task[None]) -> bool:  # type: ignore[no-untyped-def]
    if task.done():
        task.result()  # surface a crash of the runner
    return bool(sink.rows_written >= expected)


async def test_restart_skips_rows_stored_but_not_committed(topics: Settings) -> None:
    """A sink that died between its insert and its commit: the next owner finds and skips those rows."""
    trades = variations(Trade, 500)
    await produce(topics, {"md.trades.v1": trades})
    name = topics.topic("md.trades.v1")
    dying = make_sink(topics.clickhouse_url, load_registry(), topics.topic_prefix)
    await dying.setup()
    reader = AIOKafkaConsumer(name, **consumer_options(topics.kafka, None))
    await reader.start()
    try:
        seen = 0
        while seen < 400:  # store 400 of the 500 records, commit nothing
            for tp, messages in (await reader.getmany(timeout_ms=1000)).items():
                for m in messages[: 400 - seen]:
                    dying.add(tp.topic, tp.partition, m.offset, m.value)
                    seen += 1
        await dying.flush()
    finally:
        await reader.stop()
        await dying.close()

    sink = make_sink(topics.clickhouse_url, load_registry(), topics.topic_prefix)
    runner = SinkRunner(
        topics, sink, [name], RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_interval_s=0.2)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert await wait_for(lambda: _rows_written(sink, 100, task), limit_s=120)
    finally:
        stop.set()
        await task
    assert sink.skipped == 400
    path = chdb_path(topics.clickhouse_url)
    assert rows(path, "SELECT count(), uniqExact(_partition, _offset) FROM trades") == [["500", "500"]]


async def test_rows_the_table_refuses_become_dead_letters(tmp_path: Path) -> None:
    """A record valid for its contract that ClickHouse still refuses is isolated by halving the batch
    (book updates travel as JSON; flat records as Arrow columns built from the validated record)."""
    sink = ChdbSink(str(tmp_path / "db"), load_registry())
    await sink.setup()
    try:
        good = [encode(b) for b in variations(BookUpdate, 40)]
        poison = good[0][:-1] + b',"_offset":"not a number"}'  # contract-valid, but a duplicate column
        for offset, value in enumerate([*good[:20], poison, *good[20:]]):
            sink.add("md.book.v1", 2, offset, value)
        dead = (await sink.flush()).dead
    finally:
        await sink.close()
    assert [(d.offset, d.reason) for d in dead] == [(20, "insert_rejected")]
    assert dead[0].value.endswith(poison[1:])  # the row as sent: the value with its coordinates spliced in
    assert rows(str(tmp_path / "db"), "SELECT count() FROM book") == [["40"]]


async def test_flat_rows_a_column_cannot_hold_become_dead_letters(tmp_path: Path) -> None:
    """Trades travel as Arrow columns: a contract-valid time beyond Int64 microseconds is refused, the
    batch is halved down to it, and its dead letter carries the Kafka value unchanged."""
    sink = ChdbSink(str(tmp_path / "db"), load_registry())
    await sink.setup()
    try:
        good = [encode(t) for t in variations(Trade, 40)]
        poison = encode(msgspec.structs.replace(variations(Trade, 1)[0], trade_id="far", ts_event=2**64))
        for offset, value in enumerate([*good[:7], poison, *good[7:]]):
            sink.add("md.trades.v1", 1, offset, value)
        dead = (await sink.flush()).dead
    finally:
        await sink.close()
    assert [(d.offset, d.reason, d.value) for d in dead] == [(7, "insert_rejected", poison)]
    assert rows(str(tmp_path / "db"), "SELECT count(), uniqExact(_offset) FROM trades") == [["40", "40"]]


async def test_two_sinks_in_one_group_split_partitions_without_duplicates(topics: Settings) -> None:
    """A second sink joins the group mid-stream: partitions move between them, every record lands once."""
    name = topics.topic("md.trades.v1")
    trades = variations(Trade, 3000)
    options = RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=150, batch_interval_s=0.2)
    sinks = [make_sink(topics.clickhouse_url, load_registry(), topics.topic_prefix) for _ in range(2)]
    runners = [SinkRunner(topics, sink, [name], options) for sink in sinks]
    stop = asyncio.Event()
    first = asyncio.create_task(runners[0].run(stop))
    second: asyncio.Task[None] | None = None
    try:
        await produce(topics, {"md.trades.v1": trades[:1500]})
        assert await wait_for(lambda: _rows_written(sinks[0], 300, first), limit_s=120)
        second = asyncio.create_task(runners[1].run(stop))
        assert await wait_for(lambda: _assigned(runners[1]), limit_s=120)
        await produce(topics, {"md.trades.v1": trades[1500:]})
        assert await wait_for(lambda: _total_written(sinks, 3000, [first, second]), limit_s=180)
    finally:
        stop.set()
        await asyncio.gather(first, *([second] if second else []))
    assert sinks[1].rows_written > 0
    path = chdb_path(topics.clickhouse_url)
    assert rows(path, "SELECT count(), uniqExact(_partition, _offset) FROM trades") == [["3000", "3000"]]


async def _assigned(runner: SinkRunner) -> bool:
    return bool(runner.consumer and runner.consumer.assignment())


async def _total_written(sinks, expected: int, tasks: list[asyncio.Task[None]]) -> bool:  # type: ignore[no-untyped-def]
    for task in tasks:
        if task.done():
            task.result()
    return sum(s.rows_written for s in sinks) >= expected

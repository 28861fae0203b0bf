"""The sink contract, run against both backends (as tests/collectors runs one suite over every venue): the
embedded chdb (``chdb://``) and a real clickhouse-server (``clickhouse://``, the session fixture of
tests/conftest.py, in a database of its own per test). Each case builds its sink with ``make_sink`` from a
URL, as ``marketprism sink`` does.

The Debian clickhouse-server here is 18.16 (no ``DateTime64``): as the other server tests do, its case
creates the trades table in the server's own types and runs no migrations, so it covers ``md.trades.v1``;
the chdb case covers every stored topic with the migrated schema.

The contract (pipeline/sinks/base.py, clickhouse.py): ``add`` + ``flush`` stores every record of every topic
exactly once with its coordinates, and the checkpoint hands back the next offset of each partition; after a
restart, ``recover`` finds what is already stored and a re-read of those records stores nothing twice (their
offsets still advance); a record the table refuses (or the backend cannot convert) becomes a dead letter
carrying its Kafka value while the rest of its batch lands.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import TopicPartition
from sinkhelpers import corpus, variations

from pipeline.contracts import Trade, encode, load_registry
from pipeline.contracts.topics import TRADES
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.sinks.factory import make_sink
from pipeline.sinks.schema import table_for

PER_TOPIC = 25
PREFIX = "conf."


SERVER_TRADES = """CREATE TABLE {db}.trades (_topic String, _partition UInt32, _offset UInt64, exchange String,
    symbol String, raw_symbol String, trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String,
    ts_event DateTime, ts_recv UInt64) ENGINE = MergeTree PARTITION BY toDate(ts_event)
    ORDER BY (exchange, symbol, ts_event)"""  # as tests/sinks/test_server_outage.py: the 18.16 server's types


@dataclass
class Backend:
    """One sink backend: a fresh destination URL per test, the topics it holds and the sink options it needs."""

    name: str
    url: str
    topics: tuple[str, ...]
    options: dict[str, Any]

    def sink(self) -> ClickHouseSink:
        return make_sink(self.url, load_registry(), PREFIX, **self.options)


@pytest.fixture(params=["chdb", pytest.param("clickhouse-server", marks=pytest.mark.clickhouse_server)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "chdb":
        yield Backend("chdb", f"chdb://{tmp_path / 'db'}", tuple(corpus(1)), {})
        return
    server = request.getfixturevalue("clickhouse_server")
    from clickhouse_driver import Client

    db = f"conformance_{uuid.uuid4().hex[:8]}"
    client = Client(host=server.host, port=server.tcp_port)
    client.execute(f"CREATE DATABASE {db}")
    client.execute(SERVER_TRADES.format(db=db))
    try:
        yield Backend(
            "clickhouse-server",
            f"clickhouse://default:@{server.host}:{server.tcp_port}/{db}",
            (TRADES.name,),
            {"run_migrations": False},
        )
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        client.disconnect()


@pytest.fixture
async def sink(backend: Backend) -> AsyncIterator[ClickHouseSink]:
    s = backend.sink()
    await s.setup()
    try:
        yield s
    finally:
        await s.close()


def _add_corpus(sink: ClickHouseSink, records: dict[str, list[Any]]) -> dict[TopicPartition, int]:
    """Every record at (prefixed topic, partition i % 3, its offset in that partition); the next offsets."""
    next_offsets: dict[TopicPartition, int] = {}
    for name, items in records.items():
        for i, record in enumerate(items):
            tp = TopicPartition(PREFIX + name, i % 3)
            offset = next_offsets.get(tp, 0)
            sink.add(tp.topic, tp.partition, offset, encode(record))
            next_offsets[tp] = offset + 1
    return next_offsets


async def _counts(sink: ClickHouseSink, names: list[str]) -> dict[str, tuple[int, int]]:
    """Per topic: rows stored and distinct (partition, offset) coordinates."""
    out = {}
    for name in names:
        table = table_for(load_registry().get(name)).name
        rows = await sink.fetch(f"SELECT count(), uniqExact(_partition, _offset) FROM {table}")
        out[name] = (int(rows[0][0]), int(rows[0][1]))
    return out


async def test_every_topic_is_stored_once_and_the_checkpoint_gives_the_next_offsets(
    backend: Backend, sink: ClickHouseSink
) -> None:
    records = {name: items for name, items in corpus(PER_TOPIC).items() if name in backend.topics}
    expected = _add_corpus(sink, records)
    checkpoint = await sink.flush()
    assert checkpoint.dead == []
    assert checkpoint.offsets == expected
    assert await _counts(sink, list(records)) == {name: (PER_TOPIC, PER_TOPIC) for name in records}


async def test_after_a_restart_stored_records_are_skipped_but_their_offsets_advance(backend: Backend) -> None:
    trades = variations(Trade, 40)
    first = backend.sink()
    await first.setup()
    try:
        for offset, trade in enumerate(trades[:30]):
            first.add(PREFIX + TRADES.name, 0, offset, encode(trade))
        await first.flush()  # stored, but (as after a crash) never committed
    finally:
        await first.close()
    second = backend.sink()
    await second.setup()
    try:
        tp = TopicPartition(PREFIX + TRADES.name, 0)
        assert await second.recover(tp, 0) == 30
        for offset, trade in enumerate(trades):  # the group re-reads from the last commit (0)
            second.add(tp.topic, 0, offset, encode(trade))
        checkpoint = await second.flush()
        assert checkpoint.offsets == {tp: 40} and checkpoint.dead == []
        assert await _counts(second, [TRADES.name]) == {TRADES.name: (40, 40)}
    finally:
        await second.close()


async def test_a_row_the_table_refuses_is_a_dead_letter_and_the_rest_lands(sink: ClickHouseSink) -> None:
    good = [encode(t) for t in variations(Trade, 20)]
    poison = encode(msgspec.structs.replace(variations(Trade, 1)[0], trade_id="far", ts_event=2**64))
    for offset, value in enumerate([*good[:5], poison, *good[5:]]):
        sink.add(PREFIX + TRADES.name, 1, offset, value)
    checkpoint = await sink.flush()
    assert [(d.offset, d.value) for d in checkpoint.dead] == [(5, poison)]
    assert checkpoint.dead[0].reason and checkpoint.dead[0].error  # the label is the backend's (refused/unconvertible)
    assert checkpoint.offsets == {TopicPartition(PREFIX + TRADES.name, 1): 21}
    assert await _counts(sink, [TRADES.name]) == {TRADES.name: (20, 20)}

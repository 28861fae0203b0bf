"""The embedded backend: chdb (the ClickHouse engine in-process), the default for the demo.

Two insert paths, both through ``Connection.send_insert``:

- flat tables (every column a string, decimal, integer, float, bool or time, optional or not: trades,
  BBO, bars, funding, ...) get ``ArrowStream``: one Arrow column per field built from the validated
  records (decimals stay strings, which the engine parses exactly into ``Decimal(38, 18)``; epoch
  microseconds become ``timestamp[us, UTC]``, i.e. ``DateTime64(6)`` without arithmetic). The engine
  reads Arrow columns about three times cheaper than JSON;
- other tables (book levels, maps, nested records) get the topic's JSON values with
  ``_topic``/``_partition``/``_offset`` spliced in front as ``JSONEachRow``: decimal strings are
  parsed straight into ``Decimal`` and epoch-microsecond integers into ``DateTime64(6)``
  (``input_format_read_datetime_number_as_raw_value``).

Either way no price ever passes through a float.

chdb hosts one engine per process bound to one path; connections to it are thread-safe, and every
call here runs in a worker thread (``asyncio.to_thread``) behind one lock so the event loop never
blocks and a streaming insert is never interleaved with another statement on the connection.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
from collections.abc import Callable
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.contracts import Record
from pipeline.contracts.topics import TopicRegistry
from pipeline.sinks.base import RejectedError, UnavailableError
from pipeline.sinks.clickhouse import DATA_ERROR_CODES, ClickHouseSink
from pipeline.sinks.schema import Table, qualified

log = logging.getLogger(__name__)

INSERT_SETTINGS = (
    "input_format_skip_unknown_fields = 1, input_format_read_datetime_number_as_raw_value = 1, "
    "input_format_json_named_tuples_as_objects = 1"
)
_CODE = re.compile(r"Code: (\d+)")


def chdb_path(url: str) -> str:
    """``chdb:///abs/path`` -> ``/abs/path``; a first component starting with ``.`` (the default
    ``chdb:///.marketprism/chdb``) or ``chdb://rel/path`` is relative to the working directory."""
    path = url.removeprefix("chdb://")
    if path.startswith("/.") or not path.startswith("/"):
        path = path.lstrip("/")
        return str(Path.cwd() / path)
    return path


# One row of a flat table: ``(topic, partition, offset, record, value)``, the validated record kept
# as it is (columns are built at insert time) and the Kafka value for a dead letter. A plain tuple:
# ``zip`` builds a list of them without a Python call per row.
ArrowRow = tuple[str, int, int, Record, bytes]


def _arrow_type(column_type: str) -> pa.DataType | None:
    """The Arrow type a flat column is sent as, or ``None`` for a column that needs JSON."""
    inner = column_type
    for wrapper in ("LowCardinality(", "Nullable("):
        if inner.startswith(wrapper):
            inner = inner[len(wrapper) : -1]
    if inner.startswith("DateTime64(6"):
        return pa.timestamp("us", tz="UTC")
    if inner.startswith("Decimal(") or inner == "String":
        return pa.string()
    return {"Int64": pa.int64(), "Float64": pa.float64(), "Bool": pa.bool_()}.get(inner)


@functools.cache
def arrow_plan(table: Table) -> tuple[tuple[str, pa.DataType], ...] | None:
    """``(column, Arrow type)`` of every record field when the table is flat, else ``None``."""
    plan = tuple((c.name, _arrow_type(c.type)) for c in table.columns)
    return None if any(t is None for _, t in plan) else plan  # type: ignore[return-value]


def json_splicer(topic: str, partition: int) -> Callable[[Record | None, int, bytes], bytes]:
    """The value's JSON object with the Kafka coordinates spliced in as its first keys."""
    prefix = b'{"_topic":"%s","_partition":%d,"_offset":' % (topic.encode(), partition)

    def make_row(record: Record | None, offset: int, value: bytes) -> bytes:
        if value[0] != 0x7B:  # '{'
            value = value.lstrip()
        return prefix + b"%d," % offset + value[1:]

    return make_row


def classify(exc: Exception) -> Exception:
    if isinstance(exc, (RejectedError, UnavailableError)):
        return exc
    match = _CODE.search(str(exc))
    if match and int(match.group(1)) in DATA_ERROR_CODES:
        return RejectedError(str(exc))
    return UnavailableError(str(exc))


class ChdbSink(ClickHouseSink):
    def __init__(self, path: str, registry: TopicRegistry, topic_prefix: str = "", **options: Any):
        super().__init__(registry, topic_prefix, database="", **options)
        self.path = path
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        import chdb

        await asyncio.to_thread(Path(self.path).mkdir, parents=True, exist_ok=True)
        self._conn = await asyncio.to_thread(chdb.connect, self.path)
        log.info("chdb %s (engine %s) at %s", chdb.__version__, chdb.engine_version, self.path)
        await super().setup()

    async def close(self) -> None:
        if self._conn is not None:
            async with self._lock:
                await asyncio.to_thread(self._conn.close)
            self._conn = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._conn is None:
            raise UnavailableError("chdb connection is closed")
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception as exc:  # chdb raises RuntimeError/ChdbError carrying the engine's error code
                raise classify(exc) from exc

    async def execute(self, sql: str) -> None:
        await self._call(self._conn.query, sql)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        text: Any = await self._call(self._conn.query, sql, "TabSeparated")
        return [tuple(line.split("\t")) for line in str(text).splitlines() if line]

    def row_maker(self, table: Table, topic: str, partition: int) -> Callable[[Record, int, bytes], Any]:
        """One record's row, as :meth:`rows_for` makes them (an :class:`ArrowRow` or spliced JSON)."""
        if arrow_plan(table) is not None:
            return lambda record, offset, value: (topic, partition, offset, record, value)
        return json_splicer(topic, partition)

    def rows_for(
        self, table: Table, topic: str, partition: int, records: list[Record], offsets: list[int], values: list[bytes]
    ) -> list[Any]:
        """Flat tables: the records themselves (:class:`ArrowRow`); others: :meth:`row_maker`'s splice
        over the whole list in one comprehension."""
        if arrow_plan(table) is not None:
            return list(zip(itertools.repeat(topic), itertools.repeat(partition), offsets, records, values))
        prefix = b'{"_topic":"%s","_partition":%d,"_offset":' % (topic.encode(), partition)
        return [b"%s%d,%s" % (prefix, o, v.lstrip()[1:]) for o, v in zip(offsets, values, strict=True)]

    def _insert_sync(self, table: Table, payload: bytes, token: str) -> None:
        sql = (
            f"INSERT INTO {qualified(self.database, table.name)} SETTINGS "
            f"insert_deduplication_token = '{token}', {INSERT_SETTINGS}"
        )
        with self._conn.send_insert(sql, "JSONEachRow") as inserter:
            inserter.append(payload)
            inserter.finish()

    def _insert_arrow_sync(self, table: Table, rows: list[ArrowRow], token: str) -> None:
        plan = arrow_plan(table)
        assert plan is not None
        records = list(map(itemgetter(3), rows))
        try:
            columns = [
                pa.array(list(map(itemgetter(0), rows)), pa.string()),
                pa.array(list(map(itemgetter(1), rows)), pa.uint32()),
                pa.array(list(map(itemgetter(2), rows)), pa.uint64()),
                *(pa.array(list(map(attrgetter(name), records)), type_) for name, type_ in plan),
            ]
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:  # a value its column cannot hold
            raise RejectedError(f"{type(exc).__name__}: {exc}") from exc
        names = ["_topic", "_partition", "_offset", *(name for name, _ in plan)]
        batch = pa.record_batch(columns, names=names)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        sql = (
            f"INSERT INTO {qualified(self.database, table.name)} ({', '.join(f'`{n}`' for n in names)}) "
            f"SETTINGS insert_deduplication_token = '{token}'"
        )
        with self._conn.send_insert(sql, "ArrowStream") as inserter:
            inserter.append(sink.getvalue().to_pybytes())
            inserter.finish()

    async def insert(self, table: Table, rows: list[Any], token: str) -> None:
        if isinstance(rows[0], tuple):
            await self._call(self._insert_arrow_sync, table, rows, token)
        else:
            await self.insert_payload(table, b"\n".join(rows) + b"\n", token)

    def payload_of(self, row: Any) -> bytes:
        return row[4] if isinstance(row, tuple) else super().payload_of(row)

    async def insert_payload(self, table: Table, payload: bytes, token: str) -> None:
        """Insert ready JSONEachRow bytes (the benchmark's baseline uses this directly)."""
        await self._call(self._insert_sync, table, payload, token)

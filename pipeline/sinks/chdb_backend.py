"""The embedded backend: chdb (the ClickHouse engine in-process), the default for the demo.

Rows are the topic's JSON values with ``_topic``/``_partition``/``_offset`` spliced in front, streamed
as ``JSONEachRow`` through ``Connection.send_insert``: the engine parses decimal strings straight
into ``Decimal`` and epoch-microsecond integers into ``DateTime64(6)``
(``input_format_read_datetime_number_as_raw_value``), so no price ever passes through a float.

chdb hosts one engine per process bound to one path; connections to it are thread-safe, and every
call here runs in a worker thread (``asyncio.to_thread``) behind one lock so the event loop never
blocks and a streaming insert is never interleaved with another statement on the connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def classify(exc: Exception) -> Exception:
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

    def row_maker(self, table: Table, topic: str, partition: int) -> Callable[[Record, int, bytes], bytes]:
        """The value's JSON object with the Kafka coordinates spliced in as its first keys."""
        prefix = b'{"_topic":"%s","_partition":%d,"_offset":' % (topic.encode(), partition)

        def make_row(record: Record, offset: int, value: bytes) -> bytes:
            if value[0] != 0x7B:  # '{'
                value = value.lstrip()
            return prefix + b"%d," % offset + value[1:]

        return make_row

    def _insert_sync(self, table: Table, payload: bytes, token: str) -> None:
        sql = (
            f"INSERT INTO {qualified(self.database, table.name)} SETTINGS "
            f"insert_deduplication_token = '{token}', {INSERT_SETTINGS}"
        )
        with self._conn.send_insert(sql, "JSONEachRow") as inserter:
            inserter.append(payload)
            inserter.finish()

    async def insert(self, table: Table, rows: list[Any], token: str) -> None:
        await self.insert_payload(table, b"\n".join(rows) + b"\n", token)

    async def insert_payload(self, table: Table, payload: bytes, token: str) -> None:
        """Insert ready JSONEachRow bytes (the benchmark's baseline uses this directly)."""
        await self._call(self._insert_sync, table, payload, token)

"""The server backend: clickhouse-driver over the native protocol (``clickhouse://user:pass@host:9000/db``).

Rows are built from the validated record for the columns the server's table actually has (read from
``system.columns`` at setup), converted by column type: ``Decimal`` from the exact string,
``DateTime64``/``DateTime`` from epoch microseconds, integers stay integers. So the same sink
writes into the production DDL and into tables an older server created in its own dialect.
``insert_deduplication_token`` is sent where the server knows it (22.2+); on older servers the
sink's check of already-stored offsets before each retry keeps writes exact.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import msgspec.inspect as mi
from clickhouse_driver import Client, errors

from pipeline.contracts import Record
from pipeline.contracts.topics import TopicRegistry
from pipeline.sinks.base import ConversionError, RejectedError, UnavailableError
from pipeline.sinks.clickhouse import DATA_ERROR_CODES, ClickHouseSink
from pipeline.sinks.schema import Table, qualified

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
META = ("_topic", "_partition", "_offset")
NETWORK_ERRORS = (
    errors.NetworkError,
    errors.SocketTimeoutError,
    errors.UnexpectedPacketFromServerError,
    EOFError,
    OSError,
)
Converter = Callable[[Any], Any]


def _split_args(inner: str) -> list[str]:
    """Top-level comma-separated arguments of a type like ``Tuple(a Decimal(38, 18), b String)``."""
    parts, depth, current = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _unwrap(type_: str, name: str) -> str | None:
    return type_[len(name) + 1 : -1] if type_.startswith(name + "(") and type_.endswith(")") else None


def _element_type(arg: str) -> str:
    """``price Decimal(38, 18)`` -> ``Decimal(38, 18)``; an unnamed element is returned as it is."""
    first, _, rest = arg.partition(" ")
    return rest if rest and "(" not in first else arg


def converter(type_: str) -> Converter:
    """A function turning a record field value (builtins) into what clickhouse-driver sends for ``type_``."""
    for wrapper in ("LowCardinality", "SimpleAggregateFunction"):
        if (inner := _unwrap(type_, wrapper)) is not None:
            return converter(inner)
    if (inner := _unwrap(type_, "Nullable")) is not None:
        conv = converter(inner)
        return lambda v: None if v is None else conv(v)
    if (inner := _unwrap(type_, "Array")) is not None:
        item = converter(inner)
        return lambda v: [item(x) for x in v]
    if (inner := _unwrap(type_, "Tuple")) is not None:
        items = [converter(_element_type(arg)) for arg in _split_args(inner)]
        return lambda v: tuple(c(x) for c, x in zip(items, v.values() if isinstance(v, dict) else v, strict=True))
    if (inner := _unwrap(type_, "Map")) is not None:
        key, value = (converter(a) for a in _split_args(inner))
        return lambda v: {key(k): value(x) for k, x in v.items()}
    if type_.startswith("DateTime"):
        return lambda v: EPOCH + dt.timedelta(microseconds=v)
    if type_.startswith("Decimal"):
        return Decimal
    if type_.startswith(("Int", "UInt")) or type_ == "Bool":
        return int
    if type_.startswith("Float"):
        return float
    return lambda v: v


class ServerSink(ClickHouseSink):
    def __init__(self, url: str, registry: TopicRegistry, topic_prefix: str = "", **options: Any):
        self._client = Client.from_url(url)
        super().__init__(registry, topic_prefix, database=self._client.connection.database or "default", **options)
        self._url = url
        self._lock = asyncio.Lock()
        self._columns: dict[str, tuple[tuple[str, Converter], ...]] = {}
        self._token_supported = False

    async def setup(self) -> None:
        version = await self.fetch("SELECT version()")
        major, minor = (int(x) for x in str(version[0][0]).split(".")[:2])
        self._token_supported = (major, minor) >= (22, 2)
        log.info("ClickHouse server %s (deduplication tokens %s)", version[0][0], self._token_supported)
        await super().setup()
        rows = await self.fetch(f"SELECT table, name, type FROM system.columns WHERE database = '{self.database}'")  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
        described: dict[str, list[tuple[str, str]]] = {}
        for table, name, type_ in rows:
            described.setdefault(str(table), []).append((str(name), str(type_)))
        for table in self.tables.values():
            cols = described.get(table.name)
            if cols is None:
                log.warning(
                    "table %s.%s does not exist; topic %s will dead-letter", self.database, table.name, table.topic
                )
                continue
            fields = set(table.column_names) | set(META)
            self._columns[table.name] = tuple((n, converter(t)) for n, t in cols if n in fields)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._client.disconnect)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except errors.ServerException as exc:
                if exc.code in DATA_ERROR_CODES:
                    raise RejectedError(str(exc)) from exc
                raise UnavailableError(str(exc)) from exc
            except NETWORK_ERRORS as exc:
                self._client.disconnect()
                raise UnavailableError(f"{type(exc).__name__}: {exc}") from exc
            except (TypeError, ValueError, errors.TypeMismatchError) as exc:
                raise RejectedError(f"{type(exc).__name__}: {exc}") from exc

    async def execute(self, sql: str) -> None:
        await self._call(self._client.execute, sql)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return list(await self._call(self._client.execute, sql))

    def rows_for(
        self, table: Table, topic: str, partition: int, records: list[Record], offsets: list[int], values: list[bytes]
    ) -> list[tuple[Any, ...]]:
        """Rows of a whole list, field by field (``getattr``, no intermediate dicts) for flat records;
        records with nested structs go through :meth:`row_maker`."""
        columns = self._columns.get(table.name)
        if columns is None or _nests_structs(table.record_type):
            return super().rows_for(table, topic, partition, records, offsets, values)
        meta = {"_topic": [topic] * len(records), "_partition": [partition] * len(records), "_offset": offsets}
        try:
            cols = [meta[name] if name in meta else [conv(getattr(r, name)) for r in records] for name, conv in columns]
        except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ConversionError("unconvertible", f"{type(exc).__name__}: {exc}") from exc
        return list(zip(*cols, strict=True))

    def row_maker(self, table: Table, topic: str, partition: int) -> Callable[[Record, int, bytes], tuple[Any, ...]]:
        """A tuple in the server table's column order, each value converted for its column type."""
        columns = self._columns.get(table.name)
        database = self.database

        def make_row(record: Record, offset: int, value: bytes) -> tuple[Any, ...]:
            if columns is None:
                raise ConversionError("no_table", f"{database}.{table.name} does not exist")
            data = msgspec.to_builtins(record)
            data.update(_topic=topic, _partition=partition, _offset=offset)
            try:
                return tuple(conv(data.get(name)) for name, conv in columns)
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise ConversionError("unconvertible", f"{type(exc).__name__}: {exc}") from exc

        return make_row

    async def insert(self, table: Table, rows: list[Any], token: str) -> None:
        names = ", ".join(f"`{n}`" for n, _ in self._columns[table.name])
        settings = {"insert_deduplication_token": token} if self._token_supported else {}
        await self._call(
            self._client.execute,
            f"INSERT INTO {qualified(self.database, table.name)} ({names}) VALUES",
            list(zip(*rows, strict=True)),  # columns: the driver then skips its own per-row transposition
            settings=settings,
            columnar=True,
        )


@functools.cache
def _nests_structs(record_type: type[Record]) -> bool:
    """Whether a record has a field holding another struct (those rows go through ``to_builtins``)."""

    def walk(t: Any) -> bool:
        if isinstance(t, mi.Metadata):
            return walk(t.type)
        if isinstance(t, mi.StructType):
            return True
        if isinstance(t, mi.UnionType):
            return any(walk(x) for x in t.types)
        if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
            return walk(t.item_type)
        if isinstance(t, mi.TupleType):
            return any(walk(x) for x in t.item_types)
        if isinstance(t, mi.DictType):
            return walk(t.key_type) or walk(t.value_type)
        return False

    info = mi.type_info(record_type)
    assert isinstance(info, mi.StructType)
    return any(walk(f.type) for f in info.fields)

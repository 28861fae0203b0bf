"""ClickHouse tables for registry topics: one table per topic, its columns derived from the topic's record.

Column rules (modern dialect, proven on chdb):
- exact decimal strings -> ``Decimal(38, 18)`` (20 integer and 18 fractional digits; a string that
  does not fit is refused by the sink, never rounded: :func:`decimal_fits`);
- epoch-microsecond integers -> ``DateTime64(6, 'UTC')`` (ingested with
  ``input_format_read_datetime_number_as_raw_value`` so the integer is taken as microseconds);
- venue ids, symbols and other enumerations -> ``LowCardinality(String)``;
- optional fields -> ``Nullable``; lists -> ``Array``; book levels -> ``Array(Tuple(Decimal, Decimal))``;
  nested records -> named ``Tuple``; string maps -> ``Map``.
Every table also has ``_topic``, ``_partition`` and ``_offset`` (with a minmax index on the offset) so
that "no Kafka record twice" can be checked and the sink can find what it already stored, plus
``_ingested_at``. Tables are partitioned by day of their time column, ordered for the dashboards'
queries, carry a TTL (days after ingestion, per table) and set ``non_replicated_deduplication_window``
for ``insert_deduplication_token``.

In a cluster (``marketprism db migrate --cluster NAME``, :meth:`Table.cluster_sql`) each table becomes a
``Replicated*MergeTree`` table ``<name>_local`` on every node plus a ``Distributed`` table ``<name>``
over it, both created ``ON CLUSTER``, with the same columns; market tables shard by
``cityHash64(exchange, symbol)``.

Adding a table for a new topic: give it a :class:`TableSpec` in :data:`TABLE_SPECS` (or rely on the
defaults) and a migration in :mod:`pipeline.sinks.migrations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec.inspect as mi

from pipeline.contracts.records import DECIMAL_PATTERN, Record
from pipeline.contracts.topics import (
    ALERT_ACTIONS,
    ALERTING_CHECKPOINTS,
    ALERTS,
    ANOMALIES,
    BARS_1M,
    BARS_1S,
    BBO,
    BOOK,
    CONSUMER_LAG,
    DLQ,
    FEED_METRICS,
    FUNDING,
    LIQUIDATIONS,
    NOTIFICATIONS,
    OPEN_INTEREST,
    REFERENCE,
    SILENCES,
    TRADES,
    Topic,
)

DECIMAL_TYPE = "Decimal(38, 18)"
DECIMAL_INT_DIGITS = 20
DECIMAL_SCALE = 18
TIME_TYPE = "DateTime64(6, 'UTC')"
DEDUP_WINDOW = 10_000
MICROS_DESCRIPTION = "epoch microseconds"
LOW_CARDINALITY_NAMES = frozenset(
    {"exchange", "symbol", "stream", "source", "metric", "detector", "rule", "channel", "asset"}
)
LOCAL_SUFFIX = "_local"
REPLICA_PATH_ROOT = "/clickhouse/tables"
MARKET_KEY = ("exchange", "symbol")
TIME_COLUMN_PREFERENCE = ("ts_event", "window_start", "ts", "ts_recv", "created_at", "starts_at")

META_COLUMNS = (
    ("_topic", "LowCardinality(String)"),
    ("_partition", "UInt32"),
    ("_offset", "UInt64"),
)


class SchemaError(ValueError):
    """A record field has no ClickHouse column mapping, or a table spec names an unknown column."""


@dataclass(frozen=True)
class TableSpec:
    """How one topic is stored. ``None`` fields take the defaults derived from the record."""

    table: str | None = None
    time_column: str | None = None
    order_by: tuple[str, ...] | None = None
    ttl_days: int = 365


TABLE_SPECS: dict[str, TableSpec] = {
    TRADES.name: TableSpec(ttl_days=180),
    BOOK.name: TableSpec(ttl_days=30),
    BBO.name: TableSpec(ttl_days=90),
    FUNDING.name: TableSpec(ttl_days=730),
    OPEN_INTEREST.name: TableSpec(ttl_days=730),
    LIQUIDATIONS.name: TableSpec(ttl_days=730),
    BARS_1S.name: TableSpec(ttl_days=90),
    BARS_1M.name: TableSpec(ttl_days=1095),
    FEED_METRICS.name: TableSpec(order_by=("exchange", "stream", "source", "ts_event"), ttl_days=180),
    ANOMALIES.name: TableSpec(order_by=("metric", "series_id", "ts_event")),
    ALERTS.name: TableSpec(order_by=("severity", "rule", "fingerprint", "ts_event")),
    NOTIFICATIONS.name: TableSpec(order_by=("channel", "status", "ts")),
    DLQ.name: TableSpec(order_by=("source", "reason", "ts_recv"), ttl_days=30),
    SILENCES.name: TableSpec(time_column="created_at", order_by=("silence_id", "created_at")),
    ALERT_ACTIONS.name: TableSpec(order_by=("fingerprint", "ts")),
    ALERTING_CHECKPOINTS.name: TableSpec(order_by=("engine_id", "ts"), ttl_days=30),
    REFERENCE.name: TableSpec(order_by=("asset", "ts_event"), ttl_days=180),
    CONSUMER_LAG.name: TableSpec(order_by=("group", "topic", "ts"), ttl_days=90),
}


def table_name(topic_name: str) -> str:
    """``md.trades.v1`` -> ``trades``, ``md.bars.1s.v1`` -> ``bars_1s``; versions after v1 keep ``_vN``."""
    spec = TABLE_SPECS.get(topic_name)
    if spec is not None and spec.table:
        return spec.table
    parts = topic_name.split(".")
    if parts[0] in ("md", "ops"):
        parts = parts[1:]
    if parts and parts[-1] == "v1":
        parts = parts[:-1]
    return "_".join(parts).replace("-", "_")


def _unwrap(t: Any) -> Any:
    return t.type if isinstance(t, mi.Metadata) else t


def _is_micros(t: Any) -> bool:
    return isinstance(t, mi.Metadata) and (t.extra_json_schema or {}).get("description") == MICROS_DESCRIPTION


def is_decimal(t: Any) -> bool:
    inner = _unwrap(t)
    return isinstance(inner, mi.StrType) and inner.pattern == DECIMAL_PATTERN


def _column_type(t: Any, name: str) -> str:
    """The ClickHouse type of one msgspec type (see the module docstring for the rules)."""
    if _is_micros(t):
        return TIME_TYPE
    if is_decimal(t):
        return DECIMAL_TYPE
    t = _unwrap(t)
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(inner) != 1:
            raise SchemaError(f"{name}: unions other than Optional[T] have no column type")
        base = _column_type(inner[0], name)
        if base.startswith(("Array(", "Map(", "Tuple(")):
            return base  # containers cannot be Nullable; an absent value is empty
        if base.startswith("LowCardinality("):
            return f"LowCardinality(Nullable({base[len('LowCardinality(') : -1]}))"
        return f"Nullable({base})"
    if isinstance(t, mi.LiteralType):
        return "LowCardinality(String)"
    if isinstance(t, mi.StrType):
        return "LowCardinality(String)" if name in LOW_CARDINALITY_NAMES else "String"
    if isinstance(t, mi.BoolType):
        return "Bool"
    if isinstance(t, mi.IntType):
        return "Int64"
    if isinstance(t, mi.FloatType):
        return "Float64"
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return f"Array({_column_type(t.item_type, name)})"
    if isinstance(t, mi.TupleType):
        return "Tuple(" + ", ".join(_column_type(x, name) for x in t.item_types) + ")"
    if isinstance(t, mi.DictType):
        key, value = (_column_type(x, name) for x in (t.key_type, t.value_type))
        return f"Map({_plain(key)}, {_plain(value)})"
    if isinstance(t, mi.StructType):
        return "Tuple(" + ", ".join(f"{f.encode_name} {_column_type(f.type, f.name)}" for f in t.fields) + ")"
    raise SchemaError(f"{name}: no ClickHouse column type for {t!r}")


def _plain(type_: str) -> str:
    """Map keys and values stay plain types."""
    return type_[len("LowCardinality(") : -1] if type_.startswith("LowCardinality(") else type_


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    micros: bool = False


@dataclass(frozen=True)
class Table:
    """The resolved storage of one registry topic."""

    topic: str
    name: str
    record_type: type[Record]
    columns: tuple[Column, ...]
    time_column: str
    order_by: tuple[str, ...]
    ttl_days: int
    engine: str = "MergeTree"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def ttl_clause(self, ttl_days: int | None = None) -> str:
        """Rows live ``ttl_days`` after they were stored (not after their event time: a replay of old
        captures must not be dropped on arrival)."""
        days = self.ttl_days if ttl_days is None else ttl_days
        return f"toDateTime(_ingested_at) + toIntervalDay({days})"

    def create_sql(self, database: str = "") -> str:
        return self._create(
            qualified(database, self.name),
            f"ENGINE = {self.engine}",
            f"non_replicated_deduplication_window = {DEDUP_WINDOW}",
        )

    def _create(self, target: str, engine: str, settings: str) -> str:
        cols = ",\n  ".join(f"`{c.name}` {c.type}" for c in (*(Column(n, t) for n, t in META_COLUMNS), *self.columns))
        ttl = f"\nTTL {self.ttl_clause()}" if self.ttl_days > 0 else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {target} (\n  {cols},\n"
            f"  `_ingested_at` DateTime64(6, 'UTC') DEFAULT now64(6),\n"
            f"  INDEX idx_offset _offset TYPE minmax GRANULARITY 1\n)\n"
            f"{engine}\nPARTITION BY toDate(`{self.time_column}`)\n"
            f"ORDER BY ({', '.join(f'`{c}`' for c in self.order_by)}){ttl}\n"
            f"SETTINGS {settings}"
        )

    @property
    def local_name(self) -> str:
        """The name of the per-node (replicated) table under the Distributed table in a cluster."""
        return f"{self.name}{LOCAL_SUFFIX}"

    def sharding_key(self) -> str:
        """Market tables shard by ``(exchange, symbol)`` (one market's rows on one shard, so its bars and
        trades are read and merged there); others by their ordering key without the time column (one
        alert fingerprint, one consumer group... on one shard); ``rand()`` when that leaves nothing."""
        names = set(self.column_names)
        keys = MARKET_KEY if set(MARKET_KEY) <= names else tuple(c for c in self.order_by if c != self.time_column)
        return f"cityHash64({', '.join(f'`{c}`' for c in keys)})" if keys else "rand()"

    def cluster_sql(self, database: str, cluster: str) -> tuple[str, str]:
        """``ON CLUSTER`` DDL: the replicated local table (same columns, ordering, partitioning and TTL as
        :meth:`create_sql`, engine ``Replicated`` + the single-node engine, deduplication window
        ``replicated_deduplication_window``) and the Distributed table over it under the topic's table
        name, which is what the sink writes to and the dashboards read."""
        database = database or "default"
        on = f" ON CLUSTER `{cluster}`"
        local = qualified(database, self.local_name)
        create_local = self._create(
            local + on,
            f"ENGINE = {replicated_engine(self.engine, database, self.local_name)}",
            f"replicated_deduplication_window = {DEDUP_WINDOW}",
        )
        create_distributed = (
            f"CREATE TABLE IF NOT EXISTS {qualified(database, self.name)}{on} AS {local}\n"
            f"ENGINE = Distributed(`{cluster}`, `{database}`, `{self.local_name}`, {self.sharding_key()})"
        )
        return create_local, create_distributed


def replicated_engine(engine: str, database: str, table: str) -> str:
    """``MergeTree`` -> ``ReplicatedMergeTree('/clickhouse/tables/{shard}/db/table', '{replica}')``;
    engine arguments (``ReplacingMergeTree(ver)``) follow the path and replica name. ``{shard}`` and
    ``{replica}`` are the server's macros."""
    name, _, args = engine.partition("(")
    path = f"'{REPLICA_PATH_ROOT}/{{shard}}/{database}/{table}', '{{replica}}'"
    rest = args.rstrip(")").strip()
    return f"Replicated{name}({path}{', ' + rest if rest else ''})"


def qualified(database: str, name: str) -> str:
    return f"`{database}`.`{name}`" if database else f"`{name}`"


def _required_micros(fields: tuple[mi.Field, ...]) -> list[str]:
    return [f.name for f in fields if f.required and _is_micros(f.type)]


def table_for(topic: Topic) -> Table:
    """Resolve the table of a registry topic from its record type and :data:`TABLE_SPECS`."""
    spec = TABLE_SPECS.get(topic.name, TableSpec())
    info = mi.type_info(topic.record_type)
    assert isinstance(info, mi.StructType)
    columns = tuple(Column(f.encode_name, _column_type(f.type, f.name), _is_micros(f.type)) for f in info.fields)
    names = {c.name for c in columns}
    time_column = spec.time_column
    if time_column is None:
        candidates = [c for c in TIME_COLUMN_PREFERENCE if c in _required_micros(info.fields)]
        candidates = candidates or _required_micros(info.fields)
        if not candidates:
            raise SchemaError(f"{topic.name}: record {topic.record_type.__name__} has no required time field")
        time_column = candidates[0]
    order_by = spec.order_by
    if order_by is None:
        keys = [k for k in ("exchange", "symbol", "stream") if k in names]
        order_by = (*keys, time_column)
    unknown = [c for c in (time_column, *order_by) if c not in names]
    if unknown:
        raise SchemaError(f"{topic.name}: table spec names unknown column(s) {unknown}")
    return Table(topic.name, table_name(topic.name), topic.record_type, columns, time_column, order_by, spec.ttl_days)


def decimal_fields(record_type: type[Record]) -> tuple[tuple[str, str], ...]:
    """``(field, shape)`` for every decimal-bearing field: ``value``, ``optional``, ``levels`` or ``map``."""
    found: list[tuple[str, str]] = []
    info = mi.type_info(record_type)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        t = _unwrap(f.type)
        if is_decimal(f.type):
            found.append((f.name, "value"))
        elif isinstance(t, mi.UnionType) and any(is_decimal(x) for x in t.types):
            found.append((f.name, "optional"))
        elif (
            isinstance(t, mi.ListType)
            and isinstance(_unwrap(t.item_type), mi.TupleType)
            and all(is_decimal(x) for x in _unwrap(t.item_type).item_types)
        ):
            found.append((f.name, "levels"))
        elif isinstance(t, mi.DictType) and is_decimal(t.value_type):
            found.append((f.name, "map"))
    return tuple(found)


def decimal_fits(text: str) -> bool:
    """Whether a decimal string is held exactly by ``Decimal(38, 18)`` (trailing fractional zeros are free)."""
    if len(text) <= DECIMAL_INT_DIGITS:  # at most 20 digits, and a '.' leaves at most 18 after it
        return True
    digits = text.lstrip("-")
    whole, _, frac = digits.partition(".")
    return len(whole.lstrip("0")) <= DECIMAL_INT_DIGITS and len(frac.rstrip("0")) <= DECIMAL_SCALE


def oversized_decimals(record: Record, fields: tuple[tuple[str, str], ...]) -> list[str]:
    """The decimal strings of ``record`` that ``Decimal(38, 18)`` cannot hold exactly."""
    bad: list[str] = []
    for name, shape in fields:
        value = getattr(record, name)
        if shape == "levels":
            bad += [x for level in value for x in level if not decimal_fits(x)]
        elif shape == "map":
            bad += [x for x in value.values() if not decimal_fits(x)]
        elif value is not None and not decimal_fits(value):
            bad.append(value)
    return bad

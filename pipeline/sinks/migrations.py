"""Versioned schema migrations, recorded in the ``_schema_migrations`` table.

``migrate`` applies every migration whose version is not recorded yet, in order, and records it;
each statement is idempotent (``IF NOT EXISTS``), so a migration interrupted half-way is simply
applied again. ``status`` reports the current version, what is pending and any registry topic
that has no table yet (add a :class:`Migration` for it: ``CreateTopicTables(version, (topic,))``).

Tables are rendered from the topic's record when the migration runs (:mod:`pipeline.sinks.schema`);
a later optional field of a record gets an ``AddColumns`` migration, which is a no-op on a database
whose table was created after the field existed. A column whose type changed gets a
``DurationColumn``-style migration that converts the stored values exactly and can be re-run from any
point it was interrupted at. Topics the registry marks ``sink: false`` get no table.

``migrate(..., cluster=NAME)`` runs the same migrations as ``ON CLUSTER`` DDL: each table is a
``Replicated*MergeTree`` table ``<name>_local`` on every node with a ``Distributed`` table ``<name>`` over
it (:meth:`pipeline.sinks.schema.Table.cluster_sql`); column changes go to both; the record of applied
versions is itself a replicated table whose one copy every node shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

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
    TopicRegistry,
)
from pipeline.sinks.schema import REPLICA_PATH_ROOT, Table, qualified, table_for

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "_schema_migrations"


class Database(Protocol):
    """What migrations need from a backend: run a statement, fetch rows."""

    database: str

    async def execute(self, sql: str) -> None: ...

    async def fetch(self, sql: str) -> list[tuple[object, ...]]: ...


class MigrationError(RuntimeError):
    """A migration could not be applied (the message names the version and statement)."""


@dataclass(frozen=True)
class CreateTopicTables:
    """Create the tables of the named registry topics (skipping topics the registry does not have)."""

    version: int
    topics: tuple[str, ...]
    description: str = ""

    def statements(self, registry: TopicRegistry, database: str, cluster: str | None = None) -> list[str]:
        names = stored_names(registry)
        tables = [table_for(registry.get(t)) for t in self.topics if t in names]
        if cluster:
            return [sql for table in tables for sql in table.cluster_sql(database, cluster)]
        return [table.create_sql(database) for table in tables]

    async def apply(self, db: Database, registry: TopicRegistry, cluster: str | None = None) -> None:
        await _run(db, self.version, self.statements(registry, db.database, cluster))

    def summary(self) -> str:
        return self.description or f"tables for {', '.join(self.topics)}"


@dataclass(frozen=True)
class AddColumns:
    """Add record fields that appeared after a topic's table was first created."""

    version: int
    topic: str
    fields: tuple[str, ...]
    description: str = ""

    def statements(self, registry: TopicRegistry, database: str, cluster: str | None = None) -> list[str]:
        if self.topic not in stored_names(registry):
            return []
        table = table_for(registry.get(self.topic))
        by_name = {c.name: c for c in table.columns}
        return [
            f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `{f}` {by_name[f].type}"
            for target in _targets(table, database, cluster)
            for f in self.fields
        ]

    def summary(self) -> str:
        return self.description or f"{self.topic}: add {', '.join(self.fields)}"

    async def apply(self, db: Database, registry: TopicRegistry, cluster: str | None = None) -> None:
        await _run(db, self.version, self.statements(registry, db.database, cluster))


def _targets(table: Table, database: str, cluster: str | None) -> list[str]:
    """Where a column change goes: the table, or in a cluster the local tables then the Distributed ones."""
    if not cluster:
        return [qualified(database, table.name)]
    database = database or "default"
    on = f" ON CLUSTER `{cluster}`"
    return [qualified(database, table.local_name) + on, qualified(database, table.name) + on]


@dataclass(frozen=True)
class DurationColumn:
    """A field first stored as ``DateTime64(6)`` (read as epoch microseconds) that is a duration in
    microseconds: its column becomes the record's integer type holding the same microseconds, exactly.

    ``CAST`` of a ``DateTime64`` to an integer yields seconds, so the values are copied raw into a new
    column (``toUnixTimestamp64Micro``), the old column is dropped and the new one renamed. Each step
    is chosen from the columns present, so a migration interrupted anywhere completes when re-run."""

    version: int
    topics: tuple[str, ...]
    column: str
    description: str = ""

    def summary(self) -> str:
        return self.description or f"{self.column}: DateTime64 -> integer microseconds in {', '.join(self.topics)}"

    async def apply(self, db: Database, registry: TopicRegistry, cluster: str | None = None) -> None:
        names = stored_names(registry)
        for topic in self.topics:
            if topic in names:
                table = table_for(registry.get(topic))
                if not cluster:
                    await self._retype(db, table, qualified(db.database, table.name), table.name)
                    continue
                # the replicated local tables convert their data (an ON CLUSTER ALTER of a replicated
                # table runs once per shard); the Distributed table only follows the column's type
                local, distributed = _targets(table, db.database, cluster)
                await self._retype(db, table, local, table.local_name)
                new = next(c for c in table.columns if c.name == self.column).type
                await _run(db, self.version, [f"ALTER TABLE {distributed} MODIFY COLUMN `{self.column}` {new}"])

    async def _retype(self, db: Database, table: Table, target: str, name: str) -> None:
        new = next(c for c in table.columns if c.name == self.column).type
        tmp = f"{self.column}__v{self.version}"
        types = await column_types(db, name)
        sync = "SETTINGS mutations_sync = 2"
        if self.column in types and "DateTime64" not in types[self.column]:
            if tmp in types:
                await _run(db, self.version, [f"ALTER TABLE {target} DROP COLUMN IF EXISTS `{tmp}`"])
            return  # already converted (or created with the new type)
        if self.column in types:
            await _run(
                db,
                self.version,
                [
                    f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `{tmp}` {new} AFTER `{self.column}`",
                    f"ALTER TABLE {target} UPDATE `{tmp}` = toUnixTimestamp64Micro(`{self.column}`) "
                    f"WHERE `{self.column}` IS NOT NULL {sync}",
                    f"ALTER TABLE {target} DROP COLUMN `{self.column}` {sync}",
                ],
            )
        elif tmp not in await column_types(db, name):
            return  # the table has neither column: nothing to convert
        await _run(db, self.version, [f"ALTER TABLE {target} RENAME COLUMN `{tmp}` TO `{self.column}`"])


Migration = CreateTopicTables | AddColumns | DurationColumn

MIGRATIONS: tuple[Migration, ...] = (
    CreateTopicTables(
        1,
        (
            TRADES.name,
            BOOK.name,
            BBO.name,
            FUNDING.name,
            OPEN_INTEREST.name,
            LIQUIDATIONS.name,
            BARS_1S.name,
            BARS_1M.name,
            FEED_METRICS.name,
            ANOMALIES.name,
            ALERTS.name,
            NOTIFICATIONS.name,
            DLQ.name,
        ),
        "tables for the market-data and operations topics",
    ),
    AddColumns(2, NOTIFICATIONS.name, ("firing", "resolved")),
    CreateTopicTables(3, (SILENCES.name, ALERT_ACTIONS.name, ALERTING_CHECKPOINTS.name)),
    CreateTopicTables(4, (REFERENCE.name,)),
    CreateTopicTables(5, (CONSUMER_LAG.name,)),
    DurationColumn(
        6, (BARS_1S.name, BARS_1M.name), "crossed_us", "bars: crossed_us is a duration (Int64 microseconds)"
    ),
)


def managed_topics() -> set[str]:
    return {t for m in MIGRATIONS if isinstance(m, CreateTopicTables) for t in m.topics}


def stored_names(registry: TopicRegistry) -> set[str]:
    """Registry topics the sink stores (``sink: false`` in the registry keeps a topic out)."""
    return {t.name for t in registry if t.sink}


async def _run(db: Database, version: int, statements: list[str]) -> None:
    for sql in statements:
        try:
            await db.execute(sql)
        except Exception as exc:
            raise MigrationError(f"migration {version} failed on:\n{sql}\n{exc}") from exc


@dataclass
class Status:
    version: int
    latest: int
    pending: list[int] = field(default_factory=list)
    topics_without_table: list[str] = field(default_factory=list)
    missing_columns: dict[str, list[str]] = field(default_factory=dict)
    not_stored: list[str] = field(default_factory=list)  # registry topics marked ``sink: false``


def _create_migrations_table(database: str, cluster: str | None = None) -> str:
    engine = "MergeTree"
    target = qualified(database, MIGRATIONS_TABLE)
    if cluster:  # one copy shared by every node of the cluster (a path without {shard})
        database = database or "default"
        path = f"{REPLICA_PATH_ROOT}/all/{database}/{MIGRATIONS_TABLE}"
        engine = f"ReplicatedMergeTree('{path}', '{{shard}}-{{replica}}')"
        target = f"{qualified(database, MIGRATIONS_TABLE)} ON CLUSTER `{cluster}`"
    return (
        f"CREATE TABLE IF NOT EXISTS {target} "
        "(version UInt32, description String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
        f"ENGINE = {engine} ORDER BY version"
    )


async def applied_versions(db: Database, cluster: str | None = None) -> set[int]:
    await db.execute(_create_migrations_table(db.database, cluster))
    rows = await db.fetch(f"SELECT DISTINCT version FROM {qualified(db.database, MIGRATIONS_TABLE)}")  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
    return {int(str(r[0])) for r in rows}


async def migrate(db: Database, registry: TopicRegistry, cluster: str | None = None) -> list[str]:
    """Apply the missing migrations in order (``ON CLUSTER`` DDL for replicated and Distributed tables
    when ``cluster`` names one of the server's ``remote_servers``); one line per applied migration."""
    if cluster:
        await _refuse_single_node_tables(db, registry)
        await db.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database or 'default'}` ON CLUSTER `{cluster}`")
    elif db.database:
        await db.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database}`")
    done = await applied_versions(db, cluster)
    applied: list[str] = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in done:
            continue
        await migration.apply(db, registry, cluster)
        summary = migration.summary().replace("'", "''")
        await db.execute(
            f"INSERT INTO {qualified(db.database, MIGRATIONS_TABLE)} (version, description) "  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
            f"VALUES ({migration.version}, '{summary}')"
        )
        log.info("applied migration %d: %s", migration.version, migration.summary())
        applied.append(f"{migration.version}: {migration.summary()}")
    return applied


async def _refuse_single_node_tables(db: Database, registry: TopicRegistry) -> None:
    """``--cluster`` on a database a single-node migrate made would skip every ``IF NOT EXISTS`` (and every
    recorded version) and leave plain MergeTree tables: refuse, naming them."""
    where_db = f"'{db.database}'" if db.database else "currentDatabase()"
    rows = await db.fetch(f"SELECT name, engine FROM system.tables WHERE database = {where_db}")  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
    names = {table_for(t).name for t in registry if t.sink} | {MIGRATIONS_TABLE}
    plain = sorted(
        str(n) for n, engine in rows if n in names and not str(engine).startswith(("Replicated", "Distributed"))
    )
    if plain:
        raise MigrationError(
            f"--cluster: {db.database or 'the default database'} already has single-node tables {plain}; "
            "migrate a new database ON CLUSTER and copy the rows over (docs/operations.md, Clustered ClickHouse)"
        )


async def existing_columns(db: Database, table: str) -> list[str]:
    return list(await column_types(db, table))


async def column_types(db: Database, table: str) -> dict[str, str]:
    """``name -> type`` of a table's columns (empty when the table does not exist)."""
    where_db = f"'{db.database}'" if db.database else "currentDatabase()"
    rows = await db.fetch(f"SELECT name, type FROM system.columns WHERE database = {where_db} AND table = '{table}'")  # noqa: S608 - identifiers come from code and the topic registry, numbers are ints; no user text
    return {str(r[0]): str(r[1]) for r in rows}


async def status(db: Database, registry: TopicRegistry) -> Status:
    """Current version, pending migrations, topics without a table and record fields without a column."""
    done = await applied_versions(db)
    latest = max(m.version for m in MIGRATIONS)
    result = Status(
        version=max(done, default=0),
        latest=latest,
        pending=sorted(m.version for m in MIGRATIONS if m.version not in done),
    )
    managed = managed_topics()
    result.topics_without_table = [t.name for t in registry if t.sink and t.name not in managed]
    result.not_stored = [t.name for t in registry if not t.sink]
    if not result.pending:
        for topic in registry:
            if topic.name not in managed or not topic.sink:
                continue
            table: Table = table_for(topic)
            have = set(await existing_columns(db, table.name))
            missing = [c for c in table.column_names if c not in have]
            if missing:
                result.missing_columns[table.name] = missing
    return result


async def set_ttl(db: Database, table: Table, days: int, cluster: str | None = None) -> str:
    """Change (``days > 0``) or remove (``0``) a table's TTL (in a cluster: its replicated local tables')."""
    target = _targets(table, db.database, cluster)[0]
    sql = (
        f"ALTER TABLE {target} REMOVE TTL" if days == 0 else f"ALTER TABLE {target} MODIFY TTL {table.ttl_clause(days)}"
    )
    await db.execute(sql)
    return sql

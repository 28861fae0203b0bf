"""Backup, restore and rebuild of the ClickHouse tables (``marketprism db backup|restore|rebuild``).

- **Backup / restore** use ClickHouse's own ``BACKUP DATABASE ... TO`` / ``RESTORE DATABASE ... FROM``
  where the engine has them: the embedded chdb (a connection opened with ``backups.allowed_path`` set to
  the destination's directory) and servers from 22.8 on (the server's ``<backups><allowed_path>`` or
  ``allowed_disk`` must admit the destination). A destination is a local directory (``File``) or a
  ClickHouse destination expression given as it is (``Disk('backups', 'x')``, ``S3('https://...')``).
  Older servers (Debian's 18.16 has no ``BACKUP``) get a logical backup instead: each table's
  ``SHOW CREATE TABLE`` and its rows as JSON lines (decimals as exact strings, times as epoch
  microseconds), written and read by this process.
- Every backup of a local directory carries ``marketprism-manifest.json``: per table the row count and an
  order-independent checksum (``sum(cityHash64(columns))``). ``restore`` recomputes them and reports any
  table that differs.
- **Rebuild** re-sinks the stored topics from what Kafka still retains: every partition read from its log
  start to its end (no consumer group, nothing committed) through the sink itself, which first learns the
  offsets the table already holds (``recover``) and skips them, so rows come out exactly once whether the
  database is fresh or partly filled. Records the sink cannot store are counted, not sent to
  ``ops.dlq.v1`` again (the first pass already did).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from aiokafka import TopicPartition

from pipeline.kafka.clients import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings
from pipeline.sinks.base import SinkError
from pipeline.sinks.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)

MANIFEST = "marketprism-manifest.json"
EXPRESSION = re.compile(r"^(File|Disk|S3|AzureBlobStorage)\(.*\)$", re.DOTALL)
NATIVE_BACKUP_SINCE = (22, 8)


class BackupError(SinkError):
    """A backup or restore cannot be done as asked (clear message for the command line)."""


@dataclass(frozen=True)
class Digest:
    """A table's row count and order-independent checksum."""

    rows: int
    checksum: int


@dataclass
class BackupResult:
    destination: str
    method: str  # "BACKUP" (the engine's own) or "logical"
    digests: dict[str, Digest]
    manifest: Path | None = None


@dataclass
class RestoreResult:
    source: str
    method: str
    digests: dict[str, Digest]
    mismatches: dict[str, tuple[Digest | None, Digest | None]] = field(default_factory=dict)  # table: (backup, now)


class Database(Protocol):
    """What backup and restore need from a connection: a database name, statements, queries."""

    database: str

    def execute(self, sql: str) -> None: ...

    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def destination_sql(destination: str) -> str:
    """``/abs/dir`` or ``rel/dir`` -> ``File('/abs/dir')``; a ClickHouse destination expression as it is."""
    if EXPRESSION.match(destination.strip()):
        return destination.strip()
    return f"File({_sql_string(str(Path(destination).resolve()))})"


def local_dir(destination: str) -> Path | None:
    """The local directory of a path destination (``None`` for an expression like ``S3(...)``)."""
    return None if EXPRESSION.match(destination.strip()) else Path(destination).resolve()


class ChdbDatabase:
    """The embedded engine at ``path``, opened with backups allowed under ``allowed``. chdb holds one
    engine per process: close every other connection to the path first (the CLI runs in its own process)."""

    def __init__(self, path: str, allowed: Path | None):
        import chdb

        Path(path).mkdir(parents=True, exist_ok=True)
        self.database = "default"
        uri = f"file:{path}" + (f"?backups.allowed_path={allowed}/" if allowed is not None else "")
        self._conn = chdb.connect(uri)

    def execute(self, sql: str) -> None:
        self._conn.query(sql)

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        text = str(self._conn.query(sql, "TabSeparated"))
        return [tuple(line.split("\t")) for line in text.splitlines() if line]

    def close(self) -> None:
        self._conn.close()


class ServerDatabase:
    """A clickhouse-server through clickhouse-driver (``clickhouse://user:pass@host:port/db``)."""

    def __init__(self, url: str):
        from clickhouse_driver import Client

        self.client = Client.from_url(url)
        self.database = self.client.connection.database or "default"

    def execute(self, sql: str) -> None:
        self.client.execute(sql)

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.client.execute(sql))

    def version(self) -> tuple[int, int]:
        major, minor = str(self.client.execute("SELECT version()")[0][0]).split(".")[:2]
        return int(major), int(minor)

    def close(self) -> None:
        self.client.disconnect()


def open_database(url: str, destination: str | None = None) -> Database:
    """A connection to the configured ClickHouse; on chdb, backups are allowed under the destination's parent."""
    if url.startswith("chdb://"):
        from pipeline.sinks.chdb_backend import chdb_path

        where = local_dir(destination) if destination else None
        return ChdbDatabase(chdb_path(url), where.parent if where is not None else None)
    return ServerDatabase(url)


def _native(db: Database) -> bool:
    return not isinstance(db, ServerDatabase) or db.version() >= NATIVE_BACKUP_SINCE


def tables(db: Database) -> list[str]:
    """The database's tables (views excluded: they hold no rows of their own), by name."""
    rows = db.fetch(
        f"SELECT name FROM system.tables WHERE database = {_sql_string(db.database)} "  # noqa: S608 - a quoted literal
        "AND engine NOT LIKE '%View' ORDER BY name"
    )
    return [str(r[0]) for r in rows]


def _columns(db: Database, table: str) -> list[tuple[str, str]]:
    rows = db.fetch(
        "SELECT name, type FROM system.columns "  # noqa: S608 - quoted literals
        f"WHERE database = {_sql_string(db.database)} AND table = {_sql_string(table)}"
    )
    return [(str(n), str(t)) for n, t in rows]


def digest(db: Database, table: str, exclude: Collection[str] = ()) -> Digest:
    """Rows and ``sum(cityHash64(...))`` over every column but ``exclude`` (as text, NULL as ``'NULL'``, so
    every type hashes the same way on every engine version); the sum wraps at 2^64 and does not depend on
    row order or parts."""
    columns = ", ".join(f"ifNull(toString(`{n}`), 'NULL')" for n, _ in _columns(db, table) if n not in exclude)
    row = db.fetch(f"SELECT count(), sum(cityHash64({columns})) FROM `{db.database}`.`{table}`")[0]  # noqa: S608 - identifiers from system.tables
    return Digest(int(row[0]), int(row[1]))


def digests(db: Database, names: list[str] | None = None, exclude: Collection[str] = ()) -> dict[str, Digest]:
    """:func:`digest` of the tables ``names`` (default: every table). To compare a rebuild with the original,
    exclude ``_ingested_at`` (the time of the insert)."""
    return {name: digest(db, name, exclude) for name in (names if names is not None else tables(db))}


def _write_manifest(directory: Path, method: str, found: dict[str, Digest]) -> Path:
    path = directory / MANIFEST
    body = {
        "method": method,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "tables": {name: {"rows": d.rows, "checksum": str(d.checksum)} for name, d in found.items()},
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def read_manifest(directory: Path) -> tuple[str, dict[str, Digest]] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    body = json.loads(path.read_text())
    found = {name: Digest(int(d["rows"]), int(d["checksum"])) for name, d in body["tables"].items()}
    return str(body["method"]), found


def _on_server(db: Database) -> bool:
    """Whether a ``File`` path names a directory on the server (its own BACKUP), not on this machine."""
    return isinstance(db, ServerDatabase) and _native(db)


def _engine(db: Database, sql: str) -> None:
    """Run BACKUP/RESTORE; the engine's refusal (a path it may not write, a backup it cannot read) becomes a
    :class:`BackupError` carrying its message."""
    try:
        db.execute(sql)
    except Exception as exc:  # chdb raises RuntimeError, clickhouse-driver ServerException: both carry the reason
        raise BackupError(f"{sql.split(' ', 1)[0]} failed: {exc}") from exc


def _check_new(where: Path) -> None:
    if where.exists() and (not where.is_dir() or any(where.iterdir())):
        raise BackupError(f"{where} exists and is not an empty directory: choose a new directory per backup")


def backup(url: str, destination: str) -> BackupResult:
    """Back up every table of the configured database to ``destination`` (see the module docstring). A
    ``File`` path is on this machine for chdb and the logical copy, on the server for a server's BACKUP
    (the manifest is written beside it when that directory is reachable from here too)."""
    where = local_dir(destination)
    if where is not None and url.startswith("chdb://"):
        _check_new(where)
    db = open_database(url, destination)
    try:
        names = tables(db)
        found = digests(db, names)
        if _native(db):
            method = "BACKUP"
            if where is not None and not _on_server(db):
                where.parent.mkdir(parents=True, exist_ok=True)
                if where.exists():
                    where.rmdir()  # an empty directory: the engine creates the backup itself
            _engine(db, f"BACKUP DATABASE `{db.database}` TO {destination_sql(destination)}")
        else:
            if where is None:
                raise BackupError("this server has no BACKUP statement (before 22.8): give a local directory")
            _check_new(where)
            method = "logical"
            _logical_backup(db, names, where)
    finally:
        db.close()
    manifest = None
    if where is not None and where.is_dir():
        try:
            manifest = _write_manifest(where, method, found)
        except OSError as exc:  # a server's directory this user cannot write: the printed figures remain
            log.warning("no manifest beside the backup (%s); keep the printed figures with it", exc)
    log.info("backed up %d table(s) of %s to %s (%s)", len(found), url.split("@")[-1], destination, method)
    return BackupResult(destination, method, found, manifest)


def restore(url: str, source: str, *, replace: bool = False) -> RestoreResult:
    """Restore the tables of a backup into the configured database. Tables that exist already are an
    error unless ``replace``, which drops the backup's tables first (or every table without a manifest)."""
    where = local_dir(source)
    manifest = read_manifest(where) if where is not None and where.is_dir() else None
    db = open_database(url, source)
    try:
        if where is not None and not where.is_dir() and not _on_server(db):
            raise BackupError(f"no backup at {where}")
        db.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database}`")
        present = set(tables(db))
        wanted = set(manifest[1]) if manifest is not None else present
        clash = sorted(present & wanted)
        if clash and not replace:
            raise BackupError(f"table(s) {clash} exist in {db.database}: drop them or restore with --replace")
        for name in clash:
            db.execute(f"DROP TABLE `{db.database}`.`{name}`")
        method = manifest[0] if manifest is not None else "BACKUP"
        if method == "logical":
            assert where is not None
            _logical_restore(db, where)
        elif not _native(db):
            raise BackupError(
                "this server has no RESTORE statement (before 22.8) and no logical backup is at the source"
            )
        else:
            _engine(db, f"RESTORE DATABASE `{db.database}` FROM {destination_sql(source)}")
        found = digests(db, sorted(wanted) if manifest is not None else None)
    finally:
        db.close()
    result = RestoreResult(source, method, found)
    if manifest is not None:
        for name in sorted(set(manifest[1]) | set(found)):
            before, now = manifest[1].get(name), found.get(name)
            if before != now:
                result.mismatches[name] = (before, now)
    return result


# ---- logical backup (servers without BACKUP)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _from_json(type_: str) -> Any:
    from pipeline.sinks.driver_backend import converter

    inner = type_
    for wrapper in ("LowCardinality(", "Nullable("):
        if inner.startswith(wrapper):
            inner = inner[len(wrapper) : -1]
    if inner == "Date" or inner == "Date32":
        return lambda v: None if v is None else dt.date.fromisoformat(v)
    return converter(type_)


def _logical_backup(db: Database, names: list[str], where: Path) -> None:
    assert isinstance(db, ServerDatabase)
    where.mkdir(parents=True, exist_ok=True)
    for name in names:
        ddl = str(db.fetch(f"SHOW CREATE TABLE `{db.database}`.`{name}`")[0][0])
        (where / f"{name}.sql").write_text(ddl + "\n")
        with (where / f"{name}.jsonl").open("w") as out:
            for row in db.client.execute_iter(f"SELECT * FROM `{db.database}`.`{name}`"):  # noqa: S608 - identifiers from system.tables
                out.write(json.dumps(_jsonable(list(row))) + "\n")


def _logical_restore(db: Database, where: Path, chunk: int = 10_000) -> None:
    assert isinstance(db, ServerDatabase)
    for ddl_file in sorted(where.glob("*.sql")):
        name = ddl_file.stem
        ddl = re.sub(r"^CREATE TABLE \S+", f"CREATE TABLE `{db.database}`.`{name}`", ddl_file.read_text().strip())
        db.execute(ddl)
        columns = _columns(db, name)
        convert = [_from_json(type_) for _, type_ in columns]
        insert = f"INSERT INTO `{db.database}`.`{name}` ({', '.join(f'`{n}`' for n, _ in columns)}) VALUES"
        batch: list[list[Any]] = []
        with (where / f"{name}.jsonl").open() as rows:
            for line in rows:
                batch.append([c(v) for c, v in zip(convert, json.loads(line), strict=True)])
                if len(batch) >= chunk:
                    db.client.execute(insert, batch)
                    batch = []
        if batch:
            db.client.execute(insert, batch)


# ---- rebuild from topics


@dataclass
class TopicRebuild:
    """What one topic's replay did: records read, rows written, offsets skipped (already stored or
    tombstones), records refused (by reason), and the first retained offset per partition."""

    read: int = 0
    written: int = 0
    skipped: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    log_start: dict[int, int] = field(default_factory=dict)


async def rebuild(
    settings: Settings, url: str, names: list[str] | None = None, *, batch_rows: int = 50_000, migrate: bool = True
) -> dict[str, TopicRebuild]:
    """``marketprism db rebuild --from-topics``: migrate the database at ``url`` (unless not ``migrate``; a
    fresh chdb directory is created, a server's database must exist), then replay the stored topics
    ``names`` (default: every topic with a table) into it."""
    from pipeline.contracts import load_registry
    from pipeline.sinks.factory import make_sink

    sink = make_sink(url, load_registry(), settings.topic_prefix, run_migrations=migrate)
    known = [topic.removeprefix(settings.topic_prefix) for topic in sink.tables]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise BackupError(f"no table for topic(s) {unknown} (or marked not to be stored)")
    await sink.setup()
    try:
        return await rebuild_from_topics(settings, sink, names or known, batch_rows=batch_rows)
    finally:
        await sink.close()


async def rebuild_from_topics(
    settings: Settings, sink: ClickHouseSink, names: list[str], *, batch_rows: int = 50_000, stall_s: float = 120.0
) -> dict[str, TopicRebuild]:
    """Replay the registry topics ``names`` from their log start into ``sink`` (already set up), exactly
    once; returns per topic what was done. Raises :class:`BackupError` when reading stalls ``stall_s``."""
    consumer = make_consumer(settings.kafka, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    result = {name: TopicRebuild() for name in names}
    by_topic = {settings.topic(name): name for name in names}
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for topic in by_topic for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return result
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await log_end_offsets(settings.kafka, partitions)
        for tp in partitions:
            result[by_topic[tp.topic]].log_start[tp.partition] = starts[tp]
            await sink.recover(tp, starts[tp])
        open_parts = {tp for tp in partitions if ends[tp] > starts[tp]}
        loop = asyncio.get_running_loop()
        progress_at = loop.time()
        while open_parts:
            data = await consumer.getmany(*open_parts, timeout_ms=1000, max_records=batch_rows)
            for tp, messages in data.items():
                messages = [m for m in messages if m.offset < ends[tp]]
                if not messages:
                    continue
                progress_at = loop.time()
                stats = result[by_topic[tp.topic]]
                stats.read += len(messages)
                skipped = sink.skipped
                sink.add_batch(tp.topic, tp.partition, [m.offset for m in messages], [m.value for m in messages])
                stats.skipped += sink.skipped - skipped
            for tp in list(open_parts):
                if await consumer.position(tp) >= ends[tp]:
                    open_parts.discard(tp)
                    consumer.pause(tp)
            if sink.buffered_rows >= batch_rows or (not open_parts and sink.pending):
                await _flush(sink, result, by_topic)
            if open_parts and loop.time() - progress_at > stall_s:
                raise BackupError(f"no record read for {stall_s:.0f}s from {sorted(map(str, open_parts))}")
        if sink.pending:
            await _flush(sink, result, by_topic)
    finally:
        await consumer.stop()
    return result


async def _flush(sink: ClickHouseSink, result: dict[str, TopicRebuild], by_topic: dict[str, str]) -> None:
    cp = sink.checkpoint()
    batched = {(b.topic, b.partition, o) for b in cp.batches for o in b.offsets}
    for batch in cp.batches:
        result[by_topic[batch.topic]].written += len(batch)
    await sink.write_checkpoint(cp)
    for d in cp.dead:  # conversion failures never reached a batch; rows the table refused did
        stats = result[by_topic[d.topic]]
        stats.dead[d.reason] += 1
        if (d.topic, d.partition, d.offset) in batched:
            stats.written -= 1

"""Sub-commands: ``marketprism sink``, ``marketprism db migrate|status|backup|restore|rebuild``, ``marketprism query``.
Settings come from ``ctx.obj``; the work lives in the other modules."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table as RichTable

from pipeline.contracts import load_registry
from pipeline.settings import Settings

log = logging.getLogger(__name__)
console = Console()

db_app = typer.Typer(no_args_is_help=True, help="ClickHouse schema: versioned migrations")


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


async def _with_sink(settings: Settings, fn, **options):  # type: ignore[no-untyped-def]
    from pipeline.sinks.factory import make_sink

    sink = make_sink(settings.clickhouse_url, load_registry(), settings.topic_prefix, run_migrations=False, **options)
    await sink.setup()
    try:
        return await fn(sink)
    finally:
        await sink.close()


@db_app.command("migrate")
def db_migrate(
    ctx: typer.Context,
    ttl: Annotated[
        list[str] | None, typer.Option(help="TABLE=DAYS: set a table's TTL (0 removes it); repeatable")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="ON CLUSTER DDL for this remote_servers cluster: replicated local + Distributed tables"),
    ] = None,
) -> None:
    """Apply the missing migrations (idempotent), then any --ttl changes (see docs/operations.md for --cluster)."""
    from pipeline.sinks.migrations import managed_topics, migrate, set_ttl
    from pipeline.sinks.schema import table_for

    settings = _settings(ctx)
    registry = load_registry()
    tables = {table_for(t).name: table_for(t) for t in registry if t.sink and t.name in managed_topics()}
    changes: list[tuple[str, int]] = []
    for item in ttl or []:
        name, _, days = item.partition("=")
        if name not in tables or not days.isdigit():
            console.print(f"[red]--ttl {item!r}: expected TABLE=DAYS with TABLE one of {sorted(tables)}[/red]")
            raise typer.Exit(2)
        changes.append((name, int(days)))
    if cluster and settings.clickhouse_url.startswith("chdb://"):
        console.print("[red]--cluster needs a ClickHouse server (clickhouse://...), not the embedded chdb[/red]")
        raise typer.Exit(2)

    async def run(sink) -> list[str]:  # type: ignore[no-untyped-def]
        done = await migrate(sink, registry, cluster)
        for name, days in changes:
            done.append(await set_ttl(sink, tables[name], days, cluster))
        return done

    done = asyncio.run(_with_sink(settings, run))
    for line in done:
        console.print(line)
    console.print(f"schema is up to date ({len(done)} change(s))")


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """Show the schema version, pending migrations and topics without a table."""
    from pipeline.sinks.migrations import status

    settings = _settings(ctx)
    st = asyncio.run(_with_sink(settings, lambda sink: status(sink, load_registry())))
    console.print(f"schema version {st.version} (latest {st.latest}) at {settings.clickhouse_url.split('@')[-1]}")
    if st.pending:
        console.print(f"[yellow]pending migrations: {st.pending} (run `marketprism db migrate`)[/yellow]")
    for topic in st.topics_without_table:
        console.print(f"[yellow]topic {topic} has no table (add a migration)[/yellow]")
    for topic in st.not_stored:
        console.print(f"topic {topic} is not stored (registry `sink: false`)")
    for table, columns in st.missing_columns.items():
        console.print(f"[yellow]table {table} lacks record field(s) {columns} (add an AddColumns migration)[/yellow]")
    if st.pending or st.topics_without_table or st.missing_columns:
        raise typer.Exit(1)


@db_app.command("backup")
def db_backup(
    ctx: typer.Context,
    destination: Annotated[
        str, typer.Argument(help="a new local directory, or a ClickHouse destination such as S3('https://...')")
    ],
) -> None:
    """Back up every table with ClickHouse's BACKUP (a logical copy on servers before 22.8)."""
    from pipeline.sinks.backup import BackupError, backup

    try:
        result = backup(_settings(ctx).clickhouse_url, destination)
    except BackupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for name, d in result.digests.items():
        console.print(f"{name}: {d.rows} row(s), checksum {d.checksum}")
    where = f" (manifest {result.manifest})" if result.manifest else ""
    console.print(f"backed up {len(result.digests)} table(s) to {destination} by {result.method}{where}")


@db_app.command("restore")
def db_restore(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="a backup directory (or ClickHouse source expression)")],
    replace: Annotated[bool, typer.Option(help="drop the backup's tables first when they exist")] = False,
) -> None:
    """Restore a backup, then check every table's rows and checksum against its manifest."""
    from pipeline.sinks.backup import BackupError, restore

    try:
        result = restore(_settings(ctx).clickhouse_url, source, replace=replace)
    except BackupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for name, d in result.digests.items():
        console.print(f"{name}: {d.rows} row(s), checksum {d.checksum}")
    for name, (before, now) in result.mismatches.items():
        console.print(f"[red]{name}: backup {before}, restored {now}[/red]")
    if result.mismatches:
        raise typer.Exit(1)
    console.print(
        f"restored {len(result.digests)} table(s) from {source} ({result.method}); every table matches the backup"
    )


@db_app.command("rebuild")
def db_rebuild(
    ctx: typer.Context,
    from_topics: Annotated[bool, typer.Option("--from-topics", help="replay the Kafka topics (required)")] = False,
    topic: Annotated[list[str] | None, typer.Option(help="contract topic name (repeatable); default: all")] = None,
    into: Annotated[
        str | None, typer.Option(help="ClickHouse URL to rebuild into (default: the configured one)")
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1)] = 50_000,
) -> None:
    """Re-sink the tables from what the topics retain, skipping the rows already stored.

    Every partition is read from its log start to its end through the sink; a fresh or partly filled
    database ends with every retained record exactly once (see docs/operations.md)."""
    from pipeline.sinks.backup import BackupError, rebuild

    if not from_topics:
        console.print("[red]say where to rebuild from: --from-topics (the only source)[/red]")
        raise typer.Exit(2)
    settings = _settings(ctx)
    try:
        report = asyncio.run(rebuild(settings, into or settings.clickhouse_url, topic, batch_rows=batch_rows))
    except BackupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for name, r in report.items():
        dead = f", {sum(r.dead.values())} refused {dict(r.dead)}" if r.dead else ""
        trimmed = {p: o for p, o in r.log_start.items() if o}
        since = f" (log starts at {trimmed}: older rows are not in Kafka)" if trimmed else ""
        console.print(f"{name}: read {r.read}, wrote {r.written}, skipped {r.skipped}{dead}{since}")
    console.print(f"rebuilt {sum(r.written for r in report.values())} row(s) from {len(report)} topic(s)")


def sink_command(
    ctx: typer.Context,
    topic: Annotated[list[str] | None, typer.Option(help="contract topic name (repeatable); default: all")] = None,
    group: Annotated[
        str | None, typer.Option(help="consumer group id (default: the topic prefix + marketprism-sink)")
    ] = None,
    skip_topic: Annotated[
        list[str] | None,
        typer.Option(help="contract topic name not to store (repeatable), beside the registry's `sink: false`"),
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1)] = 50_000,
    batch_ms: Annotated[int, typer.Option(min=1)] = 1000,
    max_buffer_mb: Annotated[int, typer.Option(min=1)] = 64,
    migrate: Annotated[bool, typer.Option(help="apply missing migrations at start")] = True,
    retry_window_s: Annotated[float, typer.Option(help="retry a failed write this long before pausing")] = 10.0,
) -> None:
    """Consume the topics into ClickHouse, effectively once (see docs/sinks.md)."""
    from pipeline.observability.health import HEALTH, GroupCatchUp
    from pipeline.observability.metrics import serve_metrics
    from pipeline.sinks.factory import make_sink
    from pipeline.sinks.runner import RunnerOptions, SinkRunner, tune_gc

    settings = _settings(ctx)
    registry = load_registry()
    sink = make_sink(
        settings.clickhouse_url,
        registry,
        settings.topic_prefix,
        run_migrations=migrate,
        retry_window_s=retry_window_s,
        skip_topics=skip_topic or (),
    )
    skipped = set(sink.skipped_topics)
    wanted = topic or [t.name for t in registry if t.name not in skipped]
    known = {name.removeprefix(settings.topic_prefix) for name in sink.tables}
    unknown = [t for t in wanted if t not in known]
    if topic and unknown:
        console.print(f"[red]no table for topic(s) {unknown} (or marked not to be stored)[/red]")
        raise typer.Exit(2)
    if skipped:
        log.info("not storing topic(s) %s (registry `sink: false` or --skip-topic)", sorted(skipped))
    for name in unknown:
        log.warning("topic %s has no ClickHouse table yet (add a migration); not consuming it", name)
    topics = [settings.topic(t) for t in wanted if t in known]
    options = RunnerOptions(
        group_id=group, batch_rows=batch_rows, batch_interval_s=batch_ms / 1000, max_buffer_bytes=max_buffer_mb << 20
    )
    serve_metrics(settings.metrics_port, addr=settings.metrics_host)
    tune_gc()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = SinkRunner(settings, sink, topics, options)
        HEALTH.attach()  # /healthz: this loop answers; /readyz: joined the sink's group and caught up
        HEALTH.add("consumer group", GroupCatchUp(lambda: getattr(runner, "consumer", None)))
        await runner.run(stop)

    asyncio.run(main())


def query_command(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="one SQL statement")],
    fmt: Annotated[str, typer.Option("--format", help="ClickHouse output format (chdb)")] = "PrettyCompactMonoBlock",
) -> None:
    """Run SQL on the configured ClickHouse (the embedded chdb database by default)."""
    settings = _settings(ctx)
    if settings.clickhouse_url.startswith("chdb://"):
        import chdb

        from pipeline.sinks.chdb_backend import chdb_path

        conn = chdb.connect(chdb_path(settings.clickhouse_url))
        try:
            print(conn.query(sql, fmt), end="")
        except Exception as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        finally:
            conn.close()
        return
    from clickhouse_driver import Client

    client = Client.from_url(settings.clickhouse_url)
    try:
        rows, columns = client.execute(sql, with_column_types=True)
    finally:
        client.disconnect()
    table = RichTable(*(name for name, _ in columns))
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)

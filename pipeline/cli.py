"""The ``marketprism`` entry point: wires settings into components, one sub-command each.

Only wiring lives here; each component owns its behaviour. Sub-commands: ``infra``, ``topics``,
``demo`` (and the components as their issues land).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MarketPrism market-data pipeline")
infra_app = typer.Typer(no_args_is_help=True, help="Local broker and ClickHouse server (dev, tests, demo)")
topics_app = typer.Typer(no_args_is_help=True, help="The topic registry against a broker")
app.add_typer(infra_app, name="infra")
app.add_typer(topics_app, name="topics")
# Components register their sub-commands below: app.add_typer(<component>.cli.<x>_app, name=...); the
# measuring tools are one Typer app of the tooling wing (pipeline/bench/cli.py: ``marketprism bench``).
# Commands read the settings from ``ctx.obj`` (a :class:`~pipeline.settings.Settings`), set by the root callback.
from pipeline.sinks import cli as sinks_cli  # noqa: E402

app.add_typer(sinks_cli.db_app, name="db")
app.command("sink")(sinks_cli.sink_command)
app.command("query")(sinks_cli.query_command)
from pipeline.notify import cli as notify_cli  # noqa: E402

app.add_typer(notify_cli.notify_app, name="notify")
from pipeline.anomaly import cli as anomaly_cli  # noqa: E402

app.add_typer(anomaly_cli.anomaly_app, name="anomaly")
from pipeline.bench.anomaly import cli as anomaly_bench_cli  # noqa: E402

anomaly_cli.anomaly_app.command("evaluate")(anomaly_bench_cli.evaluate_cmd)
from pipeline.alerting import cli as alerting_cli  # noqa: E402

app.add_typer(alerting_cli.alerts_app, name="alerts")
app.add_typer(alerting_cli.silence_app, name="silence")
from pipeline.aggregation import cli as aggregation_cli  # noqa: E402

app.command("worker")(aggregation_cli.worker_command)
from pipeline.simulator import cli as simulator_cli  # noqa: E402

app.add_typer(simulator_cli.simulate_app, name="simulate")
from pipeline.collectors import cli as collectors_cli  # noqa: E402
from pipeline.replay import cli as replay_cli  # noqa: E402

app.command("collect")(collectors_cli.collect_command)
from pipeline.api import cli as api_cli  # noqa: E402

app.add_typer(api_cli.api_app, name="api")


app.command("replay")(replay_cli.replay_command)
app.command("record")(replay_cli.record_command)
from pipeline.bench import cli as bench_cli  # noqa: E402

app.add_typer(bench_cli.bench_app, name="bench")


console = Console()
log = logging.getLogger("marketprism")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (else MARKETPRISM_CONFIG)")
]


class _State:
    settings: Settings | None = None


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None) -> None:
    from pipeline.clock import configure as configure_clock
    from pipeline.observability.logs import configure_logging

    try:
        _State.settings = load_settings(config)
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    ctx.obj = _State.settings
    try:  # text on a terminal; JSON lines when MARKETPRISM_LOG_FORMAT says so (pipeline/observability/logs.py)
        configure_logging(_State.settings.log_level, component=ctx.invoked_subcommand or "marketprism")
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    configure_clock(_State.settings.clock)  # pipeline time of this process (pipeline/clock.py)


def settings() -> Settings:
    assert _State.settings is not None, "settings are loaded by the root callback"
    return _State.settings


# ---------------------------------------------------------------- infra


def _services(with_clickhouse: bool):  # type: ignore[no-untyped-def]
    from pipeline.infra import broker_service, clickhouse_server_binary, clickhouse_service

    s = settings()
    state = s.state_dir / "infra"
    services = [broker_service(state, s.infra.broker_host, s.infra.broker_port)]
    if with_clickhouse and clickhouse_server_binary() is not None:
        services.append(
            clickhouse_service(state, s.infra.broker_host, s.infra.clickhouse_tcp_port, s.infra.clickhouse_http_port)
        )
    return services


@infra_app.command("up")
def infra_up(
    clickhouse: Annotated[bool, typer.Option(help="also start clickhouse-server where installed")] = True,
) -> None:
    """Start the Tansu broker (and a local clickhouse-server); idempotent."""
    from pipeline.infra import InfraError

    for service in _services(clickhouse):
        try:
            status = service.start()
        except InfraError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        console.print(f"{status.name}: running (pid {status.pid}) on {status.address}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop only the processes `infra up` started."""
    for service in _services(True):
        stopped = service.stop()
        console.print(f"{service.name}: {'stopped' if stopped else 'was not running'}")


@infra_app.command("status")
def infra_status() -> None:
    """Say what runs where."""
    table = Table("service", "state", "pid", "address", "log")
    for service in _services(True):
        st = service.status()
        state = "running" if st.running else ("starting/unhealthy" if st.pid else "stopped")
        table.add_row(st.name, state, str(st.pid or "-"), st.address, str(service.log_file))
    console.print(table)


# ---------------------------------------------------------------- topics


@topics_app.command("list")
def topics_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the registry."""
    from pipeline.contracts import load_registry

    s = settings()
    registry = load_registry()
    if as_json:
        rows = [
            {
                "name": t.full_name(s.topic_prefix),
                "partitions": t.partitions,
                "key": t.key,
                "record": t.record_type.__name__,
                **t.configs(),
            }
            for t in registry
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("topic", "partitions", "key", "record", "cleanup", "retention ms", "description")
    for t in registry:
        table.add_row(
            t.full_name(s.topic_prefix),
            str(t.partitions),
            t.key,
            t.record_type.__name__,
            t.cleanup_policy,
            str(t.retention_ms),
            t.description,
        )
    console.print(table)


@topics_app.command("apply")
def topics_apply() -> None:
    """Create missing topics and grow partitions to match the registry."""
    from pipeline.contracts import load_registry
    from pipeline.kafka.admin import TopicApplyError, apply

    s = settings()
    try:
        done = asyncio.run(apply(s.kafka, load_registry(), s.topic_prefix, s.environment))
    except TopicApplyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    for line in done:
        console.print(line)
    console.print(f"topics match the registry ({len(done)} change(s))")


@topics_app.command("check")
def topics_check() -> None:
    """Exit 1 and list every difference when the broker disagrees with the registry."""
    from pipeline.contracts import load_registry
    from pipeline.kafka.admin import check

    s = settings()
    diffs = asyncio.run(check(s.kafka, load_registry(), s.topic_prefix, s.environment))
    for diff in diffs:
        console.print(f"[red]{diff}[/red]")
    if diffs:
        raise typer.Exit(1)
    console.print("broker matches the registry")


@topics_app.command("selfcheck")
def topics_selfcheck() -> None:
    """Produce one example record to every topic and read each back through a consumer group."""
    from pipeline.selfcheck import run_selfcheck

    results = asyncio.run(run_selfcheck(settings()))
    table = Table("topic", "produced", "read back", "valid")
    for row in results:
        table.add_row(row.topic, str(row.produced), str(row.consumed), "yes" if row.valid else "NO")
    console.print(table)
    if not all(r.valid and r.consumed == r.produced for r in results):
        raise typer.Exit(1)


@topics_app.command("schemas")
def topics_schemas(
    write: Annotated[bool, typer.Option(help="rewrite schemas/*.json from the records")] = False,
) -> None:
    """Check (or --write) that schemas/ holds the JSON Schema generated from each topic's record."""
    from pipeline.contracts.topics import load_registry, schema_text

    stale = []
    for topic in load_registry():
        text = schema_text(topic)
        current = topic.schema_path.read_text() if topic.schema_path.exists() else None
        if current != text:
            if write:
                topic.schema_path.write_text(text)
                console.print(f"wrote {topic.schema_path.name}")
            else:
                stale.append(topic.schema_path.name)
    if stale:
        console.print(f"[red]out of date: {', '.join(stale)} (run `marketprism topics schemas --write`)[/red]")
        raise typer.Exit(1)


@topics_app.command("render")
def topics_render(
    fmt: Annotated[str, typer.Option("--format", help="output format: strimzi (KafkaTopic resources)")] = "strimzi",
    environment: Annotated[
        str | None, typer.Option(help="registry environment for replication (default: settings environment)")
    ] = None,
    cluster: Annotated[str, typer.Option(help="the Strimzi Kafka cluster (strimzi.io/cluster label)")] = "marketprism",
    prefix: Annotated[str | None, typer.Option(help="topic name prefix (default: settings topic_prefix)")] = None,
    namespace: Annotated[str | None, typer.Option(help="metadata.namespace of every resource")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Render the registry as deployment resources (pipeline/contracts/strimzi.py): never hand-copy topics."""
    from pipeline.contracts.strimzi import render_strimzi
    from pipeline.contracts.topics import RegistryError, load_registry

    if fmt != "strimzi":
        raise typer.BadParameter(f"unknown format {fmt!r}; known: strimzi", param_hint="--format")
    s = settings()
    try:
        text = render_strimzi(
            load_registry(),
            environment or s.environment,
            cluster,
            s.topic_prefix if prefix is None else prefix,
            namespace,
        )
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


# ---------------------------------------------------------------- demo


@app.command("run")
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="settings YAML (venues, Kafka, ClickHouse)")
    ] = None,
    component: Annotated[list[str] | None, typer.Option(help="component to run (repeatable; default: all)")] = None,
    notify_routes: Annotated[Path | None, typer.Option(help="notifier routing YAML (docs/notify.md)")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="component logs (default: <state_dir>/run/logs)")] = None,
) -> None:
    """Run every component against live venues and a real Kafka/ClickHouse (docs/live.md), restarting any
    that exits, until Ctrl-C."""
    from pipeline.supervisor.run import COMPONENTS, supervise

    chosen = component or list(COMPONENTS)
    unknown = sorted(set(chosen) - set(COMPONENTS))
    if unknown:
        console.print(f"[red]unknown component(s) {unknown}; known: {list(COMPONENTS)}[/red]")
        raise typer.Exit(2)
    if config is not None:
        try:
            load_settings(config)  # fail here, naming the field, rather than in every child
        except SettingsError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
    # each child serves /metrics on its own port: metrics_port, metrics_port + 1, ... (0: none)
    effective = load_settings(config) if config is not None else settings()
    asyncio.run(
        supervise(
            config.resolve() if config else None,
            chosen,
            log_dir or effective.state_dir / "run" / "logs",
            notify_routes.resolve() if notify_routes else None,
            metrics_port=effective.metrics_port,
        )
    )


@app.command("demo")
def demo(
    duration: Annotated[float | None, typer.Option(help="stop after this many wall seconds")] = None,
    speed: Annotated[float, typer.Option(help="simulated seconds per wall second")] = 1.0,
    sim_duration: Annotated[float | None, typer.Option(help="simulated seconds of the scenario")] = None,
    seed: Annotated[int | None, typer.Option(help="simulator seed (default: the scenario's)")] = None,
    scenario: Annotated[Path | None, typer.Option(help="simulator scenario YAML (default: the demo's)")] = None,
    view: Annotated[bool, typer.Option(help="live terminal view")] = True,
    anomaly_warmup: Annotated[int, typer.Option(help="points an anomaly series learns before it reports")] = 40,
    summary_json: Annotated[Path | None, typer.Option(help="also write the summary to this JSON file")] = None,
    api_port: Annotated[int, typer.Option(help="port of the operations API (0 or taken: a free one)")] = 8080,
) -> None:
    """Run everything on the embedded defaults: broker, chdb, simulator with incidents, collectors, workers,
    sink, notifier; a live view until Ctrl-C or --duration, then a summary."""
    from pipeline.demo.runner import DEMO_SCENARIO, DemoOptions, run_demo

    options = DemoOptions(
        duration_s=duration,
        speed=speed,
        sim_duration_s=sim_duration,
        seed=seed,
        view=view,
        anomaly_warmup=anomaly_warmup,
        summary_json=summary_json,
        api_port=api_port,
        scenario=scenario or DEMO_SCENARIO,
    )
    try:
        summary = asyncio.run(run_demo(settings(), options, console))
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None
    except asyncio.CancelledError:  # SIGTERM: the run stopped its children and the broker first
        console.print("terminated")
        raise typer.Exit(143) from None
    summary.print(console)
    if summary.leftover_pids:
        console.print(f"[red]processes left behind: {summary.leftover_pids}[/red]")
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # raised by late validation in a component
        console.print(f"[red]{exc}[/red]")
        sys.exit(2)

"""Command line of the anomaly component: ``marketprism anomaly`` (the worker). Its measuring commands
(``marketprism anomaly evaluate``, ``marketprism bench nab``, ``marketprism bench anomaly``) live in
:mod:`pipeline.bench.anomaly.cli`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from pipeline.settings import Settings

log = logging.getLogger(__name__)
console = Console()

anomaly_app = typer.Typer(
    invoke_without_command=True, help="Online anomaly detection and failure prediction worker (Faust)"
)


@anomaly_app.callback()
def worker(
    ctx: typer.Context,
    report_floor: Annotated[float, typer.Option(help="publish scores at or above this")] = 0.475,
    warmup: Annotated[int, typer.Option(help="points a series must see before it reports")] = 150,
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint a series after this many updates")] = 300,
    checkpoint_interval: Annotated[float, typer.Option(help="... or after this many seconds")] = 120.0,
    health_interval: Annotated[float, typer.Option(help="seconds between health samples")] = 10.0,
    watch_group: Annotated[
        list[str] | None, typer.Option(help="forecast this group's lag: GROUP=topic[,topic...] (repeatable)")
    ] = None,
) -> None:
    """Run the anomaly worker until stopped (SIGTERM/SIGINT)."""
    if ctx.invoked_subcommand is not None:
        return  # a sub-command (evaluate), not the worker
    import faust

    from pipeline.anomaly.agents import WorkerOptions, build_app
    from pipeline.observability.health import watch_faust
    from pipeline.observability.logs import faust_worker_options
    from pipeline.observability.metrics import serve_metrics

    settings: Settings = ctx.obj
    from pipeline.anomaly.ensemble import DetectorConfig  # River: loaded when the worker runs

    config = DetectorConfig(warmup=warmup, report_floor=report_floor)
    options = WorkerOptions(
        config=config,
        report_floor=report_floor,
        checkpoint_every=checkpoint_every,
        checkpoint_interval_s=checkpoint_interval,
        health_interval_s=health_interval,
        watch_groups=_watch_groups(settings, watch_group or []),
    )
    serve_metrics(settings.metrics_port, addr=settings.metrics_host)
    app = build_app(settings, options)
    watch_faust(app)  # /healthz: the loop answers; /readyz: joined its group and caught up
    faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, **faust_worker_options()
    ).execute_from_commandline()


def _watch_groups(settings: Settings, specs: list[str]) -> dict[str, list[str]]:
    groups = {}
    for spec in specs:
        group, sep, topics = spec.partition("=")
        if not sep or not group or not topics:
            raise typer.BadParameter(f"expected GROUP=topic[,topic...], got {spec!r}", param_hint="--watch-group")
        groups[group] = [settings.topic(t.strip()) for t in topics.split(",") if t.strip()]
    return groups

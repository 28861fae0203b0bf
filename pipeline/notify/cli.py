"""``marketprism notify`` (run the notifier), ``marketprism notify check`` (validate a config and
print its routing tree) and ``marketprism bench notify``. Only wiring: behaviour lives in the
modules beside this one."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.tree import Tree

from pipeline.notify.base import ConfigError, NotifyError
from pipeline.settings import Settings

if TYPE_CHECKING:  # the config pulls in every channel's client: imported when a command runs
    from pipeline.notify.config import NotifierConfig
    from pipeline.notify.routing import Route

console = Console()
log = logging.getLogger(__name__)

notify_app = typer.Typer(help="The notifier: ops.alerts.v1 -> email/Slack/DingTalk/WeCom/webhook/log")

RoutesOption = Annotated[
    Path,
    typer.Option("--routes", "-r", envvar="MARKETPRISM_NOTIFY_CONFIG", help="notifier YAML (docs/notify.md)"),
]


def _load(path: Path) -> NotifierConfig:
    from pipeline.notify.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _quiet_http_logs() -> None:
    # httpx logs every request URL at INFO; webhook URLs carry secrets (tokens, signatures).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@notify_app.callback(invoke_without_command=True)
def notify(ctx: typer.Context, routes: RoutesOption = Path("notify.yaml")) -> None:
    """Run the notifier until SIGINT/SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    settings: Settings = ctx.obj
    config = _load(routes)
    _quiet_http_logs()
    from pipeline.notify.service import serve
    from pipeline.observability.metrics import serve_metrics

    serve_metrics(settings.metrics_port, addr=settings.metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, config, stop)

    try:
        asyncio.run(main())
    except NotifyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def _tree(route: Route, node: Tree) -> None:
    for child in route.routes:
        _tree(child, node.add(_describe(child)))


def _describe(route: Route) -> str:
    matchers = ", ".join(str(m) for m in route.matchers) or "*"
    group = "..." if route.group_by is None else ",".join(route.group_by)
    text = (
        f"{route.id} [{matchers}] -> {route.receiver} group_by={group} wait={route.group_wait_us / 1e6:g}s "
        f"interval={route.group_interval_us / 1e6:g}s repeat={route.repeat_interval_us / 1e6:g}s"
    )
    if route.continue_:
        text += " continue"
    for step in route.escalate:
        text += f" escalate({','.join(sorted(step.severities))} after {step.after_us / 1e6:g}s -> {step.receiver})"
    return text


@notify_app.command("check")
def check(routes: RoutesOption = Path("notify.yaml")) -> None:
    """Validate a notifier config and print its routing tree."""
    config = _load(routes)
    from pipeline.notify.config import compile_routes

    tree = compile_routes(config.route)
    node = Tree(_describe(tree))
    _tree(tree, node)
    console.print(node)
    console.print(f"receivers: {', '.join(f'{r.name} ({len(r.channels)} channel(s))' for r in config.receivers)}")


def bench_notify(
    ctx: typer.Context,
    alerts: Annotated[int, typer.Option(help="firing alerts to send")] = 200,
    rate: Annotated[float, typer.Option(help="alerts per second")] = 20.0,
    runs: Annotated[int, typer.Option(help="repetitions (the table ends with their medians)")] = 3,
    from_metric: Annotated[
        bool, typer.Option(help="measure from a metric condition holding for `for` (through `alerts run`)")
    ] = False,
    for_s: Annotated[float, typer.Option("--for", help="the rule's `for` in seconds (with --from-metric)")] = 1.0,
) -> None:
    """Latency from an Alert firing record on ops.alerts.v1 to the webhook receiving it (group_wait 0); with
    --from-metric, from a FeedMetrics condition becoming true after `for` through the rule engine and notifier."""
    _quiet_http_logs()
    if from_metric:
        from pipeline.notify import bench_chain

        chain = [asyncio.run(bench_chain.run_chain_bench(ctx.obj, alerts, rate, for_s)) for _ in range(runs)]
        console.print(bench_chain.table(chain))
        return
    from pipeline.notify.bench import run_bench, table

    results = [asyncio.run(run_bench(ctx.obj, alerts, rate)) for _ in range(runs)]
    console.print(table(results))

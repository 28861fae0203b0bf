"""``marketprism notify`` (run the notifier), ``marketprism notify check`` (validate a config and
print its routing tree). Only wiring: behaviour lives in the
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
def notify(
    ctx: typer.Context,
    routes: RoutesOption = Path("notify.yaml"),
    engine_silence_s: Annotated[
        float,
        typer.Option(
            "--engine-silence-s",
            min=0,
            help="page RuleEngineDown after this many seconds without the rule engine's heartbeat (0: do not watch)",
        ),
    ] = 15.0,
) -> None:
    """Run the notifier until SIGINT/SIGTERM, and the rule engine's dead-man's switch beside it."""
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
        if not engine_silence_s:
            await serve(settings, config, stop)
            return
        from pipeline.alerting.deadman import watch_engine
        from pipeline.clock import from_settings

        await asyncio.gather(
            serve(settings, config, stop), watch_engine(settings, stop, from_settings(settings.clock), engine_silence_s)
        )

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

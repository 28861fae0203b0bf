"""``marketprism alerts run|list|ack|unack|resolve|rules`` and ``marketprism silence add|list|expire``.

Only wiring: commands work against the running system through topics (the engine consumes
``ops.alert_actions.v1`` and ``ops.silences.v1``; lists read the compacted ``ops.alerts.v1`` and
``ops.silences.v1``)."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from pipeline.alerting import control
from pipeline.alerting.errors import RuleLoadError
from pipeline.alerting.rules import RuleSet, load_rules, parse_duration
from pipeline.clock import from_settings, process_clock
from pipeline.contracts.matchers import parse_matcher
from pipeline.contracts.records import AlertAction, Silence
from pipeline.settings import Settings

console = Console()
log = logging.getLogger(__name__)

alerts_app = typer.Typer(no_args_is_help=True, help="The alert rule engine and its alerts (ops.alerts.v1)")
silence_app = typer.Typer(no_args_is_help=True, help="Silences (ops.silences.v1) the rule engine applies")

RulesOption = Annotated[
    list[Path] | None, typer.Option("--rules", "-r", help="extra rule file or directory (repeatable)")
]
NoCoreOption = Annotated[bool, typer.Option("--no-core", help="do not load the shipped core rules")]
ActorOption = Annotated[str, typer.Option("--actor", "-a", help="who does it (default: the OS user)")]
CommentOption = Annotated[str | None, typer.Option("--comment", "-m")]


def _rules(rules: list[Path] | None, no_core: bool) -> RuleSet:
    try:
        return load_rules(rules, core=not no_core)
    except RuleLoadError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _now() -> int:
    return process_clock().now_us()  # pipeline time (pipeline/clock.py), as the rule engine's


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(us / 1_000_000)) + "Z"


@alerts_app.command("run")
def run(
    ctx: typer.Context,
    rules: RulesOption = None,
    no_core: NoCoreOption = False,
    start_from: Annotated[str, typer.Option("--from", help="inputs without a checkpoint: latest|earliest")] = "latest",
    idle_advance: Annotated[
        str, typer.Option(help="advance event time at wall speed after this long without input (0 disables)")
    ] = "30s",
    engine_id: Annotated[str, typer.Option(help="checkpoint identity of this engine")] = "alerting",
    lag_group: Annotated[
        list[str] | None, typer.Option(help="consumer group whose lag the probe publishes (repeatable)")
    ] = None,
    lag_interval: Annotated[str, typer.Option(help="lag probe period (0 disables the probe)")] = "2s",
    fetch_wait_ms: Annotated[int, typer.Option(help="consumer fetch wait (ms); Tansu answers at its end")] = 100,
    lease: Annotated[
        bool, typer.Option(help="active/standby: run the engine only while holding the engine id's lease")
    ] = True,
) -> None:
    """Run the rule engine until SIGINT/SIGTERM (resumes from its checkpoint and ops.alerts.v1). Replicas with the
    same --engine-id are active/standby (pipeline/alerting/lease.py): one runs the engine, the others wait."""
    from pipeline.alerting.lease import run_with_lease
    from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
    from pipeline.observability.health import HEALTH, flag
    from pipeline.observability.metrics import serve_metrics

    settings: Settings = ctx.obj
    ruleset = _rules(rules, no_core)
    if start_from not in ("latest", "earliest"):
        raise typer.BadParameter("--from must be latest or earliest")
    try:
        idle_us, lag_us = parse_duration(idle_advance), parse_duration(lag_interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = RunnerOptions(
        engine_id=engine_id,
        start_from=start_from,
        idle_advance_us=idle_us,
        lag_groups=tuple(lag_group) if lag_group else None,
        lag_interval_us=lag_us,
        fetch_wait_ms=fetch_wait_ms,
    )
    serve_metrics(settings.metrics_port, addr=settings.metrics_host)
    console.print(f"rule engine: {len(ruleset.rules)} rules, {len(ruleset.inhibit_rules)} inhibit rules")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def make_runner() -> RuleEngineRunner:
            return RuleEngineRunner(settings, ruleset, options, clock=from_settings(settings.clock))

        HEALTH.attach()  # /healthz: this loop answers; /readyz: standby, or active with its inputs positioned
        if lease:
            await run_with_lease(settings, engine_id, make_runner, stop)
            return
        runner = make_runner()
        HEALTH.add("rule engine", flag(runner.ready, "restoring its checkpoint and positioning its inputs"))
        await runner.run(stop)

    asyncio.run(main())


@alerts_app.command("rules")
def rules_command(rules: RulesOption = None, no_core: NoCoreOption = False) -> None:
    """Validate rule files and list every rule (exit 2 naming file, rule and field on an error)."""
    ruleset = _rules(rules, no_core)
    table = Table("rule", "severity", "by", "condition", "for", "keep_firing_for")
    for rule in ruleset.rules:
        table.add_row(
            rule.name,
            rule.severity,
            ",".join(rule.by),
            rule.condition.type,
            f"{rule.for_ / 1e6:g}s",
            f"{rule.keep_firing_for / 1e6:g}s",
        )
    console.print(table)


@alerts_app.command("list")
def list_alerts(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="also resolved and inactive alerts")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The current state of every alert (the compacted view of ops.alerts.v1)."""
    alerts = asyncio.run(control.current_alerts(ctx.obj))
    shown = [a for a in alerts.values() if show_all or a.state not in ("resolved", "inactive")]
    shown.sort(key=lambda a: (a.severity, -a.ts_event))
    if as_json:
        print(json.dumps([msgspec.to_builtins(a) for a in shown], indent=2))
        return
    table = Table("fingerprint", "rule", "state", "sev", "labels", "since", "summary")
    for a in shown:
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()) if k not in ("alertname", "severity"))
        table.add_row(
            a.fingerprint,
            a.rule,
            a.state,
            a.severity,
            labels,
            _when(a.fired_at or a.active_since),
            a.annotations.get("summary", ""),
        )
    console.print(table)


def _action(settings: Settings, fingerprint: str, action: str, actor: str, comment: str | None) -> None:
    record = AlertAction(
        action_id=control.new_id(),
        fingerprint=fingerprint,
        action=action,  # type: ignore[arg-type]
        actor=actor or getpass.getuser(),
        ts=_now(),
        comment=comment,
    )
    asyncio.run(control.publish(settings, control.ACTIONS_TOPIC, fingerprint, record))
    console.print(f"{action} of {fingerprint} sent (the engine publishes the state change on ops.alerts.v1)")


@alerts_app.command("ack")
def ack(ctx: typer.Context, fingerprint: str, actor: ActorOption = "", comment: CommentOption = None) -> None:
    """Acknowledge a firing alert."""
    _action(ctx.obj, fingerprint, "ack", actor, comment)


@alerts_app.command("unack")
def unack(ctx: typer.Context, fingerprint: str, actor: ActorOption = "", comment: CommentOption = None) -> None:
    """Withdraw an acknowledgement."""
    _action(ctx.obj, fingerprint, "unack", actor, comment)


@alerts_app.command("resolve")
def resolve(ctx: typer.Context, fingerprint: str, actor: ActorOption = "", comment: CommentOption = None) -> None:
    """Resolve an alert by hand (it can fire again once its condition has cleared)."""
    _action(ctx.obj, fingerprint, "resolve", actor, comment)


@silence_app.command("add")
def silence_add(
    ctx: typer.Context,
    matcher: Annotated[list[str], typer.Option("--matcher", "-M", help='label matcher, e.g. exchange="kraken"')],
    duration: Annotated[str, typer.Option("--duration", "-d", help="e.g. 2h")] = "1h",
    starts_in: Annotated[str, typer.Option(help="delay before it starts")] = "0s",
    author: Annotated[str, typer.Option("--author", "-a")] = "",
    comment: Annotated[str, typer.Option("--comment", "-m")] = "",
) -> None:
    """Add a silence; prints its id."""
    for text in matcher:
        try:
            parse_matcher(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    now = _now()
    start = now + parse_duration(starts_in)
    silence = Silence(
        silence_id=control.new_id(),
        matchers=matcher,
        starts_at=start,
        ends_at=start + parse_duration(duration),
        author=author or getpass.getuser(),
        comment=comment,
        created_at=now,
    )
    asyncio.run(control.publish(ctx.obj, control.SILENCES_TOPIC, silence.silence_id, silence))
    print(silence.silence_id)


@silence_app.command("list")
def silence_list(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="also expired silences")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Active and pending silences (``--all``: also expired)."""
    now = _now()
    silences = [s for s in asyncio.run(control.current_silences(ctx.obj)).values() if show_all or s.ends_at > now]
    if as_json:
        print(json.dumps([msgspec.to_builtins(s) | {"status": _status(s, now)} for s in silences], indent=2))
        return
    table = Table("id", "status", "matchers", "starts", "ends", "author", "comment")
    for s in silences:
        table.add_row(
            s.silence_id,
            _status(s, now),
            " ".join(s.matchers),
            _when(s.starts_at),
            _when(s.ends_at),
            s.author,
            s.comment,
        )
    console.print(table)


def _status(silence: Silence, now: int) -> str:
    return "expired" if silence.ends_at <= now else ("pending" if silence.starts_at > now else "active")


@silence_app.command("expire")
def silence_expire(ctx: typer.Context, silence_id: str) -> None:
    """End a silence now."""
    current = asyncio.run(control.current_silences(ctx.obj)).get(silence_id)
    if current is None:
        console.print(f"[red]no silence {silence_id}[/red]")
        raise typer.Exit(1)
    now = _now()
    expired = msgspec.structs.replace(current, ends_at=max(current.starts_at, min(current.ends_at, now)))
    asyncio.run(control.publish(ctx.obj, control.SILENCES_TOPIC, silence_id, expired))
    console.print(f"silence {silence_id} expired")

"""``marketprism simulate`` (serve a scenario on loopback); its benchmark is
``marketprism bench simulate`` (:mod:`pipeline.bench.simulator`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.clock import ScaledClock
from pipeline.simulator.base import ScenarioError, iso_us
from pipeline.simulator.labels import LabelWriter
from pipeline.simulator.scenario import DEFAULT_SCENARIO, load_scenario

console = Console()

simulate_app = typer.Typer(
    invoke_without_command=True, add_completion=False, help="Serve simulated venues with scripted incidents"
)


@simulate_app.callback()
def simulate(
    ctx: typer.Context,
    scenario: Annotated[Path | None, typer.Option(help=f"scenario YAML (default: {DEFAULT_SCENARIO.name})")] = None,
    seed: Annotated[int | None, typer.Option(help="override the scenario's seed")] = None,
    duration: Annotated[float | None, typer.Option(help="override the scenario's simulated seconds")] = None,
    speed: Annotated[float, typer.Option(help="simulated seconds per wall second (0: as fast as possible)")] = 1.0,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 8765,
    labels: Annotated[Path, typer.Option(help="labels JSONL, one line per incident")] = Path("simulator-labels.jsonl"),
    start_now: Annotated[bool, typer.Option("--start-now", help="simulated time starts at the wall clock")] = False,
    hold: Annotated[bool, typer.Option(help="wait for POST /sim/start before starting the clock")] = False,
    settings_symbols: Annotated[
        bool, typer.Option("--settings-symbols", help="simulate the enabled venues' symbols from the settings")
    ] = False,
) -> None:
    """Serve Binance spot/USD-M, OKX, Coinbase and Kraken v2 on one loopback port until the scenario ends."""
    from pipeline.simulator.server import SimulatorServer

    overrides: dict[str, object] = {"seed": seed, "duration_s": duration}
    if settings_symbols:
        venues = ctx.obj.venues if ctx.obj is not None else {}
        overrides["symbols"] = {name: conf.symbols for name, conf in venues.items() if conf.enabled}
    if start_now:
        import time

        overrides["start"] = iso_us(time.time_ns() // 1000 // 1_000_000 * 1_000_000)
    origin = ctx.obj.clock.origin_us if ctx.obj is not None else None
    if origin is not None:  # the pipeline's shared clock (pipeline/clock.py): play from its origin at its speed
        overrides["start"], speed = iso_us(origin), ctx.obj.clock.speed
    try:
        scn = load_scenario(scenario, **overrides)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    writer = LabelWriter(labels)
    if ctx.obj is not None:
        from pipeline.observability.metrics import serve_metrics

        serve_metrics(ctx.obj.metrics_port, addr=ctx.obj.metrics_host)

    async def serve() -> None:
        async with SimulatorServer(scn, host, port, speed, hold, on_label=writer) as server:
            if origin is not None:
                server.clock = ScaledClock(speed, origin)
            console.print(f"scenario {scn.name!r} seed {scn.seed}: {scn.duration_s:g} simulated s at speed {speed:g}")
            console.print("endpoint overrides for the collectors' settings (YAML):")
            console.print(settings_snippet(server.urls()), markup=False, highlight=False)
            console.print(f"labels -> {labels}")
            await server.run()
            console.print(f"done: {server.frames_sent} frames, {len(server.engine.labels)} incidents")

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        console.print("stopped")
    except OSError as exc:  # the port is taken, or the host is not local
        console.print(f"[red]cannot serve on {host}:{port}: {exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        writer.close()


WS_PATHS = {"okx": "/ws/v5/public", "kraken": "/v2"}  # the path part of those venues' default ws_url


def settings_snippet(urls: dict[str, tuple[str, str]]) -> str:
    """The ``venues:`` block that points the collectors at the simulator."""
    lines = ["venues:"]
    for venue, (ws, rest) in urls.items():
        lines += [f"  {venue}:", f"    ws_url: {ws}{WS_PATHS.get(venue, '')}", f"    rest_url: {rest}"]
    return "\n".join(lines)

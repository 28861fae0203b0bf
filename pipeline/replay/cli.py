"""``marketprism replay FILE... --serve`` (the replay server) and ``marketprism record`` (live frames to a file)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings

log = logging.getLogger(__name__)
console = Console()


async def serve(files: list[Path], speed: float, host: str, port: int) -> None:
    from pipeline.replay.server import ReplayServer

    server = ReplayServer(files, speed=speed, host=host, port=port)
    await server.start()
    for replay in server.files:
        console.print(f"{replay.path.name}: {len(replay.frames)} frames, {len(replay.rest)} REST bodies")
        hosts = {f"https://{host}" for host, _ in replay.rest}
        endpoints = sorted({url.split("?")[0] for url in replay.connects} | hosts)
        for endpoint in endpoints:
            console.print(f"  {endpoint}  ->  {server.url_for(endpoint)}", soft_wrap=True)
    console.print(
        "Set venues.<id>.ws_url / rest_url to the venue's default URLs rewritten the same way (docs/replay.md), "
        f"e.g. binance: ws_url {server.url_for('wss://stream.binance.com:9443')}, "
        f"rest_url {server.url_for('https://api.binance.com')}",
        soft_wrap=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def replay_command(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="capture files")],
    serve_: Annotated[bool, typer.Option("--serve", help="serve them (else: summarise them)")] = False,
    speed: Annotated[float, typer.Option(help="timing scale: 1 real time, 10 ten times faster, 0 no waits")] = 0.0,
    port: Annotated[int, typer.Option(help="local port (0: any free port)")] = 8765,
    host: Annotated[str, typer.Option(help="local address")] = "127.0.0.1",
) -> None:
    """Summarise capture files, or (--serve) serve them as websocket + REST endpoints."""
    if serve_:
        asyncio.run(serve(files, speed, host, port))
        return
    from pipeline.replay.server import ReplayFile

    table = Table("file", "connects", "ws_in frames", "rest bodies", "span s")
    for path in files:
        replay = ReplayFile.load(path)
        span = (replay.frames[-1].ts_recv_us - replay.frames[0].ts_recv_us) / 1e6 if replay.frames else 0.0
        counts = (len(replay.connects), len(replay.frames), len(replay.rest))
        table.add_row(path.name, *map(str, counts), f"{span:.1f}")
    console.print(table)


async def record(
    settings: Settings, venue_id: str, symbols: list[str], out: Path, duration: float | None, frames: int | None
) -> int:
    from pipeline.collectors.venues import VENUES
    from pipeline.replay.recorder import Recorder

    if venue_id not in VENUES:
        raise typer.BadParameter(f"unknown venue {venue_id!r} (known: {sorted(VENUES)})")
    conf = settings.venues.get(venue_id)
    chosen = symbols or (conf.symbols if conf else [])
    venue = VENUES[venue_id](chosen, ws_url=conf.ws_url if conf else None, rest_url=conf.rest_url if conf else None)
    with out.open("w", encoding="utf-8") as handle:
        recorder = Recorder(venue, handle, max_frames=frames, proxy=conf.proxy if conf else None)
        return await recorder.run(duration)


def record_command(
    ctx: typer.Context,
    venue: Annotated[str, typer.Option("--venue", help="venue id")],
    out: Annotated[Path, typer.Option("--out", help="capture file to write")],
    symbol: Annotated[list[str] | None, typer.Option("--symbol", help="symbols (default: from settings)")] = None,
    duration: Annotated[float, typer.Option(help="stop after N seconds (0: no limit)")] = 60.0,
    frames: Annotated[int, typer.Option(help="stop after N inbound frames (0: no limit)")] = 0,
) -> None:
    """Record a venue's frames (and the REST snapshots it asks for) to a capture file."""
    lines = asyncio.run(record(ctx.obj, venue, symbol or [], out, duration or None, frames or None))
    console.print(f"wrote {lines} lines to {out}")

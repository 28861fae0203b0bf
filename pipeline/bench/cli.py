"""``marketprism bench chaos``: the command (wiring only; the rounds live in :mod:`pipeline.bench.chaos`)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipeline.settings import Settings

DEFAULT_CAPTURES = Path(
    os.environ.get("MARKETPRISM_SHARED_DIR") or Path(__file__).resolve().parents[2].parent / "shared"
)


def bench_chaos(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(help="rounds (seeds seed, seed+1, ...)")] = 5,
    seed: Annotated[int, typer.Option(help="seed of the first round (a failing round prints its seed)")] = 1,
    mode: Annotated[
        str,
        typer.Option(
            help="chaos: random kill/stop/term (and with --drops, drop) schedule; kill: one SIGKILL at "
            "1/4, 1/3 or 1/2 of the capture, then a restart; calm: no fault (the control)"
        ),
    ] = "chaos",
    speed: Annotated[float, typer.Option(help="capture replay speed (1: as recorded, 30 s)")] = 10.0,
    captures: Annotated[Path, typer.Option(help="directory of the capture files")] = DEFAULT_CAPTURES / "replay",
    own_broker: Annotated[
        bool, typer.Option(help="a scratch Tansu broker of its own (else the settings' broker)")
    ] = True,
    drops: Annotated[
        bool, typer.Option(help="a broker of its own behind a TCP relay: rounds also drop its connections")
    ] = False,
    keep: Annotated[Path | None, typer.Option(help="keep the worker logs here (else a temporary directory)")] = None,
) -> None:
    """Seeded fault rounds (SIGKILL/SIGSTOP/SIGTERM of the worker) checked against independently computed bars."""
    from pipeline.bench.chaos import relayed_broker, run_chaos, summary
    from pipeline.infra.scratch import scratch_broker

    if mode not in ("chaos", "kill", "calm"):
        raise typer.BadParameter("--mode is chaos, kill or calm (no fault: the control)")
    if not captures.is_dir():
        raise typer.BadParameter(f"{captures} is not a directory of captures")
    settings: Settings = ctx.obj
    for noisy in ("pipeline.collectors", "pipeline.replay", "pipeline.infra", "aiokafka"):  # the round lines matter
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    async def main() -> str:
        with tempfile.TemporaryDirectory(prefix="mp-chaos-") as tmp:
            work = keep or Path(tmp)
            if drops:
                async with relayed_broker(settings) as (local, relay):
                    results = await run_chaos(local, rounds, seed, mode, captures, work, speed, typer.echo, relay)
            elif own_broker:
                async with scratch_broker(settings, "chaos") as (local, _):
                    results = await run_chaos(local, rounds, seed, mode, captures, work, speed, typer.echo)
            else:
                results = await run_chaos(settings, rounds, seed, mode, captures, work, speed, typer.echo)
        return summary(results)

    typer.echo(asyncio.run(main()))

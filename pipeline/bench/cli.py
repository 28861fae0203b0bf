"""``marketprism bench ...``: every benchmark and measuring command, in one Typer app (wiring only).

``pipeline/cli.py`` registers :data:`bench_app` as ``marketprism bench``. Each command reads the settings
from ``ctx.obj`` and hands over to its module in :mod:`pipeline.bench` (``sink``, ``notify``, ``alerting``,
``aggregate``, ``simulate``, ``collect``, ``broker``, ``chaos``), the anomaly tools
(:mod:`pipeline.bench.anomaly.cli`: ``nab``, ``anomaly``) and ``api`` (:mod:`pipeline.bench.api`). Figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures go to docs/benchmarks.md)")
console = Console()

DEFAULT_CAPTURES = Path(
    os.environ.get("MARKETPRISM_SHARED_DIR") or Path(__file__).resolve().parents[2].parent / "shared"
)


@bench_app.command("chaos")
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


@bench_app.command("sink")
def bench_sink(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(min=1000, help="records per run")] = 200_000,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    server: Annotated[bool, typer.Option(help="also measure the clickhouse-server path")] = True,
) -> None:
    """Rows/s of one sink process into chdb (and the server), beside a raw chdb INSERT baseline."""
    from pipeline.bench.sinks import run_bench

    settings: Settings = ctx.obj
    with contextlib.suppress(KeyboardInterrupt):
        results = asyncio.run(run_bench(settings, rows, repeats, with_server=server))
        table = Table(
            "path", "median rows/s", "runs", "ratio vs raw chdb insert", "rows per CPU-second", "CPU ratio vs raw"
        )
        base, cpu_base = results[0].median, results[0].cpu_median
        for r in results:
            table.add_row(
                r.name,
                f"{r.median:,.0f}",
                ", ".join(f"{x:,.0f}" for x in r.runs),
                f"{r.median / base:.2f}",
                f"{r.cpu_median:,.0f}",
                f"{r.cpu_median / cpu_base:.2f}",
            )
        console.print(table)
        console.print("rows per CPU-second: this process's CPU time (all threads; not the server's)")


@bench_app.command("notify")
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
    for name in ("httpx", "httpcore"):  # httpx logs every request URL at INFO; webhook URLs carry secrets
        logging.getLogger(name).setLevel(logging.WARNING)
    if from_metric:
        from pipeline.bench import notify_chain

        chain = [asyncio.run(notify_chain.run_chain_bench(ctx.obj, alerts, rate, for_s)) for _ in range(runs)]
        console.print(notify_chain.table(chain))
        return
    from pipeline.bench.notify import run_bench, table

    results = [asyncio.run(run_bench(ctx.obj, alerts, rate)) for _ in range(runs)]
    console.print(table(results))


@bench_app.command("alerting")
def bench_alerting(
    seconds: Annotated[int, typer.Option(help="event-time seconds of input")] = 300,
    symbols: Annotated[int, typer.Option(help="markets per venue")] = 20,
    repeat: Annotated[int, typer.Option(help="runs (median reported)")] = 3,
) -> None:
    """Rule-engine throughput (core rules) vs decoding alone, CPU seconds, median of runs."""
    from pipeline.bench.alerting import run as run_bench

    result = run_bench(seconds, symbols, repeat)
    table = Table("records", "transitions", "engine records/s", "decode-only records/s", "engine / decode")
    table.add_row(
        f"{result['records']:.0f}",
        f"{result['transitions']:.0f}",
        f"{result['engine_records_per_s']:,.0f}",
        f"{result['decode_records_per_s']:,.0f}",
        f"{result['ratio']:.2f}",
    )
    console.print(table)


@bench_app.command("aggregate")
def bench_aggregate(
    ctx: typer.Context,
    trades: Annotated[int, typer.Option(help="trades preloaded for the throughput runs")] = 100_000,
    symbols: Annotated[int, typer.Option(help="symbols the trades are spread over")] = 60,
    rate: Annotated[int, typer.Option(help="trades/s for the bar latency run")] = 10_000,
    seconds: Annotated[int, typer.Option(help="duration of the bar latency run")] = 20,
    repeats: Annotated[int, typer.Option(help="throughput runs per contender (median reported)")] = 3,
    load_rate: Annotated[int, typer.Option(help="trades/s the preloaded batches are formed at")] = 50_000,
    naive_trades: Annotated[int, typer.Option(help="trades the slow naive agent is measured on (0: all)")] = 0,
    latency_repeats: Annotated[int, typer.Option(help="bar latency runs per variant (median reported)")] = 1,
    latency_baseline: Annotated[
        str, typer.Option(help='worker options to compare latency with, e.g. "--fetch-wait-ms 100" (alternated)')
    ] = "",
) -> None:
    """Trades/s per worker and bar latency, next to a raw aiokafka consumer and a naive Faust agent."""
    from pipeline.bench.aggregation import BenchPlan, run_bench

    settings: Settings = ctx.obj
    plan = BenchPlan(
        trades, symbols, rate, seconds, repeats, load_rate, naive_trades, latency_repeats,
        tuple(shlex.split(latency_baseline)),
    )  # fmt: skip
    report = asyncio.run(run_bench(settings, plan))
    typer.echo(report)


@bench_app.command("simulate")
def bench_simulate(
    seconds: Annotated[float, typer.Option(help="simulated seconds per run")] = 20.0,
    runs: Annotated[int, typer.Option(help="runs; the median is reported")] = 3,
    symbols: Annotated[int, typer.Option(help="symbols per venue")] = 10,
) -> None:
    """Frames/s of one simulator process serving 4 venues x N symbols to websocket clients, vs raw encoding."""
    from pipeline.bench.simulator import run_bench

    result = run_bench(seconds, runs, symbols)
    for line in result.lines():
        console.print(line)


@bench_app.command("collect")
def bench_collect(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(help="measured rounds (the median is reported)")] = 3,
    repeat: Annotated[int, typer.Option(help="passes over the captures per round")] = 2,
) -> None:
    """parse -> normalise -> book -> produce from the captures, next to a raw aiokafka baseline."""
    from pipeline.bench.collectors import report, run_bench

    report(asyncio.run(run_bench(ctx.obj, rounds=rounds, repeat=repeat)))


@bench_app.command("broker")
def bench_broker(
    levels: Annotated[str, typer.Option(help="stored one-record batches to measure at, comma-separated")] = (
        "200,2000,5000,10000,15000"
    ),
    rounds: Annotated[int, typer.Option(help="produce + fetch rounds per level (median reported)")] = 50,
) -> None:
    """Broker CPU per fetch as a partition's stored batches grow (the local Tansu broker's memory engine)."""
    from pipeline.bench.broker import run_bench

    typer.echo(run_bench([int(n) for n in levels.split(",")], rounds))


# The anomaly tools (their helper moves them; this import follows them) and the API's benchmark, which stays
# with the API until the lead moves it.
from pipeline.bench.anomaly import cli as _anomaly_bench_cli  # noqa: E402

bench_app.command("nab")(_anomaly_bench_cli.bench_nab)
bench_app.command("anomaly")(_anomaly_bench_cli.bench_anomaly)


@bench_app.command("api")
def bench_api(
    ctx: typer.Context,
    alerts: Annotated[int, typer.Option(help="current alerts in the view")] = 1_000,
    page: Annotated[int, typer.Option(help="page size of the filtered request")] = 100,
    connections: Annotated[int, typer.Option(help="concurrent clients")] = 100,
    seconds: Annotated[int, typer.Option(help="seconds per load run")] = 10,
    subscribers: Annotated[int, typer.Option(help="SSE subscribers for the stream latency run (0 skips)")] = 1_000,
) -> None:
    """Requests/s and latency of GET /api/v1/alerts (load from wrk or a separate process) beside a static JSON
    of the same size served by the same server; record -> SSE latency with many subscribers."""
    from pipeline.bench.api import run_bench

    typer.echo(run_bench(ctx.obj, alerts, page, connections, seconds, subscribers))

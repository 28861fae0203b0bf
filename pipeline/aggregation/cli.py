"""``marketprism worker`` (the aggregation worker); its benchmark is
``marketprism bench aggregate`` (:mod:`pipeline.bench.aggregation`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from pipeline.settings import Settings

log = logging.getLogger(__name__)

LatenessOption = Annotated[int, typer.Option(help="allowed lateness (ms): watermark = max event time - this")]
GraceOption = Annotated[int, typer.Option(help="grace (ms) a window stays open after the watermark passes its end")]
IdleOption = Annotated[int, typer.Option(help="idle timeout (ms) after which a quiet partition follows the clock")]
BatchOption = Annotated[int, typer.Option(help="max records per processing batch")]
WithinOption = Annotated[
    int | None, typer.Option(help="max wait (ms) to fill a processing batch (default: AggregatorConfig)")
]
FetchWaitOption = Annotated[
    int | None, typer.Option(help="consumer fetch long-poll wait (ms); Tansu answers only at its end")
]
CheckpointOption = Annotated[int | None, typer.Option(help="min interval (ms) between state writes of a partition")]


def worker_command(
    ctx: typer.Context,
    lateness_ms: LatenessOption = 500,
    grace_ms: GraceOption = 500,
    idle_timeout_ms: IdleOption = 3000,
    batch_max: BatchOption = 10_000,
    batch_within_ms: WithinOption = None,
    fetch_wait_ms: FetchWaitOption = None,
    checkpoint_ms: CheckpointOption = None,
) -> None:
    """Run the aggregation worker: trades and BBOs -> 1s/1m bars, feed health, reference prices."""
    import faust

    from pipeline.aggregation.app import AggregatorConfig, build_app, ensure_internal_topics
    from pipeline.aggregation.windows import WindowPolicy
    from pipeline.clock import from_settings
    from pipeline.observability.health import watch_faust
    from pipeline.observability.logs import faust_worker_options
    from pipeline.observability.metrics import serve_metrics

    settings: Settings = ctx.obj
    policy = WindowPolicy(lateness_ms * 1000, grace_ms * 1000, idle_timeout_ms * 1000)
    asyncio.run(ensure_internal_topics(settings))
    # pipeline time: idle timeouts and feed health (the tick stays once a wall second: what it ships is bucketed by
    # pipeline second, so an accelerated clock only makes each tick cover more of it)
    clock = from_settings(settings.clock)
    tuning: dict[str, float] = {}  # unset options keep AggregatorConfig's defaults
    if batch_within_ms is not None:
        tuning["batch_within_s"] = batch_within_ms / 1000
    if fetch_wait_ms is not None:
        tuning["fetch_max_wait_ms"] = fetch_wait_ms
    if checkpoint_ms is not None:
        tuning["checkpoint_s"] = checkpoint_ms / 1000
    config = AggregatorConfig(policy=policy, batch_max=batch_max, **tuning)  # type: ignore[arg-type]
    app = build_app(settings, config, clock=clock.now_us)
    serve_metrics(settings.metrics_port, addr=settings.metrics_host)
    watch_faust(app)  # /healthz: the loop answers; /readyz: joined its group and caught up
    faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, **faust_worker_options()
    ).execute_from_commandline()

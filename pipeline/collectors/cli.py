"""``marketprism collect``: the configured venues to Kafka, with ``/metrics`` and feed metrics;
its benchmark is ``marketprism bench collect`` (:mod:`pipeline.bench.collectors`).

Venues, symbols, endpoint overrides (``ws_url``/``rest_url``, e.g. a replay server) and proxies
come from the settings (``venues.<id>``); ``--venue`` narrows the run to some of them. SIGINT or
SIGTERM (or ``--duration``) stops it: connections close, the queue drains, the producer flushes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from pipeline.settings import Settings

log = logging.getLogger(__name__)


async def collect(
    settings: Settings, venues: list[str] | None = None, duration_s: float | None = None, queue_size: int = 100_000
) -> None:
    from pipeline.clock import from_settings
    from pipeline.collectors.output import Output
    from pipeline.collectors.runtime import Collector, build_venues
    from pipeline.kafka import make_record_producer
    from pipeline.observability.health import HEALTH, gauge_at_least
    from pipeline.observability.metrics import serve_metrics

    chosen = build_venues(settings, venues)
    if not chosen:
        raise typer.BadParameter("no venue enabled (settings venues.<id>.enabled or --venue)")
    serve_metrics(settings.metrics_port, addr=settings.metrics_host)
    output = Output(make_record_producer(settings.kafka, settings.topic_prefix), queue_size)
    collector = Collector(settings, chosen, output, clock=from_settings(settings.clock))
    HEALTH.attach()  # /healthz: this loop answers; /readyz: a venue websocket is open
    HEALTH.add("venue", gauge_at_least("marketprism_collector_connected", 1, what="a venue websocket open"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration_s:
        loop.call_later(duration_s, stop.set)
    for runtime in collector.runtimes:
        for plan in runtime.plans:
            log.info("%s: %s -> %s (%d streams)", runtime.exchange, plan.name, plan.url[:120], len(plan.streams))
    await collector.run(stop)
    log.info("collector stopped: %d frames, %d queued items dropped", collector.frames, output.overflowed)


def collect_command(
    ctx: typer.Context,
    venue: Annotated[list[str] | None, typer.Option("--venue", "-v", help="only these venues (repeatable)")] = None,
    duration: Annotated[float, typer.Option(help="stop after N seconds (0: run until SIGINT/SIGTERM)")] = 0.0,
    queue_size: Annotated[int, typer.Option(help="bounded reader->producer queue")] = 100_000,
) -> None:
    """Run the collectors for the configured venues."""
    settings: Settings = ctx.obj
    asyncio.run(collect(settings, venue or None, duration or None, queue_size))

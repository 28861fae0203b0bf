"""``marketprism bench collect``: the collector's hot path at full speed, next to raw aiokafka.

From the captures in ``../shared/replay``: every ``ws_in`` frame goes through the same
:class:`~pipeline.collectors.runtime.VenueRuntime` the collector uses (venue parse and normalise,
books with sequence/checksum checks, record validation, trade dedup, the bounded queue) and the
pump produces to a real Tansu broker started on a free port, as ``infra up`` does; recorded REST
bodies answer the snapshot requests the venue made. The baseline produces the same number of
pre-encoded records with aiokafka alone in the same run. Figures: frames, market events (each
trade/BBO/other record and each price level of a book change) and records, per wall second and per
CPU second of this process (the broker runs in its own process), median of the rounds.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from rich.console import Console
from rich.table import Table

from pipeline.collectors.base import ConnectionPlan, FrameResult, RestRequest
from pipeline.collectors.output import Output
from pipeline.collectors.runtime import VenueRuntime
from pipeline.contracts import BookUpdate, load_registry
from pipeline.infra import broker_service, free_port
from pipeline.kafka import RecordProducer
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_producer
from pipeline.replay.capture import CaptureLine, read_capture
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SHARED_REPLAY = Path(__file__).resolve().parents[2] / ".." / "shared" / "replay"

CAPTURES: dict[str, tuple[str, list[str]]] = {
    "binance.txt": ("binance", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "binance_futures.txt": ("binance_usdm", ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"]),
    "okx.txt": ("okx", ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase.txt": ("coinbase", ["BTC-USD", "ETH-USD"]),
    "kraken.txt": (
        "kraken",
        ["WAVES-EUR", "XMR-USD", "KSM-BTC", "GRT-ETH", "SC-EUR", "ETH-CHF", "OCEAN-BTC", "OMG-USD", "BTC-CHF",
         "ADA-BTC"],
    ),
}


@dataclass
class Round:
    frames: int
    events: int
    records: int
    wall_s: float
    cpu_s: float
    baseline_records: int
    baseline_wall_s: float
    baseline_cpu_s: float


def _request_key(url: str, params: tuple[tuple[str, str], ...] = ()) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(url)
    return parts.path, tuple(sorted((*parse_qsl(parts.query), *params)))


def _events(result: FrameResult | None) -> int:
    """Market events in a result: each trade/BBO/funding/... record, each level of a book change."""
    if result is None:
        return 0
    return sum(len(r.bids) + len(r.asks) if isinstance(r, BookUpdate) else 1 for r in result.records)


def _feed(runtime: VenueRuntime, plan: ConnectionPlan, lines: list[CaptureLine]) -> tuple[int, int]:
    """Every line of one capture through the runtime; returns (frames, market events)."""
    runtime.connected(plan)
    frames = events = 0
    for line in lines:
        if line.kind == "ws_in":
            events += _events(runtime.frame(plan, line.payload, line.ts_recv_us))
            frames += 1
        elif line.kind == "rest":
            wanted = _request_key(line.endpoint)
            match: RestRequest | None = next(
                (r for r in runtime.rest.requested() if _request_key(r.url, r.params) == wanted), None
            )
            if match is not None:
                events += _events(runtime.rest_body(match, line.payload.encode(), line.ts_recv_us))
    return frames, events


async def _pipeline_round(
    settings: Settings, captures: dict[Path, list[CaptureLine]], repeat: int
) -> tuple[int, int, int, float, float]:
    from pipeline.collectors.venues import VENUES

    output = Output(RecordProducer(make_producer(settings.kafka), settings.topic_prefix), maxsize=2_000_000)
    pump = asyncio.create_task(output.run())
    frames = events = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for path, lines in captures.items():
            venue_id, symbols = CAPTURES[path.name]
            venue = VENUES[venue_id](symbols)
            runtime = VenueRuntime(venue, output)
            counted = _feed(runtime, runtime.plans[0], lines)
            frames, events = frames + counted[0], events + counted[1]
            await asyncio.sleep(0)
    await output.drain()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
    records = output.sent
    await output.stop()
    return frames, events, records, wall, cpu


async def _baseline_round(settings: Settings, count: int) -> tuple[float, float]:
    from pipeline.contracts import encode
    from pipeline.contracts.examples import EXAMPLES

    values = [encode(record) for record in EXAMPLES.values()]
    producer = make_producer(settings.kafka)
    await producer.start()
    topic = settings.topic("md.trades.v1")
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(count):
        await producer.send(topic, value=values[n % len(values)], key=b"bench:%d" % (n % 64))
    await producer.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await producer.stop()
    return wall, cpu


async def run_bench(
    settings: Settings, rounds: int = 3, repeat: int = 2, replay_dir: Path = SHARED_REPLAY
) -> list[Round]:
    captures = {replay_dir / name: list(read_capture(replay_dir / name)) for name in CAPTURES}
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as state:
        service = broker_service(Path(state), port=free_port())
        service.start()
        try:
            bench = settings.model_copy(
                update={
                    "kafka": settings.kafka.model_copy(update={"bootstrap_servers": service.address}),
                    "topic_prefix": "bench.",
                }
            )
            await apply(bench.kafka, load_registry(), bench.topic_prefix)
            results = []
            for _ in range(rounds):
                frames, events, records, wall, cpu = await _pipeline_round(bench, captures, repeat)
                base_wall, base_cpu = await _baseline_round(bench, records)
                results.append(Round(frames, events, records, wall, cpu, records, base_wall, base_cpu))
            return results
        finally:
            service.stop()


def report(results: list[Round]) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    table = Table("measure", "collector pipeline", "raw aiokafka produce", "ratio")
    frames_wall = med([r.frames / r.wall_s for r in results])
    rec_wall = med([r.records / r.wall_s for r in results])
    rec_cpu = med([r.records / r.cpu_s for r in results])
    base_wall = med([r.baseline_records / r.baseline_wall_s for r in results])
    base_cpu = med([r.baseline_records / r.baseline_cpu_s for r in results])
    table.add_row("frames/s (wall)", f"{frames_wall:,.0f}", "-", "-")
    table.add_row("frames per CPU-second", f"{med([r.frames / r.cpu_s for r in results]):,.0f}", "-", "-")
    table.add_row("market events per CPU-second", f"{med([r.events / r.cpu_s for r in results]):,.0f}", "-", "-")
    table.add_row("records/s (wall)", f"{rec_wall:,.0f}", f"{base_wall:,.0f}", f"{rec_wall / base_wall:.2f}")
    table.add_row("records per CPU-second", f"{rec_cpu:,.0f}", f"{base_cpu:,.0f}", f"{rec_cpu / base_cpu:.2f}")
    Console().print(table)
    Console().print(
        f"{len(results)} rounds; per round {results[0].frames:,} frames -> {results[0].events:,} market events "
        f"(trades, BBOs, book levels) -> {results[0].records:,} records "
        "(medians shown)"
    )

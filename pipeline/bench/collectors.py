"""``marketprism bench collect``: the collector's hot path at full speed, next to raw aiokafka.

From the captures in ``../shared/replay``: every ``ws_in`` frame goes through the same
:class:`~pipeline.collectors.runtime.VenueRuntime` the collector uses (venue parse and normalise,
books with sequence/checksum checks, record validation, trade dedup, the bounded queue) and the
pump produces to a real Tansu broker started on a free port, as ``infra up`` does; recorded REST
bodies answer the snapshot requests the venue made. Each capture is timed on its own, from its
first frame until the broker acknowledged its last record, split into *venue + runtime* (frames to
the queue) and *produce* (the pump and aiokafka until acknowledged).

Baseline, in the same run and per capture: the very records that capture produced (same topics,
keys and encoded values, taken from an untimed pass through a runtime) sent with aiokafka alone
(``send`` + ``flush``, same producer settings). Figures per CPU second of this process (the broker
runs in its own process), medians of the rounds.

Units: *frames* are websocket frames; *records* are topic values; *market events* are each trade,
BBO, funding, open-interest or liquidation record plus each price level of a book change (a
``BookUpdate`` of 40 levels is 40 events; full snapshots republished after a resync count too).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from rich.console import Console
from rich.table import Table

from pipeline.collectors.base import TOPIC_OF, ConnectionPlan, FrameResult, RestRequest
from pipeline.collectors.capture import CaptureLine, read_capture
from pipeline.collectors.output import Output
from pipeline.collectors.runtime import VenueRuntime
from pipeline.contracts import BookUpdate, FeedMetrics, Record, load_registry, market_key
from pipeline.infra import broker_service, free_port
from pipeline.kafka import make_record_producer
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_producer
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
        [
            "WAVES-EUR",
            "XMR-USD",
            "KSM-BTC",
            "GRT-ETH",
            "SC-EUR",
            "ETH-CHF",
            "OCEAN-BTC",
            "OMG-USD",
            "BTC-CHF",
            "ADA-BTC",
        ],
    ),
}

Message = tuple[str, bytes, bytes]  # topic, key, value


@dataclass
class Pass:
    """One capture (``repeat`` times) through the pipeline and through the baseline."""

    capture: str
    frames: int
    events: int
    records: int
    feed_cpu_s: float  # venue + runtime, frames to the queue
    cpu_s: float  # feed + produce until acknowledged
    wall_s: float
    baseline_records: int
    baseline_cpu_s: float
    baseline_wall_s: float

    @property
    def produce_cpu_s(self) -> float:
        return self.cpu_s - self.feed_cpu_s


Round = list[Pass]


def _request_key(url: str, params: tuple[tuple[str, str], ...] = ()) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(url)
    return parts.path, tuple(sorted((*parse_qsl(parts.query), *params)))


def _events(result: FrameResult | None) -> int:
    """Market events in a result: each trade/BBO/funding/... record, each level of a book change."""
    if result is None:
        return 0
    return sum(len(r.bids) + len(r.asks) if isinstance(r, BookUpdate) else 1 for r in result.records)


def _feed(
    runtime: VenueRuntime, plan: ConnectionPlan, lines: list[CaptureLine], results: list[FrameResult | None]
) -> int:
    """Every line of one capture through the runtime; returns the frames, appends what each frame and
    REST body produced to ``results`` (counted after the timing: counting is not the pipeline's work)."""
    runtime.connected(plan)
    frames = 0
    for line in lines:
        if line.kind == "ws_in":
            results.append(runtime.frame(plan, line.payload, line.ts_recv_us))
            frames += 1
        elif line.kind == "rest":
            wanted = _request_key(line.endpoint)
            match: RestRequest | None = next(
                (r for r in runtime.rest.requested() if _request_key(r.url, r.params) == wanted), None
            )
            if match is not None:
                results.append(runtime.rest_body(match, line.payload.encode(), line.ts_recv_us))
    return frames


class _Tap:
    """Stands in for :class:`Output` in the untimed pass: keeps what the runtime hands on, as
    (topic, key, value) in the order the pump would send it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.broken_books: set[tuple[str, str]] = set()  # never: the tap takes everything
        self.has_room = True

    def record(self, record: Record, value: bytes | None = None) -> bool:
        assert value is not None
        key = market_key(record.exchange, record.symbol)  # type: ignore[attr-defined]
        self.messages.append((TOPIC_OF[type(record)], key, value))
        return True

    def metric(self, record: FeedMetrics) -> bool:
        return True

    def dead(self, reason: str, error: str, payload: str | bytes, exchange: str) -> bool:
        raise AssertionError(f"a capture frame went to the DLQ: {reason} {error}")


def _runtime(name: str, output: object) -> VenueRuntime:
    from pipeline.collectors.venues import VENUES

    venue_id, symbols = CAPTURES[name]
    return VenueRuntime(VENUES[venue_id](symbols), output)  # type: ignore[arg-type]


def messages_of(name: str, lines: list[CaptureLine]) -> list[Message]:
    """The topic values one pass over a capture produces (untimed)."""
    tap = _Tap()
    runtime = _runtime(name, tap)
    _feed(runtime, runtime.plans[0], lines, [])
    return tap.messages


async def _pipeline_pass(output: Output, name: str, lines: list[CaptureLine], repeat: int) -> Pass:
    """One capture through the runtime and the (started) pump, until the broker acknowledged it."""
    frames = 0
    feed_cpu = 0.0
    sent = output.sent
    results: list[FrameResult | None] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        runtime = _runtime(name, output)
        started = time.process_time()
        frames += _feed(runtime, runtime.plans[0], lines, results)
        feed_cpu += time.process_time() - started
        await asyncio.sleep(0)
    await output.drain()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    events = sum(map(_events, results))
    return Pass(name, frames, events, output.sent - sent, feed_cpu, cpu, wall, 0, 0.0, 0.0)


async def _pipeline_round(
    settings: Settings, captures: dict[str, list[CaptureLine]], messages: dict[str, list[Message]], repeat: int
) -> Round:
    from pipeline.contracts.examples import EXAMPLES

    output = Output(make_record_producer(settings.kafka, settings.topic_prefix), maxsize=2_000_000)
    pump = asyncio.create_task(output.run())
    try:
        output.metric(EXAMPLES[FeedMetrics])  # type: ignore[arg-type]
        await output.drain()  # the producer is connected: time the data, not the set-up
        passes = []
        for name, lines in captures.items():
            done = await _pipeline_pass(output, name, lines, repeat)
            base = await _baseline(settings, messages[name] * repeat)
            done.baseline_records, done.baseline_cpu_s, done.baseline_wall_s = base
            passes.append(done)
        return passes
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        await output.stop()


async def _baseline(settings: Settings, messages: Iterable[Message]) -> tuple[int, float, float]:
    """The same topic values with aiokafka alone: (records, CPU s, wall s)."""
    producer = make_producer(settings.kafka)
    await producer.start()
    topics = {topic: settings.topic(topic) for topic in TOPIC_OF.values()}
    batch = [(topics[topic], key, value) for topic, key, value in messages]
    wall, cpu = time.perf_counter(), time.process_time()
    for topic, key, value in batch:
        await producer.send(topic, value=value, key=key)
    await producer.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await producer.stop()
    return len(batch), cpu, wall


async def run_rounds(
    settings: Settings, rounds: int, repeat: int, replay_dir: Path = SHARED_REPLAY, names: Iterable[str] = CAPTURES
) -> list[Round]:
    """The measured rounds against the broker and topics ``settings`` name (already applied), over the
    captures ``names`` (all by default)."""
    captures = {name: list(read_capture(replay_dir / name)) for name in names}
    messages = {name: messages_of(name, lines) for name, lines in captures.items()}
    # The captures and the baseline's records are the harness's (a collector holds no such data): moved out
    # of the cyclic GC's generations, so its collections scan what a collector process would have.
    gc.collect()
    gc.freeze()
    try:
        return [await _pipeline_round(settings, captures, messages, repeat) for _ in range(rounds)]
    finally:
        gc.unfreeze()


async def run_bench(
    settings: Settings, rounds: int = 3, repeat: int = 2, replay_dir: Path = SHARED_REPLAY
) -> list[Round]:
    """:func:`run_rounds` against a Tansu broker started for the run (topics under ``bench.``)."""
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
            return await run_rounds(bench, rounds, repeat, replay_dir)
        finally:
            service.stop()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summary(results: list[Round]) -> dict[str, dict[str, float]]:
    """Per capture and ``all``: medians over the rounds of the per-CPU-second figures."""
    names = [p.capture for p in results[0]]
    rows: dict[str, dict[str, float]] = {}
    for name in [*names, "all"]:
        per_round = []
        for passes in results:
            chosen = passes if name == "all" else [p for p in passes if p.capture == name]
            total = {
                field: sum(getattr(p, field) for p in chosen)
                for field in (
                    "frames",
                    "events",
                    "records",
                    "feed_cpu_s",
                    "cpu_s",
                    "wall_s",
                    "baseline_records",
                    "baseline_cpu_s",
                )
            }
            per_round.append(total)
        first = per_round[0]
        rows[name] = {
            "frames": first["frames"],
            "events": first["events"],
            "records": first["records"],
            "baseline_records": first["baseline_records"],
            "events_per_cpu_s": _median([r["events"] / r["cpu_s"] for r in per_round]),
            "frames_per_cpu_s": _median([r["frames"] / r["cpu_s"] for r in per_round]),
            "records_per_cpu_s": _median([r["records"] / r["cpu_s"] for r in per_round]),
            "records_per_wall_s": _median([r["records"] / r["wall_s"] for r in per_round]),
            "feed_share": _median([r["feed_cpu_s"] / r["cpu_s"] for r in per_round]),
            "produce_us_per_record": _median([(r["cpu_s"] - r["feed_cpu_s"]) / r["records"] * 1e6 for r in per_round]),
            "baseline_records_per_cpu_s": _median([r["baseline_records"] / r["baseline_cpu_s"] for r in per_round]),
            "baseline_us_per_record": _median([r["baseline_cpu_s"] / r["baseline_records"] * 1e6 for r in per_round]),
        }
    return rows


def report(results: list[Round]) -> None:
    rows = summary(results)
    table = Table(
        "capture",
        "frames",
        "market events",
        "records",
        "events / CPU-s",
        "records / CPU-s",
        "venue+runtime share",
        "produce us/record",
        "raw aiokafka same records / CPU-s",
        "raw us/record",
        "records ratio",
    )
    for name, row in rows.items():
        table.add_row(
            name.removesuffix(".txt"),
            f"{row['frames']:,.0f}",
            f"{row['events']:,.0f}",
            f"{row['records']:,.0f}",
            f"{row['events_per_cpu_s']:,.0f}",
            f"{row['records_per_cpu_s']:,.0f}",
            f"{row['feed_share']:.0%}",
            f"{row['produce_us_per_record']:.1f}",
            f"{row['baseline_records_per_cpu_s']:,.0f}",
            f"{row['baseline_us_per_record']:.1f}",
            f"{row['records_per_cpu_s'] / row['baseline_records_per_cpu_s']:.2f}",
        )
    Console(width=200).print(table)
    Console().print(
        f"{len(results)} rounds, medians shown; counts are per round. Market events = trade, BBO and other "
        "records + the price levels of book changes. Baseline: the same topic values sent with aiokafka alone."
    )

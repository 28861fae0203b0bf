"""``marketprism bench notify --from-metric``: latency from an alert condition becoming true (after its
``for``) to a webhook receiving the notification, through the whole alert path: a FeedMetrics record on
``ops.feed_metrics.v1`` -> a real ``marketprism alerts run`` process (threshold rule with ``for``) ->
``ops.alerts.v1`` -> a real ``marketprism notify`` process (``group_wait: 0``) -> a webhook on loopback.

Each bench series ``bench-<i>`` gets one breaching record at ``t0`` (the condition turns true, pending)
and a second one ``for`` later; event time is the wall clock, as in production. Two clocks start the
measurement: the **deadline** (``t0 + for``: the instant the condition has held for ``for``, in event
time) and the **hand-off** of the first record whose event time reaches it (the earliest moment any
rule engine can know; with inputs every few milliseconds they are close). Baseline in the same run:
the same FeedMetrics records produce -> a plain aiokafka consumer (one topic hop; the path has two).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web
from aiokafka import TopicPartition
from rich.table import Table

from pipeline.bench.notify import NotifierProcess, PipelineProcess, _percentile
from pipeline.contracts import FeedMetrics, decode
from pipeline.contracts.topics import FEED_METRICS
from pipeline.infra import free_port, scratch_broker
from pipeline.kafka import RecordProducer, make_consumer, make_record_producer
from pipeline.kafka.admin import describe
from pipeline.settings import Settings

RULES = """
rules:
  - name: BenchLatency
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, where: {source: collector}, metric: lag_p99_ms, op: ">",
                value: 1000}
    for: FOR
    annotations: {summary: "{exchange} {stream}: lag {value:.0f} ms"}
"""


def _now_us() -> int:
    return time.time_ns() // 1000


def _metrics(stream: str, ts: int, lag_us: int) -> FeedMetrics:
    return FeedMetrics(
        exchange="binance",
        stream=stream,
        source="collector",
        ts_event=ts,
        interval_us=1_000_000,
        messages=100,
        lag_p99_us=lag_us,
        connected=True,
    )  # type: ignore[arg-type]


@dataclass
class ChainResult:
    """Milliseconds per alert: from the deadline, from the hand-off, and the one-hop topic baseline."""

    sent: int
    from_deadline: list[float]
    from_handoff: list[float]
    topic: list[float]

    def figures(self) -> list[float]:
        nan = float("nan")
        out = []
        for values in (self.from_deadline, self.from_handoff, self.topic):
            out += [_percentile(values, 0.5), _percentile(values, 0.99)] if values else [nan, nan]
        return out


def table(results: list[ChainResult]) -> Table:
    import statistics

    out = Table(
        "run",
        "notified",
        "deadline p50",
        "deadline p99",
        "hand-off p50",
        "hand-off p99",
        "topic p50",
        "topic p99",
        title="condition true after `for` -> rule engine -> notifier -> webhook (ms, group_wait 0); "
        "baseline: FeedMetrics -> plain consumer",
    )
    rows = [r.figures() for r in results]
    for i, (result, row) in enumerate(zip(results, rows, strict=True), 1):
        out.add_row(str(i), f"{len(result.from_deadline)}/{result.sent}", *(f"{v:.1f}" for v in row))
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    out.add_row("median", "", *(f"{v:.1f}" for v in medians))
    return out


class EngineProcess(PipelineProcess):
    """``marketprism alerts run`` (no core rules) with the rules file ``rules``, from the topics' latest offsets."""

    def __init__(self, settings: Settings, rules: Path, log_file: Path):
        super().__init__(settings, log_file)
        self._rules = rules

    def command(self) -> list[str]:
        return ["alerts", "run", "--no-core", "--rules", str(self._rules), "--from", "latest", "--idle-advance", "0"]

    async def ready(self, wait_s: float) -> None:
        async with asyncio.timeout(wait_s):
            while b"rule engine ready" not in self._log_file.read_bytes():
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"rule engine exited: {self._log_file.read_text()[-2000:]}")
                await asyncio.sleep(0.2)


async def run_chain_bench(base: Settings, alerts: int, rate: float, for_s: float, wait_s: float = 120.0) -> ChainResult:
    async with scratch_broker(base, "bench-chain") as (settings, work):
        return await _measure(settings, work, alerts, rate, int(for_s * 1e6), wait_s)


async def _measure(settings: Settings, work: Path, alerts: int, rate: float, for_us: int, wait_s: float) -> ChainResult:
    arrived: dict[str, int] = {}  # stream -> webhook arrival (epoch us)
    complete = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        now = _now_us()
        for alert in (await request.json())["alerts"]:
            if alert["status"] == "firing":
                arrived.setdefault(alert["labels"]["stream"], now)
        if sum(s.startswith("bench-") for s in arrived) >= alerts:
            complete.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    (work / "rules.yaml").write_text(RULES.replace("FOR", f"{for_us / 1e6:g}s"))
    (work / "notify.yaml").write_text(yaml.safe_dump({
        "route": {"receiver": "hook", "group_by": ["..."], "group_wait": 0, "group_interval": "1m"},
        "receivers": [{"name": "hook", "channels": [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"}]}],
    }))  # fmt: skip
    engine = EngineProcess(settings, work / "rules.yaml", work / "engine.log")
    notifier = NotifierProcess(settings, work / "notify.yaml", work / "notifier.log")
    producer = make_record_producer(settings.kafka, settings.topic_prefix)
    await producer.start()
    engine.start()
    notifier.start()
    try:
        await engine.ready(wait_s)
        async with asyncio.timeout(wait_s):  # warm-up: both processes up once one alert went all the way
            attempt = 0
            while not any(s.startswith("warmup") for s in arrived):
                stream, t0 = f"warmup-{attempt}", _now_us()
                await producer.send(FEED_METRICS.name, stream.encode(), _metrics(stream, t0, 5_000_000))
                await asyncio.sleep(for_us / 1e6)
                await producer.send(FEED_METRICS.name, stream.encode(), _metrics(stream, _now_us(), 5_000_000))
                await producer.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(complete.wait(), 5)
                attempt += 1
        deadlines, handoffs, topic = await _produce(settings, producer, alerts, rate, for_us, complete, wait_s)
    finally:
        notifier.stop()
        engine.stop()
        await producer.stop()
        await runner.cleanup()
    streams = [s for s in arrived if s.startswith("bench-")]
    return ChainResult(
        alerts,
        [(arrived[s] - deadlines[s]) / 1000 for s in streams],
        [(arrived[s] - handoffs[s]) / 1000 for s in streams if s in handoffs],
        topic,
    )


async def _produce(
    settings: Settings,
    producer: RecordProducer,
    alerts: int,
    rate: float,
    for_us: int,
    complete: asyncio.Event,
    wait_s: float,
) -> tuple[dict[str, int], dict[str, int], list[float]]:
    """Produce the two records of every series in event-time order; returns per series its deadline and the
    hand-off time of the first record reaching it, and the baseline latencies."""
    topic = settings.topic(FEED_METRICS.name)
    consumer = make_consumer(settings.kafka, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    latencies: list[float] = []
    deadlines: dict[str, int] = {}
    handoffs: dict[str, int] = {}
    try:
        parts = (await describe(settings.kafka, [topic]))[topic].partitions
        tps = [TopicPartition(topic, p) for p in range(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before the first bench record
            await consumer.position(tp)

        async def consume() -> None:
            while len(latencies) < 2 * alerts:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    now = _now_us()
                    for message in messages:
                        record = decode(FeedMetrics, message.value)
                        if record.stream.startswith("bench-"):
                            latencies.append((now - record.ts_event) / 1000)

        async def send(stream: str) -> int:
            ts = _now_us()
            for other, deadline in deadlines.items():
                if other not in handoffs and deadline <= ts:
                    handoffs[other] = ts
            await producer.send(FEED_METRICS.name, stream.encode(), _metrics(stream, ts, 5_000_000))
            return ts

        reader = asyncio.create_task(consume())
        seconds = [(i / rate, i, "first") for i in range(alerts)]
        seconds += [(i / rate + for_us / 1e6, i, "second") for i in range(alerts)]
        started = time.monotonic()
        for at, i, which in sorted(seconds):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            stream = f"bench-{i}"
            if which == "second" and (late := deadlines[stream] - _now_us()) > 0:
                await asyncio.sleep(late / 1e6)  # its first record went out late: keep the second `for` after it
            ts = await send(stream)
            if which == "first":  # the condition turns true at the record's event time; it has held `for` at:
                deadlines[stream] = ts + for_us
        await producer.flush()
        with contextlib.suppress(TimeoutError):  # what has not arrived by then is reported missing (notified n/sent)
            await asyncio.wait_for(complete.wait(), wait_s)
        with contextlib.suppress(TimeoutError):  # the baseline reader: every record, or what came in 10 s
            await asyncio.wait_for(reader, 10)
    finally:
        await consumer.stop()
    return deadlines, handoffs, latencies

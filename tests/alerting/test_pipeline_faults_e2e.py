"""The pipeline rules end to end, through real processes: live trades go through the real aggregation worker
(``marketprism worker``) and the real ClickHouse sink (``marketprism sink`` on embedded chdb), and the real rule
engine (``marketprism alerts run``, core rules, lag probe) watches them. Killing the sink raises SinkStalled, a
market going quiet raises BarsStalled, a venue going quiet with sequence gaps raises ExchangeHealthLow (from the
worker's health score), killing the worker raises WorkerStalled, PipelineStalled and, while trades keep coming,
ConsumerLagGrowing (inhibited by WorkerStalled);
each resolves once its part is back. Every process runs on one ScaledClock (10x), so the rules' 30 s-5 min windows
take seconds of wall time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.alerting import control
from pipeline.alerting.lagprobe import LAG_TOPIC
from pipeline.clock import ScaledClock
from pipeline.contracts import encode, market_key
from pipeline.contracts.records import Alert, BatchTrade, ConsumerLag, FeedMetrics, Trade, TradeBatch
from pipeline.kafka import make_producer
from pipeline.settings import Settings

SPEED = 10.0
# Upper bound of every wall-clock wait (generous: a loaded 2-core machine slows the whole pipeline, not the test)
WAIT_S = 300.0
ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "pipeline" / "alerting" / "rules" / "core.yaml"
WORKER_ARGS = ("--lateness-ms", "2000", "--grace-ms", "1000", "--idle-timeout-ms", "5000")


class Child:
    """One ``marketprism`` command as a child process in its own process group, stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path):
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with (self.logs / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [MARKETPRISM, *self.argv],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def check(self) -> None:
        """Fail with the end of its log if the child exited (it is only ever down when the test killed it)."""
        if self.process is not None and self.process.poll() is not None:
            tail = (self.logs / f"{self.name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{tail}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


MARKETPRISM = str(Path(sys.executable).parent / "marketprism")


class Feed:
    """What collectors publish, stamped on the pipeline clock: ``markets`` each get ``per_tick`` trades every
    50 wall ms (a market in ``quiet`` gets none), and each venue's trades stream a collector FeedMetrics record
    per simulated second (``gaps`` sequence gaps a second for a venue in ``gappy``)."""

    def __init__(self, settings: Settings, clock: ScaledClock, markets: list[tuple[str, str]], per_tick: int = 4):
        self.settings, self.clock, self.markets, self.per_tick = settings, clock, markets, per_tick
        self.quiet: set[tuple[str, str]] = set()
        self.gappy: dict[str, int] = {}
        self.batch_burst = 0  # extra one-trade batches per market and tick (md.trade_batches.v1 only)
        self.sent = 0
        self._metrics_at = 0
        self._messages: dict[str, int] = {}

    async def _feed_metrics(self, producer, now: int) -> None:  # type: ignore[no-untyped-def]
        second = now - now % 1_000_000
        if second <= self._metrics_at:
            return
        self._metrics_at = second
        for exchange in sorted({e for e, _ in self.markets}):
            record = FeedMetrics(
                exchange=exchange, stream="trades", source="collector", ts_event=second, interval_us=1_000_000,
                messages=self._messages.pop(exchange, 0), gaps=self.gappy.get(exchange, 0), connected=True,
                lag_p99_us=1500, staleness_us=0,
            )  # fmt: skip
            await producer.send(
                self.settings.topic("ops.feed_metrics.v1"), encode(record), key=f"{exchange}:trades".encode()
            )

    async def run(self, stop: asyncio.Event) -> None:
        producer = make_producer(self.settings.kafka)
        await producer.start()
        trades_topic = self.settings.topic("md.trades.v1")
        batches_topic = self.settings.topic("md.trade_batches.v1")
        try:
            while not stop.is_set():
                now = self.clock.now_us()
                await self._feed_metrics(producer, now)
                for exchange, symbol in self.markets:
                    if (exchange, symbol) in self.quiet:
                        continue
                    self._messages[exchange] = self._messages.get(exchange, 0) + self.per_tick
                    trades = []
                    for i in range(self.per_tick):
                        self.sent += 1
                        trades.append(Trade(
                            exchange=exchange, symbol=symbol, raw_symbol=symbol.replace("-", ""),
                            trade_id=str(self.sent), price=Decimal(f"{100 + self.sent % 7}.{self.sent % 100:02d}"),
                            size=Decimal("0.010000"), side="buy" if i % 2 else "sell", ts_event=now, ts_recv=now + 1500,
                        ))  # fmt: skip
                        await producer.send(trades_topic, encode(trades[-1]), key=market_key(exchange, symbol))
                    # as a collector publishes them: each trade on md.trades.v1 (the sink), together on
                    # md.trade_batches.v1 (the aggregation worker)
                    batch = TradeBatch(
                        exchange=exchange, symbol=symbol, raw_symbol=trades[0].raw_symbol,
                        trades=[BatchTrade(trade_id=t.trade_id, price=t.price, size=t.size, side=t.side,
                                           ts_event=t.ts_event, ts_recv=t.ts_recv) for t in trades],
                    )  # fmt: skip
                    await producer.send(batches_topic, encode(batch), key=market_key(exchange, symbol))
                    for k in range(self.batch_burst):  # one-trade batches: a venue printing trade by trade
                        self.sent += 1
                        one = BatchTrade(trade_id=str(self.sent), price=trades[0].price, size=trades[0].size,
                                         side=trades[0].side, ts_event=now, ts_recv=now + 1500 + k)  # fmt: skip
                        await producer.send(
                            batches_topic, encode(TradeBatch(exchange=exchange, symbol=symbol,
                                                             raw_symbol=trades[0].raw_symbol, trades=[one])),
                            key=market_key(exchange, symbol),
                        )  # fmt: skip
                await producer.flush()
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()


LIVE: list[Child] = []  # the children that must be running while the test waits
STARTED = [time.monotonic()]


async def _wait_alert(settings: Settings, rule: str, state: str, after: int, wait_s: float, **labels: str) -> Alert:
    """The first ``rule`` alert in ``state`` (after topic position ``after``) whose labels include ``labels``."""
    print(f"{time.monotonic() - STARTED[0]:6.1f}s: waiting for {rule} {state}")  # the phases' times (-s)
    deadline = time.monotonic() + wait_s
    while True:
        for running in LIVE:
            running.check()
        alerts = await control.read_all(settings, control.ALERTS_TOPIC, Alert)
        for alert in alerts[after:]:
            if alert.rule == rule and alert.state == state and labels.items() <= alert.labels.items():
                return alert
        if time.monotonic() > deadline:
            seen = [(a.rule, a.state, a.labels) for a in alerts if a.rule == rule]
            lags = [(x.group, x.topic, x.ts, x.lag) for x in await control.read_all(settings, LAG_TOPIC, ConsumerLag)]
            raise AssertionError(f"{rule} not {state} within {wait_s}s; {rule} transitions: {seen}; lags: {lags[-40:]}")
        await asyncio.sleep(0.5)


async def _count_alerts(settings: Settings) -> int:
    return len(await control.read_all(settings, control.ALERTS_TOPIC, Alert))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every wait bounded by WAIT_S; a loaded machine needs far more than the default 300 s
async def test_pipeline_rules_fire_and_resolve_through_real_processes(topics: Settings, tmp_path: Path) -> None:
    STARTED[0] = time.monotonic()
    origin_us = (time.time_ns() // 1000 // 1_000_000 + 2) * 1_000_000
    clock = ScaledClock(SPEED, origin_us)
    sink_group = f"{topics.topic_prefix}marketprism-sink"
    env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": topics.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": topics.topic_prefix,
        "MARKETPRISM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}",
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_LOG_LEVEL": "INFO",
        "MARKETPRISM_CLOCK__SPEED": repr(SPEED),
        "MARKETPRISM_CLOCK__ORIGIN_US": str(origin_us),
    }

    def child(name: str, *argv: str) -> Child:
        return Child(name, list(argv), env | {"MARKETPRISM_STATE_DIR": str(tmp_path / name)}, tmp_path)

    sink = child("sink", "sink", "--group", sink_group)
    worker = child("worker", "worker", *WORKER_ARGS)
    engine = child(
        "alerts",
        "alerts",
        "run",
        "--from",
        "earliest",
        "--lag-interval",
        "5s",
        "--lag-group",
        sink_group,
        "--lag-group",
        f"{topics.topic_prefix}aggregator",
    )
    markets = [("binance", "BTC-USDT"), ("binance", "ETH-USDT"), ("okx", "BTC-USDT")]
    feed = Feed(topics, clock, markets)
    stop = asyncio.Event()
    feeding: asyncio.Task[None] | None = None
    children = [sink.start(), worker.start(), engine.start()]
    LIVE[:] = children
    try:
        # feed once the sink consumes and the worker holds its partitions: no start-up backlog to work off
        await _wait_log(sink, "sink consuming", WAIT_S)
        await _wait_log(worker, "assigned", WAIT_S)
        feeding = asyncio.create_task(feed.run(stop))
        # steady state: 1s bars flow and the sink keeps up (SinkStalled never leaves "inactive")
        await _wait_bars(topics, wait_s=WAIT_S)
        await _wait_sink_committed(topics, sink_group, wait_s=WAIT_S)

        # 1. the sink dies (its group keeps its offsets, nobody commits), binance ETH-USDT goes quiet, and okx's
        # trades stop while its collector reports sequence gaps (connected: VenueDisconnected would inhibit)
        start = await _count_alerts(topics)
        LIVE.remove(sink)
        sink.kill()
        feed.quiet |= {("binance", "ETH-USDT"), ("okx", "BTC-USDT")}
        feed.gappy["okx"] = 3
        health = await _wait_alert(
            topics, "ExchangeHealthLow", "firing", start, WAIT_S, exchange="okx", stream="trades"
        )
        feed.quiet.discard(("okx", "BTC-USDT"))
        feed.gappy.clear()
        await _wait_alert(topics, "ExchangeHealthLow", "resolved", start, WAIT_S, exchange="okx", stream="trades")
        # the value at firing is the latest sample: it went under 50, and hysteresis holds the rule until it is 70
        assert health.value is not None and health.value < 70
        stalled = await _wait_alert(
            topics, "SinkStalled", "firing", start, WAIT_S, group=sink_group, topic="md.trades.v1"
        )
        LIVE.append(sink.start())
        await _wait_alert(topics, "SinkStalled", "resolved", start, WAIT_S, group=sink_group, topic="md.trades.v1")
        quiet = await _wait_alert(topics, "BarsStalled", "firing", start, WAIT_S, exchange="binance", symbol="ETH-USDT")
        feed.quiet.clear()
        await _wait_alert(topics, "BarsStalled", "resolved", start, WAIT_S, exchange="binance", symbol="ETH-USDT")
        assert stalled.value is not None and stalled.value >= 15  # seconds without a commit (the stall clock)
        assert quiet.value is not None and quiet.value >= 180

        # 2. the aggregation worker dies: no 1s bar from any market
        start = await _count_alerts(topics)
        LIVE.remove(worker)
        worker.kill()
        await _wait_alert(topics, "PipelineStalled", "firing", start, WAIT_S)
        # ... the lag probe sees its group commit nothing while its batches wait (WorkerStalled) ...
        group = f"{topics.topic_prefix}aggregator"
        await _wait_alert(topics, "WorkerStalled", "firing", start, WAIT_S, group=group, topic="md.trade_batches.v1")
        # ... and while its input keeps coming, the group's lag passes 10000 and grows (ConsumerLagGrowing): raised,
        # and shown inhibited by WorkerStalled, which explains it (core.yaml inhibit_rules)
        feed.batch_burst = 40
        growing = await _wait_alert(
            topics, "ConsumerLagGrowing", "silenced", start, WAIT_S, group=group, topic="md.trade_batches.v1"
        )
        assert growing.actor == "inhibition" and "WorkerStalled" in (growing.comment or ""), growing
        feed.batch_burst = 0
        LIVE.append(worker.start())
        await _wait_alert(topics, "PipelineStalled", "resolved", start, WAIT_S)
        await _wait_alert(topics, "WorkerStalled", "resolved", start, WAIT_S, group=group, topic="md.trade_batches.v1")
        await _wait_alert(
            topics, "ConsumerLagGrowing", "resolved", start, WAIT_S, group=group, topic="md.trade_batches.v1"
        )
        assert growing.value is not None and growing.value > 10000
    finally:
        stop.set()
        if feeding is not None:
            await feeding
        LIVE.clear()
        for running in children:
            running.stop()


async def _wait_log(child: Child, text: str, wait_s: float) -> None:
    """Until ``text`` is in the child's log."""
    deadline = time.monotonic() + wait_s
    while text not in (child.logs / f"{child.name}.log").read_text(errors="replace"):
        child.check()
        if time.monotonic() > deadline:
            raise AssertionError(f"{child.name}: no {text!r} in its log within {wait_s}s")
        await asyncio.sleep(0.2)


async def _wait_sink_committed(settings: Settings, group: str, wait_s: float) -> None:
    """Until the probe has measured the sink group on md.trades.v1 (it has committed) keeping up (lag < 1000)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for running in LIVE:
            running.check()
        lags = await control.read_all(settings, LAG_TOPIC, ConsumerLag)
        if any(x.group == group and x.topic == "md.trades.v1" and x.lag < 1000 for x in lags):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the sink group {group} never committed")


async def _wait_bars(settings: Settings, wait_s: float) -> None:
    """Until the worker has published 1s bars."""
    from aiokafka import TopicPartition

    from pipeline.kafka import make_consumer

    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        topic = settings.topic("md.bars.1s.v1")
        parts = consumer.partitions_for_topic(topic) or set(range(6))
        consumer.assign([TopicPartition(topic, p) for p in parts])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for running in LIVE:
                running.check()
            if any((await consumer.getmany(timeout_ms=500)).values()):
                return
        raise AssertionError("no 1s bars from the worker")
    finally:
        await consumer.stop()

"""``marketprism bench notify``: latency from an Alert ``firing`` record produced to ``ops.alerts.v1``
to a webhook receiving its notification, through a real ``marketprism notify`` process with
``group_wait: 0`` on a private Tansu broker. The baseline, measured in the same run on the same
records, is the topic itself: produce -> a plain aiokafka consumer in the bench process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web
from aiokafka import TopicPartition
from rich.table import Table

from pipeline.contracts import Alert, decode
from pipeline.contracts.topics import ALERTS
from pipeline.infra import free_port, scratch_broker
from pipeline.kafka import RecordProducer, make_consumer, make_record_producer
from pipeline.kafka.admin import describe
from pipeline.percentile import percentile
from pipeline.settings import Settings

SENT_AT = "bench_sent_us"


def _now_us() -> int:
    return time.time_ns() // 1000


class PipelineProcess:
    """A ``marketprism <command>`` child process on the settings' broker, topic prefix and state dir (metrics
    off, no config file), logging to ``log_file``; stopped by its own PID only."""

    def __init__(self, settings: Settings, log_file: Path):
        self._settings = settings
        self._log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The ``marketprism`` arguments."""
        raise NotImplementedError

    def start(self) -> None:
        kafka = self._settings.kafka
        env = os.environ | {
            "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "MARKETPRISM_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "MARKETPRISM_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "MARKETPRISM_KAFKA__REBALANCE_TIMEOUT_MS": str(kafka.rebalance_timeout_ms),
            "MARKETPRISM_TOPIC_PREFIX": self._settings.topic_prefix,
            "MARKETPRISM_METRICS_PORT": "0",
            "MARKETPRISM_STATE_DIR": str(self._settings.state_dir),
        }
        env.pop("MARKETPRISM_CONFIG", None)
        argv = [sys.executable, "-c", "from pipeline.cli import main; main()", *self.command()]
        with self._log_file.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # noqa: S603 - fixed argv built by this module, no shell

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class NotifierProcess(PipelineProcess):
    """``marketprism notify`` with the routes file ``routes``."""

    def __init__(self, settings: Settings, routes: Path, log_file: Path):
        super().__init__(settings, log_file)
        self._routes = routes

    def command(self) -> list[str]:
        return ["notify", "--routes", str(self._routes)]


def firing_alert(fingerprint: str, ts: int, **annotations: str) -> Alert:
    return Alert(
        fingerprint=fingerprint,
        rule="bench_latency",
        state="firing",
        severity="P2",
        labels={"id": fingerprint},
        annotations=dict(annotations),
        ts_event=ts,
        active_since=ts,
        fired_at=ts,
        version=1,
    )


def _percentile(values: list[float], q: float) -> float:
    """``q`` as a fraction (0.99): the shared nearest-rank percentile."""
    return percentile(sorted(values), q * 100)


@dataclass
class BenchResult:
    """Latencies (milliseconds) of one run: notifier path and baseline topic path."""

    sent: int
    notified: list[float]
    topic: list[float]

    def figures(self) -> tuple[float, float, float, float]:
        """notifier p50, p99, baseline p50, p99 (NaN when nothing arrived)."""
        nan = float("nan")
        if not self.notified or not self.topic:
            return nan, nan, nan, nan
        return (
            _percentile(self.notified, 0.5),
            _percentile(self.notified, 0.99),
            _percentile(self.topic, 0.5),
            _percentile(self.topic, 0.99),
        )


def table(results: list[BenchResult]) -> Table:
    out = Table(
        "run",
        "received",
        "notifier p50 ms",
        "notifier p99 ms",
        "baseline p50 ms",
        "baseline p99 ms",
        "p50 ratio",
        title="Alert firing record on ops.alerts.v1 -> webhook (group_wait 0); baseline: -> plain consumer",
    )
    rows = [r.figures() for r in results]
    for i, (result, row) in enumerate(zip(results, rows, strict=True), 1):
        out.add_row(
            str(i), f"{len(result.notified)}/{result.sent}", *(f"{v:.1f}" for v in row), f"{row[0] / row[2]:.2f}x"
        )
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    out.add_row("median", "", *(f"{v:.1f}" for v in medians), f"{medians[0] / medians[2]:.2f}x")
    return out


async def run_bench(base: Settings, alerts: int, rate: float, wait_s: float = 120.0) -> BenchResult:
    async with scratch_broker(base, "bench-notify") as (settings, work):
        return await _measure(settings, work, alerts, rate, wait_s)


async def _measure(settings: Settings, work: Path, alerts: int, rate: float, wait_s: float) -> BenchResult:
    received: dict[str, float] = {}
    arrived = asyncio.Event()
    complete = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        now = _now_us()
        body = await request.json()
        for alert in body["alerts"]:
            sent = int(alert["annotations"][SENT_AT])
            received.setdefault(alert["fingerprint"], (now - sent) / 1000)
        arrived.set()
        if len(received) > alerts:  # every bench alert plus the warm-up one
            complete.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    routes = work / "notify.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "hook", "group_by": ["..."], "group_wait": 0, "group_interval": "1m"},
                "receivers": [
                    {"name": "hook", "channels": [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"}]}
                ],
            }
        )
    )
    notifier = NotifierProcess(settings, routes, work / "notifier.log")
    producer = make_record_producer(settings.kafka, settings.topic_prefix)
    await producer.start()
    notifier.start()
    try:
        async with asyncio.timeout(wait_s):  # warm-up: the notifier is up once it delivers one alert
            while "warmup" not in received:
                await producer.send(ALERTS.name, b"warmup", firing_alert("warmup", _now_us(), **{SENT_AT: "0"}))
                await producer.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 5)
        topic_latency = await _produce(settings, producer, alerts, rate, complete, wait_s)
    finally:
        notifier.stop()
        await producer.stop()
        await runner.cleanup()
    received.pop("warmup", None)
    return BenchResult(alerts, list(received.values()), topic_latency)


async def _produce(
    settings: Settings,
    producer: RecordProducer,
    alerts: int,
    rate: float,
    complete: asyncio.Event,
    wait_s: float,
) -> list[float]:
    topic = settings.topic(ALERTS.name)
    consumer = make_consumer(settings.kafka, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    latencies: list[float] = []
    try:
        parts = (await describe(settings.kafka, [topic]))[topic].partitions
        tps = [TopicPartition(topic, p) for p in range(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)

        async def consume() -> None:
            while len(latencies) < alerts:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    now = _now_us()
                    for message in messages:
                        alert = decode(Alert, message.value)
                        if alert.fingerprint.startswith("bench-"):
                            latencies.append((now - int(alert.annotations[SENT_AT])) / 1000)

        reader = asyncio.create_task(consume())
        for i in range(alerts):
            now = _now_us()
            record = firing_alert(f"bench-{i}", now, **{SENT_AT: str(now)})
            await producer.send(ALERTS.name, f"bench-{i}".encode(), record)
            await asyncio.sleep(1 / rate)
        async with asyncio.timeout(wait_s):
            await complete.wait()
            await reader
    finally:
        await consumer.stop()
    return latencies

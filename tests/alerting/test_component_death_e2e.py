"""A dead or hung component is paged from the signal that proves it, through real processes on the real broker:
the ClickHouse sink hung (SIGSTOP) raises SinkStalled and the aggregation worker killed raises WorkerStalled (both
from the lag probe's stall clock: committed offsets not moving while records wait), and the rule engine hung
raises RuleEngineDown from the notifier's dead-man's switch (the engine's checkpoint heartbeat). Each resolves once
its component is back. Wall clock (speed 1), as production runs: the stall bounds are wall seconds.

No timing is asserted (the waits are bounded generously, a loaded machine slows everything); each fault's
detection delay (signal sent -> the alert's ``fired_at``) is printed and appended to ``$MARKETPRISM_DETECTION_LOG``
when set, so ``pytest -s`` runs give the figures docs/alerting.md quotes. One fault of each kind per run: a third
fault of a kind within minutes trips the engine's flap detection (the alert is held as ``flapping``), so repeated
measurements are repeated runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from pipeline.alerting import control
from pipeline.clock import SystemClock
from pipeline.contracts import decoder_for
from pipeline.contracts.records import Alert, Notification
from pipeline.settings import Settings
from tests.alerting.test_pipeline_faults_e2e import (
    LIVE,
    STARTED,
    WORKER_ARGS,
    Child,
    Feed,
    _count_alerts,
    _wait_alert,
    _wait_bars,
    _wait_log,
    _wait_sink_committed,
)

WAIT_S = 300.0  # upper bound of every wait (a loaded 2-core machine slows the pipeline, not the test)


async def _detected(
    settings: Settings, rule: str, sent_us: int, after: int, delays: dict[str, list[float]], **labels: str
) -> Alert:
    """Wait for ``rule`` firing; record the delay from the fault to the firing transition's broker timestamp (the
    wall time its publisher sent it: what a pager sees, not the engine's event time ``fired_at``)."""
    fired = await _wait_alert(settings, rule, "firing", after, WAIT_S, **labels)
    assert fired.fired_at is not None and fired.fired_at >= sent_us, (fired, sent_us)
    raw = await control.read_raw(settings, control.ALERTS_TOPIC)
    decode = decoder_for(Alert).decode
    sent_ms = next(m.timestamp for m in raw if m.key == fired.fingerprint.encode() and decode(m.value) == fired)
    delay = sent_ms / 1e3 - sent_us / 1e6
    delays.setdefault(rule, []).append(round(delay, 1))
    print(f"{rule}: published {delay:.1f} s after the fault (fired_at {(fired.fired_at - sent_us) / 1e6:.1f} s)")
    return fired


@pytest.mark.slow
@pytest.mark.timeout(3600)  # every wait bounded by WAIT_S; rounds x 3 faults on a loaded machine
async def test_a_hung_sink_a_dead_worker_and_a_hung_rule_engine_are_each_paged(
    topics: Settings, tmp_path: Path
) -> None:
    STARTED[0] = time.monotonic()
    sink_group = f"{topics.topic_prefix}marketprism-sink"
    worker_group = f"{topics.topic_prefix}aggregator"
    env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": topics.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": topics.topic_prefix,
        "MARKETPRISM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}",
        "MARKETPRISM_METRICS_PORT": "0",
        "MARKETPRISM_LOG_LEVEL": "INFO",
    }
    routes = tmp_path / "notify.yaml"
    routes.write_text(
        yaml.safe_dump({"route": {"receiver": "log", "group_wait": "0s"},
                        "receivers": [{"name": "log", "channels": [{"type": "log", "level": "WARNING"}]}]})
    )  # fmt: skip

    def child(name: str, *argv: str) -> Child:
        return Child(name, list(argv), env | {"MARKETPRISM_STATE_DIR": str(tmp_path / name)}, tmp_path)

    sink = child("sink", "sink", "--group", sink_group)
    worker = child("worker", "worker", *WORKER_ARGS)
    engine = child("alerts", "alerts", "run", "--lag-group", sink_group, "--lag-group", worker_group)
    notifier = child("notify", "notify", "--routes", str(routes))
    feed = Feed(topics, SystemClock(), [("binance", "BTC-USDT"), ("okx", "BTC-USDT")])  # type: ignore[arg-type]
    stop = asyncio.Event()
    feeding: asyncio.Task[None] | None = None
    children = [sink.start(), worker.start(), engine.start(), notifier.start()]
    LIVE[:] = children
    delays: dict[str, list[float]] = {}
    try:
        await _wait_log(sink, "sink consuming", WAIT_S)
        await _wait_log(worker, "assigned", WAIT_S)
        await _wait_log(notifier, "watching the rule", WAIT_S)  # (the log wraps lines at 80 columns)
        feeding = asyncio.create_task(feed.run(stop))
        await _wait_bars(topics, wait_s=WAIT_S)
        await _wait_sink_committed(topics, sink_group, wait_s=WAIT_S)

        # 1. the sink hangs: its group keeps its offsets, nothing is committed while trades keep coming
        start = await _count_alerts(topics)
        sent = time.time_ns() // 1000
        os.killpg(sink.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        await _detected(topics, "SinkStalled", sent, start, delays, group=sink_group, topic="md.trades.v1")
        os.killpg(sink.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        await _wait_alert(topics, "SinkStalled", "resolved", start, WAIT_S, group=sink_group, topic="md.trades.v1")

        # 2. the aggregation worker dies
        start = await _count_alerts(topics)
        LIVE.remove(worker)
        sent = time.time_ns() // 1000
        worker.kill()
        await _detected(topics, "WorkerStalled", sent, start, delays, group=worker_group, topic="md.trade_batches.v1")
        LIVE.append(worker.start())
        await _wait_alert(
            topics, "WorkerStalled", "resolved", start, WAIT_S, group=worker_group, topic="md.trade_batches.v1"
        )

        # 3. the rule engine hangs: it cannot page its own death, the notifier's dead-man's switch does
        start = await _count_alerts(topics)
        sent = time.time_ns() // 1000
        os.killpg(engine.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        down = await _detected(topics, "RuleEngineDown", sent, start, delays)
        os.killpg(engine.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        await _wait_alert(topics, "RuleEngineDown", "resolved", start, WAIT_S)
        assert down.severity == "P1" and down.value is not None and down.value >= 15
        # the notifier delivered the page: a sent receipt for its fingerprint on ops.notifications.v1
        await _wait_delivered(topics, down.fingerprint, WAIT_S)
    finally:
        stop.set()
        if feeding is not None:
            await feeding
        LIVE.clear()
        for running in children:
            if running.process is not None and running.process.poll() is None:
                os.killpg(running.process.pid, signal.SIGCONT)
            running.stop()
        if delays and os.environ.get("MARKETPRISM_DETECTION_LOG"):
            _append(Path(os.environ["MARKETPRISM_DETECTION_LOG"]), json.dumps(delays))
    assert set(delays) == {"SinkStalled", "WorkerStalled", "RuleEngineDown"}


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")


async def _wait_delivered(settings: Settings, fingerprint: str, wait_s: float) -> None:
    """Until the notifier has recorded a sent notification for the alert ``fingerprint``."""
    deadline = time.monotonic() + wait_s
    while True:
        receipts = await control.read_all(settings, "ops.notifications.v1", Notification)
        if any(n.status == "sent" and fingerprint in n.fingerprints for n in receipts):
            return
        for running in LIVE:
            running.check()
        if time.monotonic() > deadline:
            raise AssertionError(f"no notification sent for {fingerprint} within {wait_s}s: {receipts[-5:]}")
        await asyncio.sleep(0.5)

"""/healthz and /readyz: the probe logic in-process (a real event loop in a thread, a real HTTP server), then each
long-running component as a real process on the real broker, probed over HTTP until it says it is ready."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from pipeline.infra import free_port
from pipeline.observability.health import GroupCatchUp, Health, Status, _Latch, flag, gauge_at_least
from pipeline.observability.metrics import serve_metrics
from pipeline.settings import Settings

MARKETPRISM = str(Path(sys.executable).parent / "marketprism")


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class LoopThread:
    """An asyncio loop running in a thread, as a component's main loop runs beside the HTTP server thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def block_until(self, release: threading.Event) -> None:
        """Make the loop unresponsive (a CPU-bound or blocking call) until ``release`` is set."""
        self.loop.call_soon_threadsafe(release.wait)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def test_not_live_before_a_loop_is_attached() -> None:
    health = Health()
    assert health.live() == (False, {"live": False, "detail": "starting: no event loop attached yet"})
    ok, doc = health.ready()
    assert not ok and doc["ready"] is False


def test_live_while_the_loop_answers_and_not_while_it_is_blocked(loop_thread: LoopThread) -> None:
    health = Health(timeout_s=0.5)
    health.attach(loop_thread.loop)
    assert health.live() == (True, {"live": True})
    release = threading.Event()
    loop_thread.block_until(release)
    try:
        ok, doc = health.live()
        assert not ok
        assert "did not answer" in doc["detail"]
        ready, rdoc = health.ready()
        assert not ready and rdoc["ready"] is False
    finally:
        release.set()
    # unblocked: live again (the queued probe callbacks have run)
    health.timeout_s = 30
    assert health.live()[0]


def test_ready_needs_every_check_and_reports_each(loop_thread: LoopThread) -> None:
    health = Health(timeout_s=30)
    health.attach(loop_thread.loop)
    assert health.ready() == (True, {"ready": True, "checks": {}})
    event = asyncio.Event()
    health.add("serving", flag(event, "warming up"))

    async def async_check() -> Status:
        return Status(True, "fine")

    health.add("async", async_check)
    ok, doc = health.ready()
    assert not ok
    assert doc["checks"] == {"serving": {"ok": False, "detail": "warming up"}, "async": {"ok": True, "detail": "fine"}}
    loop_thread.loop.call_soon_threadsafe(event.set)
    assert health.live()[0]  # the set() ran before this probe's callback (FIFO)
    assert health.ready()[0]

    def broken() -> Status:
        raise KeyError("partition")

    health.add("broken", broken)
    ok, doc = health.ready()
    assert not ok
    assert doc["checks"]["broken"] == {"ok": False, "detail": "check raised KeyError: 'partition'"}


def test_gauge_check_reads_the_components_own_metric() -> None:
    registry = CollectorRegistry()
    connected = Gauge("marketprism_collector_connected", "open", ["exchange"], registry=registry)
    check = gauge_at_least("marketprism_collector_connected", 1, registry, what="a venue websocket open")
    assert check() == Status(False, "waiting for a venue websocket open (now None)")
    connected.labels(exchange="okx").set(0)
    assert not check().ok  # type: ignore[union-attr]
    connected.labels(exchange="binance").set(1)
    assert check() == Status(True, "a venue websocket open")


def test_caught_up_latches_per_generation() -> None:
    latch = _Latch(max_lag=10)
    assert not latch.observe(1, None).ok  # no fetch answered yet
    assert not latch.observe(1, 11).ok
    assert latch.observe(1, 10).ok
    assert latch.observe(1, 5000).ok  # later load does not make it unready: the autoscaler's business
    assert not latch.observe(2, 5000).ok  # a rebalance starts over
    assert latch.observe(2, 0).ok


class _FakeConsumer:
    """Only the aiokafka attributes GroupCatchUp reads (a unit test of the arithmetic; the real consumer is
    exercised by the sink process test below)."""

    def __init__(self, generation: int, ends: dict[str, int], positions: dict[str, int]):
        self._coordinator = type("C", (), {"generation": generation})()
        self.ends, self.positions = ends, positions

    def assignment(self) -> set[str]:
        return set(self.ends)

    def highwater(self, tp: str) -> int | None:
        return self.ends[tp]

    async def position(self, tp: str) -> int:
        return self.positions[tp]


async def test_group_member_is_ready_once_joined_and_caught_up() -> None:
    consumer: _FakeConsumer | None = None
    check = GroupCatchUp(lambda: consumer, max_lag=100)
    assert (await check()).detail == "consumer not started"
    consumer = _FakeConsumer(-1, {}, {})
    assert (await check()).detail == "not joined to its consumer group yet"
    consumer = _FakeConsumer(3, {"a": 500, "b": 40}, {"a": 300, "b": 40})
    status = await check()
    assert not status.ok and "lag 200 > 100" in status.detail
    consumer.positions["a"] = 450
    assert (await check()).ok


def test_served_beside_metrics(loop_thread: LoopThread) -> None:
    registry = CollectorRegistry()
    Gauge("marketprism_test_up", "up", registry=registry).set(1)
    health = Health(timeout_s=30)
    port = serve_metrics(free_port(), registry=registry, health=health)
    assert port is not None
    assert _get(port, "/healthz") == (503, {"live": False, "detail": "starting: no event loop attached yet"})
    health.attach(loop_thread.loop)
    assert _get(port, "/healthz") == (200, {"live": True})
    event = asyncio.Event()
    health.add("serving", flag(event))
    assert _get(port, "/readyz") == (503, {"ready": False, "checks": {"serving": {"ok": False, "detail": "starting"}}})
    loop_thread.loop.call_soon_threadsafe(event.set)
    assert _get(port, "/readyz") == (200, {"ready": True, "checks": {"serving": {"ok": True, "detail": "serving"}}})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert "marketprism_test_up 1.0" in answer.read().decode()


# ---- the components as real processes ---------------------------------------------------------------------------


class Component:
    """``marketprism ARGS`` as a child process with its own metrics port (where /healthz and /readyz are)."""

    def __init__(self, settings: Settings, tmp: Path, *argv: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.name = argv[0]
        full_env = (
            os.environ
            | {
                "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
                "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
                "MARKETPRISM_CLICKHOUSE_URL": str(settings.clickhouse_url),
                "MARKETPRISM_METRICS_PORT": str(self.port),
                "MARKETPRISM_STATE_DIR": str(tmp / "state"),
            }
            | (env or {})
        )
        self.log_path = tmp / f"{self.name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [MARKETPRISM, *argv], env=full_env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp
        )

    async def probe(self, path: str) -> tuple[int, dict[str, Any]] | None:
        try:
            return await asyncio.to_thread(_get, self.port, path, 10.0)
        except (OSError, ValueError):  # not listening yet / connection reset while starting
            return None

    async def wait_ready(self, limit_s: float = 240.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        last = None
        while loop.time() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-3000:]}"
            last = await self.probe("/readyz")
            if last is not None and last[0] == 200:
                return last[1]
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within {limit_s}s; last /readyz {last}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


async def _ready_and_live(component: Component) -> dict[str, Any]:
    try:
        doc = await component.wait_ready()
        assert await component.probe("/healthz") == (200, {"live": True})
        return doc
    finally:
        component.stop()


async def test_sink_is_ready_once_in_its_group_and_caught_up(topics: Settings, tmp_path: Path) -> None:
    sink = Component(topics, tmp_path, "sink", "--topic", "md.trades.v1", "--group", "health-sink")
    doc = await _ready_and_live(sink)
    check = doc["checks"]["consumer group"]
    assert check["ok"] and check["detail"].startswith("caught up (generation ")


async def test_rule_engine_is_ready_once_positioned(topics: Settings, tmp_path: Path) -> None:
    engine = Component(topics, tmp_path, "alerts", "run", "--lag-interval", "0")
    doc = await _ready_and_live(engine)
    assert doc["checks"] == {"rule engine": {"ok": True, "detail": "active"}}  # the only replica holds the lease


async def test_notifier_is_ready_once_caught_up(topics: Settings, tmp_path: Path) -> None:
    routes = tmp_path / "notify.yaml"
    routes.write_text("route: {receiver: log}\nreceivers:\n  - name: log\n    channels: [{type: log}]\n")
    notifier = Component(topics, tmp_path, "notify", "--routes", str(routes))
    doc = await _ready_and_live(notifier)
    assert doc["checks"] == {"notifier": {"ok": True, "detail": "serving"}}


async def test_aggregation_worker_is_ready_once_in_its_group_and_caught_up(topics: Settings, tmp_path: Path) -> None:
    worker = Component(topics, tmp_path, "worker")
    doc = await _ready_and_live(worker)
    check = doc["checks"]["consumer group"]
    assert check["ok"] and check["detail"].startswith("caught up (generation ")


async def test_anomaly_worker_is_ready_once_in_its_group_and_caught_up(topics: Settings, tmp_path: Path) -> None:
    worker = Component(topics, tmp_path, "anomaly", env={"MARKETPRISM_SECURITY__CHECKPOINT_KEY": "k" * 32})
    doc = await _ready_and_live(worker)
    check = doc["checks"]["consumer group"]
    assert check["ok"] and check["detail"].startswith("caught up (generation ")


async def test_collector_is_ready_once_a_venue_is_connected(topics: Settings, tmp_path: Path) -> None:
    sim_port = free_port()
    simulator = Component(
        topics,
        tmp_path,
        "simulate",
        "--port",
        str(sim_port),
        "--duration",
        "600",
        "--start-now",
        "--labels",
        str(tmp_path / "labels.jsonl"),
        env={"MARKETPRISM_METRICS_PORT": "0"},
    )
    venue = {"symbols": ["BTC-USDT"], "ws_url": f"ws://127.0.0.1:{sim_port}/binance"}
    venue["rest_url"] = f"http://127.0.0.1:{sim_port}/binance"
    env = {"MARKETPRISM_VENUES": json.dumps({"binance": venue} | {v: {"enabled": False} for v in _other_venues()})}
    collector = Component(topics, tmp_path, "collect", env=env)
    try:
        doc = await _ready_and_live(collector)
    finally:
        simulator.stop()
    assert doc["checks"] == {"venue": {"ok": True, "detail": "a venue websocket open"}}


def _other_venues() -> list[str]:
    from pipeline.settings import VENUES

    return [v for v in VENUES if v != "binance"]

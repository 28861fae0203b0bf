"""`marketprism run`: the live-mode supervisor, proven against the simulator and the real broker.

The components run as real child processes; the test kills one to see it restarted, then stops the
supervisor and checks no process of ours is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from pipeline.contracts import Trade, decode
from pipeline.infra import free_port
from pipeline.infra.services import port_open
from pipeline.kafka.clients import make_consumer
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_live_example_config_is_valid() -> None:
    settings = load_settings(ROOT / "docs" / "live.yaml")
    assert set(settings.venues) == {"binance", "binance_usdm", "okx", "coinbase", "kraken"}
    assert all({"BTC", "ETH"} <= {s.split("-")[0] for s in v.symbols} for v in settings.venues.values())


def _children_named(parent: psutil.Process, word: str) -> list[psutil.Process]:
    found = []
    for child in parent.children(recursive=True):
        try:
            if word in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


async def _wait_for(predicate, what: str, wait_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def test_run_supervises_restarts_and_stops_cleanly(topics: Settings, tmp_path: Path) -> None:
    sim_port = free_port()
    simulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "simulate",
        "--port",
        str(sim_port),
        "--speed",
        "1",
        "--duration",
        "600",
        "--start-now",
        "--labels",
        str(tmp_path / "labels.jsonl"),
        env=os.environ | {"MARKETPRISM_METRICS_PORT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": topics.kafka.bootstrap_servers},
                "topic_prefix": topics.topic_prefix,
                "clickhouse_url": f"chdb://{tmp_path / 'chdb'}",
                "state_dir": str(tmp_path / "state"),
                "metrics_port": 0,
                "venues": {
                    "binance": {
                        "symbols": ["BTC-USDT"],
                        "ws_url": f"ws://127.0.0.1:{sim_port}/binance",
                        "rest_url": f"http://127.0.0.1:{sim_port}/binance",
                    },
                    "okx": {
                        "symbols": ["BTC-USDT"],
                        "ws_url": f"ws://127.0.0.1:{sim_port}/okx/ws/v5/public",
                        "rest_url": f"http://127.0.0.1:{sim_port}/okx",
                    },
                },
            }
        )
    )
    supervisor = None
    consumer = make_consumer(topics.kafka, topics.topic("md.trades.v1"), group_id="run-check")
    try:
        await _wait_for(lambda: port_open("127.0.0.1", sim_port), "the simulator", 60)
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--config",
            str(config),
            "--component",
            "collect",
            "--component",
            "sink",
            "--log-dir",
            str(tmp_path / "logs"),
            env={k: v for k, v in os.environ.items() if not k.startswith("MARKETPRISM_")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        parent = psutil.Process(supervisor.pid)
        first = await _wait_for(lambda: _children_named(parent, "collect"), "the collector child")
        await consumer.start()
        trades: list[Trade] = []
        async with asyncio.timeout(120):
            while len(trades) < 5:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    trades += [decode(Trade, m.value) for m in messages]
        assert {t.exchange for t in trades} <= {"binance", "okx"}

        first[0].send_signal(signal.SIGKILL)
        restarted = await _wait_for(
            lambda: [p for p in _children_named(parent, "collect") if p.pid != first[0].pid],
            "the collector to be restarted",
        )
        assert restarted
        ours = [p.pid for p in parent.children(recursive=True)]
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), 60) == 0

        def alive() -> list[int]:
            found = []
            for pid in ours:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        found.append(pid)
            return found

        # every child goes with it (waited for, not assumed gone after a fixed pause: a loaded machine reaps late)
        await _wait_for(lambda: not alive(), "every child of the supervisor to exit", wait_s=60)
    finally:
        await consumer.stop()
        if supervisor is not None and supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        simulator.terminate()
        await simulator.wait()
